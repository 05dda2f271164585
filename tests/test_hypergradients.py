"""Hypergradient estimators against a brute-force numerical derivative of L_val(w_K(phi)) in float64; their FLOPs
(``benchmarks/flops.py``) against separately counted passes."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_script
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from lkd_hf.meta.hypergradients import (
    MetaProblem,
    available_hypergradients,
    get_hypergradient,
    register_hypergradient,
)
from lkd_hf.losses.networks import LogitLossNet

NUM_CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models are too small to gain from more, and on a busy machine two threads made
    the FLOP counts 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(steps: int, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    student = nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, NUM_CLASSES)
    ).double()
    loss_net = LogitLossNet(temperature=3.0, hidden_dim=4).double()
    with torch.no_grad():  # move away from the zero-initialised heads so that every parameter matters
        for p in loss_net.parameters():
            p.add_(torch.randn_like(p) * 0.5)

    def batch(n):
        return {
            "x": torch.randn(n, 5, dtype=torch.float64),
            "labels": torch.randint(0, NUM_CLASSES, (n,)),
            "teacher_logits": torch.randn(n, NUM_CLASSES, dtype=torch.float64) * 2,
        }

    train_batches = [batch(6) for _ in range(steps)]
    val_batch = batch(10)
    buffers = dict(student.named_buffers())

    def forward(w, b):
        return functional_call(student, {**{n: t.clone() for n, t in buffers.items()}, **w}, (b["x"],))

    def train_loss(out, b):
        return F.cross_entropy(out, b["labels"]) + loss_net(out, b["teacher_logits"], b["labels"])

    def val_loss(out, b):
        return F.cross_entropy(out, b["labels"])

    problem = MetaProblem(
        forward=forward,
        train_loss=train_loss,
        val_loss=val_loss,
        loss_params=list(loss_net.parameters()),
        train_batches=train_batches,
        val_batch=val_batch,
        lr=0.5,
        fd_epsilon=1e-3,
    )
    params = {n: p.detach() for n, p in student.named_parameters()}
    return problem, params


def _brute_force(problem: MetaProblem, params, h=1e-6):
    """Central differences of L_val(w_K(phi)), with w_K from plain SGD steps (no second-order code), their gradient
    clipped with torch's own clip_grad_norm_ when the problem sets max_grad_norm."""

    def objective():
        w = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        for b in problem.train_batches:
            g = torch.autograd.grad(problem.train_loss(problem.forward(w, b), b), list(w.values()))
            if problem.max_grad_norm is not None:
                for wi, gi in zip(w.values(), g):
                    wi.grad = gi.clone()
                torch.nn.utils.clip_grad_norm_(list(w.values()), problem.max_grad_norm)
                g = [wi.grad for wi in w.values()]
            w = {n: (t - problem.lr * gi).detach().requires_grad_(True) for (n, t), gi in zip(w.items(), g)}
        with torch.no_grad():
            return problem.val_loss(problem.forward(w, problem.val_batch), problem.val_batch).item()

    grads = []
    with torch.no_grad():
        for p in problem.loss_params:
            g = torch.zeros_like(p)
            flat_p, flat_g = p.view(-1), g.view(-1)
            for i in range(flat_p.numel()):
                old = flat_p[i].item()
                flat_p[i] = old + h
                with torch.enable_grad():
                    plus = objective()
                flat_p[i] = old - h
                with torch.enable_grad():
                    minus = objective()
                flat_p[i] = old
                flat_g[i] = (plus - minus) / (2 * h)
            grads.append(g)
    return torch.cat([g.reshape(-1) for g in grads])


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def _gradient_norm(problem: MetaProblem, params) -> float:
    w = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    b = problem.train_batches[0]
    g = torch.autograd.grad(problem.train_loss(problem.forward(w, b), b), list(w.values()))
    return torch.sqrt(sum(gi.square().sum() for gi in g)).item()


@pytest.mark.parametrize("steps,clip", [(1, False), (3, False), (1, True), (3, True)])
def test_estimators_match_brute_force(steps, clip):
    problem, params = _setup(steps)
    for p in problem.loss_params:
        p.requires_grad_(True)
    if clip:  # well below the gradient norm, so that every virtual step is clipped
        problem.max_grad_norm = 0.3 * _gradient_norm(problem, params)
    expected = _brute_force(problem, params)
    assert expected.norm() > 1e-6

    exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
    assert ((exact - expected).norm() / expected.norm()).item() < 1e-4

    approx = _flat(get_hypergradient("finite_difference")(problem, params).grads)
    assert F.cosine_similarity(approx, expected, dim=0).item() > 0.99

    forward_mode = _flat(get_hypergradient("finite_difference")(_with(problem, mixed_product="jvp"), params).grads)
    assert F.cosine_similarity(forward_mode, expected, dim=0).item() > 0.999


def _with(problem: MetaProblem, **fields) -> MetaProblem:
    return dataclasses.replace(problem, **fields)


