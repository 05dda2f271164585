"""Hypergradient estimators against a brute-force numerical derivative of L_val(w_K(phi)) in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lkd_hf.hypergradients import MetaProblem, available_hypergradients, get_hypergradient
from lkd_hf.loss_networks import LogitLossNet

NUM_CLASSES = 4


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
    """Central differences of L_val(w_K(phi)), with w_K from plain SGD steps (no second-order code)."""

    def objective():
        w = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        for b in problem.train_batches:
            g = torch.autograd.grad(problem.train_loss(problem.forward(w, b), b), list(w.values()))
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


@pytest.mark.parametrize("steps", [1, 3])
def test_estimators_match_brute_force(steps):
    problem, params = _setup(steps)
    for p in problem.loss_params:
        p.requires_grad_(True)
    expected = _brute_force(problem, params)
    assert expected.norm() > 1e-6

    exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
    assert ((exact - expected).norm() / expected.norm()).item() < 1e-4

    approx = _flat(get_hypergradient("finite_difference")(problem, params).grads)
    assert F.cosine_similarity(approx, expected, dim=0).item() > 0.99


def test_estimators_agree_with_dropout_when_seeded_alike():
    problem, params = _setup(steps=2, dropout=0.3)
    torch.manual_seed(123)
    exact = _flat(get_hypergradient("unrolled")(problem, params).grads)
    torch.manual_seed(123)
    approx = _flat(get_hypergradient("finite_difference")(problem, params).grads)
    assert F.cosine_similarity(approx, exact, dim=0).item() > 0.99


def test_estimators_leave_start_weights_and_bn_statistics_alone():
    problem, params = _setup(steps=2)
    before = {n: p.clone() for n, p in params.items()}
    for name in available_hypergradients():
        get_hypergradient(name)(problem, params)
    for n, p in params.items():
        torch.testing.assert_close(p, before[n], rtol=0, atol=0)


def test_unknown_estimator_lists_known_ones():
    with pytest.raises(ValueError, match="finite_difference, unrolled"):
        get_hypergradient("first_order")
