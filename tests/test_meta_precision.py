"""The meta step under bf16 autocast against the fp64 hypergradient (CPU, tiny: bf16 is slow on this CPU).

``MetaProblem.autocast_dtype`` runs the validation pass under autocast and every pass of the training loss in full
precision. Over 16 draws of this setup at K=1 the recommended bf16 configuration, ``finite_difference`` with
``mixed_product="jvp"``, kept the hypergradient at cosine >= 0.9988 to the fp64 one, as did ``unrolled`` (0.9988) and
``implicit`` with ``"jvp"`` (0.9998, to fp64 ``implicit``); at K=2 (12 draws) 0.991 and 0.9992. ``finite_difference``
with finite-difference mixed products went down to 0.962 (0.974 all in fp32: the difference's own error at
``fd_epsilon=0.01``). In bf16 throughout (a forward that enters autocast itself) plain finite differences went down to
0.74 (0.60 with ``fd_epsilon=0.1``), the forward-mode product to 0.967, ``unrolled`` to 0.974; a bf16 training
gradient given as ``first_step_grads`` (what a bf16 student step computes) to 0.942.

Setup: timm ``test_resnet`` (a small ResNet with BatchNorm) at 32x32 (at 16x16 its last stage sees 1x1 maps),
batch 8, validation batch 16, clipping to norm 1, a student that is the teacher with noisy weights (a random student
gives the calibrated validation CE almost no gradient), labels the teacher's argmax with 20% flipped.
"""

import contextlib
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lkd_hf import LogitLossNet
from lkd_hf.meta.hypergradients import MetaProblem, get_hypergradient
from lkd_hf.meta.outer_objectives import calibrated_cross_entropy

NUM_CLASSES = 10
BF16 = torch.bfloat16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models are too small to gain from more, and on a busy machine two threads made
    the module 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(seed: int, dtype: torch.dtype, bf16_forward: bool = False, **fields):
    """The meta problem of one draw, in ``dtype``; ``bf16_forward``: the forward enters bf16 autocast itself (so
    every pass runs in bf16, whatever the estimator asks for)."""
    torch.manual_seed(seed)
    teacher = timm.create_model("test_resnet", num_classes=NUM_CLASSES).eval()
    student = copy.deepcopy(teacher).train()
    loss_net = LogitLossNet(temperature=4.0, hidden_dim=8)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.5 * (p.std() if p.numel() > 1 else 0.1))
        for p in loss_net.parameters():  # away from the zero-initialised heads: every parameter matters
            p.add_(torch.randn_like(p) * 0.3)

    def batch(n):
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            logits = teacher(x)
        logits = logits / logits.std() * 3
        labels = torch.where(torch.rand(n) < 0.2, torch.randint(0, NUM_CLASSES, (n,)), logits.argmax(-1))
        return {"pixel_values": x.to(dtype), "labels": labels, "teacher_logits": logits.to(dtype)}

    train_batches, val_batch = [batch(8)], batch(16)
    student, loss_net = student.to(dtype), loss_net.to(dtype)
    buffers = {n: b.clone() for n, b in student.named_buffers()}

    def forward(weights, b):
        with torch.autocast("cpu", dtype=BF16) if bf16_forward else contextlib.nullcontext():
            return functional_call(student, {**buffers, **weights}, (b["pixel_values"],))

    def train_loss(out, b):
        return F.cross_entropy(out.to(dtype), b["labels"]) + loss_net(out, b["teacher_logits"], b["labels"])

    problem = MetaProblem(
        forward=forward,
        train_loss=train_loss,
        val_loss=lambda out, b: calibrated_cross_entropy(out.to(dtype), b["labels"]),
        loss_params=list(loss_net.parameters()),
        train_batches=train_batches,
        val_batch=val_batch,
        lr=0.05,
        **{"max_grad_norm": 1.0, **fields},
    )
    return problem, {n: p.detach() for n, p in student.named_parameters()}


def _hypergradient(estimator: str, seed: int, dtype: torch.dtype = torch.float32, **kwargs) -> torch.Tensor:
    return _estimate(estimator, *_problem(seed, dtype, **kwargs))


def _estimate(estimator: str, problem: MetaProblem, params) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.cat([g.reshape(-1).double() for g in get_hypergradient(estimator)(problem, params).grads])