@pytest.mark.parametrize("clip", [False, True])
def test_forward_mode_mixed_product_is_exact_at_one_step(clip):
    """At K=1 the mixed product is the only second-order term: with it taken by forward mode, finite_difference is
    the exact (unrolled) hypergradient, with no finite-difference error."""
    problem, params = _setup(steps=1)
    if clip:
        problem.max_grad_norm = 0.3 * _gradient_norm(problem, params)
    exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
    forward_mode = _flat(get_hypergradient("finite_difference")(_with(problem, mixed_product="jvp"), params).grads)
    torch.testing.assert_close(forward_mode, exact, rtol=1e-9, atol=1e-12)


def test_forward_mode_mixed_product_with_a_tuple_output():
    """A forward that returns ``(logits, [features])`` (the trainer's, with a feature loss): the forward-mode product
    differentiates every tensor of the output."""
    problem, params = _setup(steps=1)
    forward, train_loss = problem.forward, problem.train_loss
    problem.forward = lambda w, b: (forward(w, b), [torch.tanh(forward(w, b))])
    problem.train_loss = lambda out, b: train_loss(out[0], b) + problem.loss_params[0].sum() * out[1][0].square().mean()
    val_loss = problem.val_loss
    problem.val_loss = lambda out, b: val_loss(out[0], b)
    exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
    forward_mode = _flat(get_hypergradient("finite_difference")(_with(problem, mixed_product="jvp"), params).grads)
    torch.testing.assert_close(forward_mode, exact, rtol=1e-9, atol=1e-12)


def _first_step_grads(problem: MetaProblem, params) -> list[torch.Tensor]:
    w = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    b = problem.train_batches[0]
    return list(torch.autograd.grad(problem.train_loss(problem.forward(w, b), b), list(w.values())))


@pytest.mark.parametrize("mixed_product", ["finite_difference", "jvp"])
@pytest.mark.parametrize("estimator", ["finite_difference", "implicit"])
@pytest.mark.parametrize("steps", [1, 3])
def test_given_first_step_grads_give_the_same_hypergradient(estimator, steps, mixed_product):
    problem, params = _setup(steps)
    problem = _with(problem, max_grad_norm=0.3 * _gradient_norm(problem, params), mixed_product=mixed_product)
    torch.manual_seed(0)
    computed = get_hypergradient(estimator)(problem, params)
    torch.manual_seed(0)
    given = get_hypergradient(estimator)(_with(problem, first_step_grads=_first_step_grads(problem, params)), params)
    torch.testing.assert_close(_flat(given.grads), _flat(computed.grads), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(given.val_loss, computed.val_loss, rtol=1e-12, atol=0)


def test_first_step_grads_must_match_the_start_weights():
    problem, params = _setup(steps=1)
    problem.first_step_grads = _first_step_grads(problem, params)[:-1]
    with pytest.raises(ValueError, match="one gradient per start weight"):
        get_hypergradient("finite_difference")(problem, params)


def test_unknown_mixed_product_is_rejected():
    problem, _ = _setup(steps=1)
    with pytest.raises(ValueError, match="mixed_product"):
        _with(problem, mixed_product="hvp")


def test_implicit_equals_unrolled_on_a_quadratic_training_loss():
    """With a training loss quadratic in w (phi only in its linear term) and a linear validation loss, every virtual
    step has the same Hessian and mixed product wherever it is taken, so the Neumann series is the unrolled K steps."""
    torch.manual_seed(0)
    dim, out_dim = 5, 3
    phi = nn.Parameter(torch.randn(out_dim, dtype=torch.float64))
    direction = torch.randn(out_dim, dtype=torch.float64)

    def batch(n):
        return {"x": torch.randn(n, dim, dtype=torch.float64)}

    problem = MetaProblem(
        forward=lambda w, b: b["x"] @ w["W"],
        train_loss=lambda out, b: 0.5 * out.square().mean() - (torch.tanh(phi) * out.mean(0)).sum(),
        val_loss=lambda out, b: (out.mean(0) * direction).sum(),
        loss_params=[phi],
        train_batches=[batch(8) for _ in range(4)],
        val_batch=batch(8),
        lr=0.3,
        fd_epsilon=1e-3,
    )
    params = {"W": torch.randn(dim, out_dim, dtype=torch.float64)}
    exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
    implicit = _flat(get_hypergradient("implicit")(problem, params).grads)
    assert exact.norm() > 1e-3
    torch.testing.assert_close(implicit, exact, rtol=1e-6, atol=1e-9)
    forward_mode = _flat(get_hypergradient("implicit")(_with(problem, mixed_product="jvp"), params).grads)
    torch.testing.assert_close(forward_mode, exact, rtol=1e-6, atol=1e-9)
    one_step = _flat(get_hypergradient("implicit")(
        MetaProblem(**{**problem.__dict__, "train_batches": problem.train_batches[:1]}), params).grads)
    assert (one_step - implicit).norm() > 1e-3 * implicit.norm()  # the later terms of the series matter


@pytest.mark.parametrize("clip", [False, True])
def test_implicit_one_step_is_the_small_step_limit_of_unrolled(clip):
    """At K=1 the implicit hypergradient keeps only the first-order (alignment) term of the look-ahead: its
    relative distance to the exact one shrinks with the virtual step (the left-out term is second order)."""
    problem, params = _setup(steps=1)
    if clip:
        problem.max_grad_norm = 0.3 * _gradient_norm(problem, params)
    errors = []
    for lr in (1e-4, 1.0):
        problem.lr = lr
        exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
        implicit = _flat(get_hypergradient("implicit")(problem, params).grads)
        errors.append(((implicit - exact).norm() / exact.norm()).item())
    assert errors[0] < 1e-2 and errors[0] < 0.05 * errors[1]


def test_estimators_agree_with_dropout_when_seeded_alike():
    problem, params = _setup(steps=2, dropout=0.3)
    torch.manual_seed(123)
    exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
    torch.manual_seed(123)
    approx = _flat(get_hypergradient("finite_difference")(problem, params).grads)
    assert F.cosine_similarity(approx, exact, dim=0).item() > 0.99
    torch.manual_seed(123)
    forward_mode = _flat(get_hypergradient("finite_difference")(_with(problem, mixed_product="jvp"), params).grads)
    assert F.cosine_similarity(forward_mode, exact, dim=0).item() > 0.999


def test_estimators_leave_start_weights_and_bn_statistics_alone():
    problem, params = _setup(steps=2)
    before = {n: p.clone() for n, p in params.items()}
    for name in available_hypergradients():
        for mixed_product in ("finite_difference", "jvp"):
            get_hypergradient(name)(_with(problem, mixed_product=mixed_product), params)
    for n, p in params.items():
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)


