"""Hypergradient estimators of the bi-level LKD objective, registered by name.

The student's virtual trajectory from weights ``w_0`` is ``w_{k+1} = w_k - lr * grad_w L_train(w_k, batch_k; phi)``
for ``k < K``; the outer objective is ``L_val(w_K)``. An estimator returns ``d L_val(w_K) / d phi``.

* ``unrolled``: exact, by differentiating through the ``K`` virtual steps (``create_graph=True``). Needs double
  backward through the student (fails for e.g. hardsigmoid or fused SDPA attention).
* ``finite_difference``: reverse mode through the same ``K`` steps where every second-order product is a central
  finite difference of first-order gradients (DARTS generalised to ``K`` steps); with ``K == 1`` the perturbed
  points only need a student *forward*. Works for every model.

Both draw the same dropout randomness for a virtual step and for its perturbed re-evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

Params = dict[str, torch.Tensor]
Batch = dict[str, Any]


@dataclass
class MetaProblem:
    """One meta step's inputs, independent of how the trainer produced them.

    Attributes:
        forward: ``forward(params, batch) -> student output`` (a functional call of the student).
        train_loss: ``train_loss(student_output, batch) -> scalar``: the inner objective (depends on ``loss_params``).
        val_loss: ``val_loss(student_output, batch) -> scalar``: the outer objective (validation cross-entropy).
        loss_params: the loss networks' trainable parameters ``phi``.
        train_batches: the ``K`` batches of the virtual steps.
        val_batch: the validation batch.
        lr: step size of the virtual steps.
        fd_epsilon: finite-difference perturbation, relative to the norm of the perturbation direction.
    """

    forward: Callable[[Params, Batch], Any]
    train_loss: Callable[[Any, Batch], torch.Tensor]
    val_loss: Callable[[Any, Batch], torch.Tensor]
    loss_params: list[torch.Tensor]
    train_batches: list[Batch]
    val_batch: Batch
    lr: float
    fd_epsilon: float = 0.01


@dataclass
class Hypergradient:
    """An estimator's result: one gradient per loss parameter, and the validation loss at ``w_K``."""

    grads: list[torch.Tensor]
    val_loss: torch.Tensor


Estimator = Callable[[MetaProblem, Params], Hypergradient]
_ESTIMATORS: dict[str, Estimator] = {}


def register_hypergradient(name: str) -> Callable[[Estimator], Estimator]:
    """Register a hypergradient estimator ``fn(problem, start_params) -> Hypergradient`` under ``name``."""

    def decorator(fn: Estimator) -> Estimator:
        _ESTIMATORS[name] = fn
        return fn

    return decorator


def available_hypergradients() -> list[str]:
    """Names of the registered hypergradient estimators."""
    return sorted(_ESTIMATORS)


def get_hypergradient(name: str) -> Estimator:
    """The estimator registered as ``name``; unknown names list the known ones."""
    if name not in _ESTIMATORS:
        raise ValueError(f"Unknown hypergradient {name!r}. Known: {', '.join(available_hypergradients())}.")
    return _ESTIMATORS[name]


def _seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the global RNGs seeded with ``seed``, restoring them afterwards (same dropout masks)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn()


def _grads_or_zeros(outputs: torch.Tensor, inputs: list[torch.Tensor], **kwargs: Any) -> list[torch.Tensor]:
    grads = torch.autograd.grad(outputs, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _step_seeds(problem: MetaProblem) -> list[int]:
    return [int(s) for s in torch.randint(0, 2**31 - 1, (len(problem.train_batches) + 1,))]


@register_hypergradient("unrolled")
def unrolled_hypergradient(problem: MetaProblem, start_params: Params) -> Hypergradient:
    """Exact hypergradient by back-propagating through the ``K`` virtual steps."""
    seeds = _step_seeds(problem)
    names = list(start_params)
    w = {n: p.detach().requires_grad_(True) for n, p in start_params.items()}
    for seed, batch in zip(seeds, problem.train_batches):
        loss = _seeded(seed, lambda: problem.train_loss(problem.forward(w, batch), batch))
        grads = _grads_or_zeros(loss, [w[n] for n in names], create_graph=True)
        w = {n: w[n] - problem.lr * g for n, g in zip(names, grads)}
    val = _seeded(seeds[-1], lambda: problem.val_loss(problem.forward(w, problem.val_batch), problem.val_batch))
    return Hypergradient(grads=_grads_or_zeros(val, problem.loss_params), val_loss=val.detach())


@register_hypergradient("finite_difference")
def finite_difference_hypergradient(problem: MetaProblem, start_params: Params) -> Hypergradient:
    """Reverse-mode hypergradient whose second-order products are central finite differences.

    With ``a_K = grad L_val(w_K)``, for ``k = K-1 .. 0``:
    ``dphi += -lr * d/dphi <grad_w L_k(w_k), a_{k+1}>`` and ``a_k = a_{k+1} - lr * H_k a_{k+1}``, each product
    taken as ``(g(w_k + e a) - g(w_k - e a)) / 2e`` with ``e = fd_epsilon / ||a||``.
    """
    seeds = _step_seeds(problem)
    names = list(start_params)
    trajectory = [{n: p.detach() for n, p in start_params.items()}]
    for seed, batch in zip(seeds, problem.train_batches):
        w = {n: t.clone().requires_grad_(True) for n, t in trajectory[-1].items()}
        loss = _seeded(seed, lambda: problem.train_loss(problem.forward(w, batch), batch))
        grads = _grads_or_zeros(loss, [w[n] for n in names])
        trajectory.append({n: w[n].detach() - problem.lr * g for n, g in zip(names, grads)})

    w_last = {n: t.clone().requires_grad_(True) for n, t in trajectory[-1].items()}
    val = _seeded(seeds[-1], lambda: problem.val_loss(problem.forward(w_last, problem.val_batch), problem.val_batch))
    direction = _grads_or_zeros(val, [w_last[n] for n in names])

    hypergrad = [torch.zeros_like(p) for p in problem.loss_params]
    for k in reversed(range(len(problem.train_batches))):
        need_hvp = k > 0  # H_k a is only needed to carry the direction to earlier steps
        norm = torch.sqrt(sum((d.double() ** 2).sum() for d in direction))
        eps = problem.fd_epsilon / (norm + 1e-12)
        perturbed = []
        for sign in (1.0, -1.0):
            w = {
                n: (trajectory[k][n] + sign * eps.to(d.dtype) * d).requires_grad_(need_hvp)
                for n, d in zip(names, direction)
            }
            batch = problem.train_batches[k]

            def train_loss_at_w(w=w, batch=batch):
                with torch.set_grad_enabled(need_hvp):
                    output = problem.forward(w, batch)
                return problem.train_loss(output, batch)

            loss = _seeded(seeds[k], train_loss_at_w)
            wrt = problem.loss_params + ([w[n] for n in names] if need_hvp else [])
            perturbed.append(_grads_or_zeros(loss, wrt))
        scale = problem.lr / (2 * eps)
        num_phi = len(problem.loss_params)
        for i in range(num_phi):
            hypergrad[i] -= (scale * (perturbed[0][i] - perturbed[1][i])).to(hypergrad[i].dtype)
        if need_hvp:
            direction = [
                d - (scale * (gp - gm)).to(d.dtype)
                for d, gp, gm in zip(direction, perturbed[0][num_phi:], perturbed[1][num_phi:])
            ]
    return Hypergradient(grads=hypergrad, val_loss=val.detach())