def _cosine_and_norm_ratio(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    return F.cosine_similarity(estimate, reference, dim=0).item(), (estimate.norm() / reference.norm()).item()


@pytest.mark.parametrize("seed", [3, 8, 11])  # the draws with the lowest cosines of the 16
def test_bf16_validation_pass_keeps_the_hypergradient(seed):
    reference = _hypergradient("unrolled", seed, torch.float64)
    for estimator, fields in [("finite_difference", {"mixed_product": "jvp"}), ("unrolled", {})]:
        estimate = _hypergradient(estimator, seed, autocast_dtype=BF16, **fields)
        cosine, norm_ratio = _cosine_and_norm_ratio(estimate, reference)
        assert cosine >= 0.99, (estimator, cosine)
        assert 0.9 < norm_ratio < 1.1, (estimator, norm_ratio)


def _bf16_first_step_grads(problem: MetaProblem, params) -> list[torch.Tensor]:
    """The first virtual step's training gradient with the forward in bf16, as a bf16 student step computes it."""
    w = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    batch = problem.train_batches[0]
    with torch.autocast("cpu", dtype=BF16):
        output = problem.forward(w, batch)
    return list(torch.autograd.grad(problem.train_loss(output, batch), list(w.values())))


def test_bf16_training_passes_distort_the_hypergradient():
    """Negative controls: every forward in bf16 (the forward enters autocast itself) with finite differences at two
    step sizes or the forward-mode product, or a bf16 first-step gradient, fall below cosine 0.99 on some draws."""
    cosines = {"fd": [], "fd_eps_0.1": [], "jvp": [], "bf16_first_step_grads": []}
    for seed in (3, 8, 10):
        reference = _hypergradient("unrolled", seed, torch.float64)
        for name, fields in [("fd", {}), ("fd_eps_0.1", {"fd_epsilon": 0.1}), ("jvp", {"mixed_product": "jvp"})]:
            estimate = _hypergradient("finite_difference", seed, bf16_forward=True, **fields)
            cosines[name].append(_cosine_and_norm_ratio(estimate, reference)[0])
        problem, params = _problem(seed, torch.float32, mixed_product="jvp", autocast_dtype=BF16)
        problem.first_step_grads = _bf16_first_step_grads(problem, params)
        estimate = _estimate("finite_difference", problem, params)
        cosines["bf16_first_step_grads"].append(_cosine_and_norm_ratio(estimate, reference)[0])
    assert all(min(values) < 0.99 for values in cosines.values()), cosines


def test_autocast_covers_the_validation_pass_only():
    """Which student forwards run under bf16 autocast: the validation pass only, never a training-loss pass, and an
    enclosing autocast region does not leak into the estimator's passes."""
    torch.manual_seed(0)
    model = nn.Linear(3, NUM_CLASSES)
    phi = nn.Parameter(torch.tensor(2.0))
    calls = []

    def forward(weights, b):
        calls.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == BF16)
        return functional_call(model, weights, (b["x"],))

    def batch():
        return {"x": torch.randn(4, 3), "labels": torch.randint(0, NUM_CLASSES, (4,))}

    params = {n: p.detach() for n, p in model.named_parameters()}
    train_batches = [batch(), batch()]
    validation_call = {  # (estimator, mixed_product, K) -> forwards made, the validation one's index
        ("finite_difference", "finite_difference", 1): (4, 1),  # step gradient, validation, two perturbed
        ("finite_difference", "jvp", 2): (7, 2),  # two step gradients, validation, jvp + two perturbed, jvp
        ("implicit", "finite_difference", 1): (4, 1),
        ("unrolled", "finite_difference", 2): (6, 2),  # two step gradients, validation, jvp + Hessian product, jvp
    }
    for (estimator, mixed_product, k), (num_calls, index) in validation_call.items():
        for autocast_dtype in (BF16, None):
            problem = MetaProblem(
                forward=forward,
                train_loss=lambda out, b: phi * F.cross_entropy(out.float(), b["labels"]),
                val_loss=lambda out, b: F.cross_entropy(out.float(), b["labels"]),
                loss_params=[phi], train_batches=train_batches[:k], val_batch=batch(), lr=0.1, max_grad_norm=1.0,
                mixed_product=mixed_product, autocast_dtype=autocast_dtype,
            )
            calls.clear()
            with torch.autocast("cpu", dtype=BF16):
                get_hypergradient(estimator)(problem, params)
            expected = [autocast_dtype is not None and i == index for i in range(num_calls)]
            assert calls == expected, (estimator, mixed_product, k, autocast_dtype)