def test_unknown_estimator_lists_known_ones():
    with pytest.raises(ValueError, match="finite_difference, implicit, unrolled"):
        get_hypergradient("first_order")


def test_register_hypergradient_rejects_a_duplicate_name():
    original = get_hypergradient("unrolled")
    with pytest.raises(ValueError, match="already registered"):
        register_hypergradient("unrolled")(lambda problem, params: None)
    assert get_hypergradient("unrolled") is original

    def replacement(problem, params):
        return original(problem, params)

    try:
        assert register_hypergradient("unrolled", overwrite=True)(replacement) is replacement
        assert get_hypergradient("unrolled") is replacement
    finally:
        register_hypergradient("unrolled", overwrite=True)(original)


# --- FLOPs (benchmarks/flops.py) -------------------------------------------------------------------------------
def _flops_module():
    return load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "flops.py", "lkd_flops_benchmark")


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("val_multiple", [1, 2])
def test_meta_step_flops_are_the_sums_of_separately_counted_passes(val_multiple):
    """The benchmark's meta-step FLOPs (sums of passes) equal full counts of the estimators (``verify``), and
    finite_difference at K=1 is two student forward/backward passes (training, validation) and two forwards."""
    import timm

    flops = _flops_module()
    torch.manual_seed(0)
    teacher = timm.create_model("lkd_convnet_s4", num_classes=5).eval()
    student = timm.create_model("lkd_convnet_s4", num_classes=5).train()
    batch_size, val_batch_size = 4, 4 * val_multiple
    table = flops.pair_flops(teacher, student, (1, 28, 28), 5, batch_size, val_batch_size, horizons=(1, 3), verify=True)

    torch.manual_seed(1)
    batch = flops.make_batch(teacher, batch_size, (1, 28, 28), 5)
    val_batch = flops.make_batch(teacher, val_batch_size, (1, 28, 28), 5)
    problem, params = flops.meta_problem(student, LogitLossNet(), [batch], val_batch)
    w = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}

    def forward_backward(loss_fn, b):
        torch.autograd.grad(loss_fn(problem.forward(w, b), b), list(w.values()))

    def forward_then_loss_backward():
        with torch.no_grad():
            output = problem.forward(w, batch)
        torch.autograd.grad(problem.train_loss(output, batch), problem.loss_params)

    train = _count(lambda: forward_backward(problem.train_loss, batch))
    val = _count(lambda: forward_backward(problem.val_loss, val_batch))
    forward = _count(forward_then_loss_backward)
    assert table["meta_step/finite_difference/k1"] == train + val + 2 * forward
    assert table["meta_step/finite_difference/k1/first_step_grads"] == val + 2 * forward
    assert table["meta_step/implicit/k1"] == train + val + 2 * forward
    with torch.no_grad():
        teacher_forward = _count(lambda: teacher(batch["pixel_values"]))
    assert teacher_forward < table["kd_step"] < teacher_forward + 4 * forward
    assert table["ratio/finite_difference/k1"] == table["meta_step/finite_difference/k1"] / table["kd_step"]
