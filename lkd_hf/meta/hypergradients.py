"""Hypergradient estimators of the bi-level LKD objective, registered by name.

The student's virtual trajectory from weights ``w_0`` is ``w_{k+1} = w_k - lr * clip(grad_w L_train(w_k, batch_k; phi))``
for ``k < K``; the outer objective is ``L_val(w_K)``. An estimator returns ``d L_val(w_K) / d phi``.

* ``unrolled``: exact, by differentiating through the ``K`` virtual steps (``create_graph=True``). Needs double
  backward through the student (fails for e.g. hardsigmoid or fused SDPA attention).
* ``finite_difference``: reverse mode through the same ``K`` steps where every second-order product is a central
  finite difference of first-order gradients (DARTS generalised to ``K`` steps); with ``K == 1`` the perturbed
  points only need a student *forward*. Works for every model.
* ``implicit``: the implicit-function-theorem hypergradient with a ``K``-term Neumann series: ``finite_difference``
  with every virtual step linearised at ``w_0`` (no trajectory; validation gradient at ``w_0``). At ``K == 1`` it is
  the first-order term of the one-step look-ahead. The series converges only where ``lr`` times the training
  loss's curvature is below 2 (it diverged for ``K >= 5`` at the student's learning rate in docs/benchmarks.md: use
  ``K == 1`` or a smaller ``lookahead_lr``). Works for every model.

Both draw the same dropout randomness for a virtual step and for its perturbed re-evaluations. With
``MetaProblem.max_grad_norm`` set, every virtual step clips its gradient as the Trainer's real step does (and is
differentiated through the clipping): a look-ahead with the unclipped gradient of a large-gradient loss (DIST at
T=8: norm ~200, where the real step is clipped to 1) overshoots, and its hypergradient then turns the loss down.
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
        max_grad_norm: if set, every virtual step's gradient is clipped to this total norm, as the Trainer clips the
            real step's (``torch.nn.utils.clip_grad_norm_``); the clipping is differentiated through.
    """

    forward: Callable[[Params, Batch], Any]
    train_loss: Callable[[Any, Batch], torch.Tensor]
    val_loss: Callable[[Any, Batch], torch.Tensor]
    loss_params: list[torch.Tensor]
    train_batches: list[Batch]
    val_batch: Batch
    lr: float
    fd_epsilon: float = 0.01
    max_grad_norm: float | None = None


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


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(t.square().sum() for t in tensors))


def _clip_coef(grads: list[torch.Tensor], max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||g||, min(1, max_norm / (||g|| + 1e-6)))``: the real step's clipping (``clip_grad_norm_``)."""
    norm = _total_norm(grads)
    return norm, (max_norm / (norm + 1e-6)).clamp(max=1.0)


def _clipped(grads: list[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """The real step's gradient clipping, ``g * min(1, max_norm / (||g|| + 1e-6))``, differentiable in ``g``."""
    if max_norm is None:
        return grads
    coef = _clip_coef(grads, max_norm)[1]
    return [g * coef for g in grads]


def _clipped_vjp(adjoint: list[torch.Tensor], grads: list[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """``J^T a`` for the Jacobian ``J`` of ``_clipped`` at the gradient ``grads`` (detached)."""
    if max_norm is None:
        return adjoint
    norm, coef = _clip_coef(grads, max_norm)
    if coef >= 1.0:
        return adjoint
    projection = sum((a * g).sum() for a, g in zip(adjoint, grads)) * coef / ((norm + 1e-6) * norm)
    return [coef * a - projection * g for a, g in zip(adjoint, grads)]


@register_hypergradient("unrolled")
def unrolled_hypergradient(problem: MetaProblem, start_params: Params) -> Hypergradient:
    """Exact hypergradient by back-propagating through the ``K`` virtual steps."""
    seeds = _step_seeds(problem)
    names = list(start_params)
    w = {n: p.detach().requires_grad_(True) for n, p in start_params.items()}
    for seed, batch in zip(seeds, problem.train_batches):
        loss = _seeded(seed, lambda: problem.train_loss(problem.forward(w, batch), batch))
        grads = _clipped(_grads_or_zeros(loss, [w[n] for n in names], create_graph=True), problem.max_grad_norm)
        w = {n: w[n] - problem.lr * g for n, g in zip(names, grads)}
    val = _seeded(seeds[-1], lambda: problem.val_loss(problem.forward(w, problem.val_batch), problem.val_batch))
    return Hypergradient(grads=_grads_or_zeros(val, problem.loss_params), val_loss=val.detach())


@register_hypergradient("finite_difference")
def finite_difference_hypergradient(problem: MetaProblem, start_params: Params) -> Hypergradient:
    """Reverse-mode hypergradient whose second-order products are central finite differences.

    With ``a_K = grad L_val(w_K)``, for ``k = K-1 .. 0``:
    ``dphi += -lr * d/dphi <grad_w L_k(w_k), a_{k+1}>`` and ``a_k = a_{k+1} - lr * H_k a_{k+1}``, each product
    taken as ``(g(w_k + e a) - g(w_k - e a)) / 2e`` with ``e = fd_epsilon / ||a||`` (with clipping, along
    ``J_k^T a_{k+1}`` instead of ``a_{k+1}``, ``J_k`` the clipping's Jacobian at step ``k``'s gradient).
    """
    seeds = _step_seeds(problem)
    trajectory, step_grads = [{n: p.detach() for n, p in start_params.items()}], []
    for seed, batch in zip(seeds, problem.train_batches):
        step_grads.append(_train_grads(problem, seed, batch, trajectory[-1]))
        step = _clipped(step_grads[-1], problem.max_grad_norm)
        trajectory.append({n: t - problem.lr * g for (n, t), g in zip(trajectory[-1].items(), step)})
    return _reverse_mode_fd(problem, seeds, trajectory, step_grads)


@register_hypergradient("implicit")
def implicit_hypergradient(problem: MetaProblem, start_params: Params) -> Hypergradient:
    """Implicit-function-theorem hypergradient with a ``K``-term Neumann series, by finite differences.

    Treats the start weights ``w`` as the inner solution (Lorraine et al., 2020):
    ``dL_val/dphi = -d/dphi <grad_w L_train(w), H^-1 grad_w L_val(w)>``, with ``H^-1`` approximated by
    ``lr * sum_{j<K} (I - lr H)^j``. Computed as ``finite_difference`` with every virtual step linearised at ``w``
    (``w_k = w`` for all ``k``; step ``k``'s Hessian and mixed product on ``batch_k``, validation gradient at ``w``),
    ``2K`` student forward/backward passes (``K`` more with clipping). Equals ``unrolled`` when the training loss is
    quadratic in ``w`` and the validation loss linear. Diverges when ``lr`` times the curvature exceeds 2.
    """
    seeds = _step_seeds(problem)
    point = {n: p.detach() for n, p in start_params.items()}
    step_grads = None
    if problem.max_grad_norm is not None:  # the clipping's Jacobian needs each step's gradient at w
        step_grads = [_train_grads(problem, seed, batch, point) for seed, batch in zip(seeds, problem.train_batches)]
    return _reverse_mode_fd(problem, seeds, [point] * (len(problem.train_batches) + 1), step_grads)


def _train_grads(problem: MetaProblem, seed: int, batch: Batch, point: Params) -> list[torch.Tensor]:
    """``grad_w L_train(w, batch)`` at ``point`` (detached)."""
    w = {n: t.clone().requires_grad_(True) for n, t in point.items()}
    loss = _seeded(seed, lambda: problem.train_loss(problem.forward(w, batch), batch))
    return _grads_or_zeros(loss, list(w.values()))


def _reverse_mode_fd(
    problem: MetaProblem, seeds: list[int], points: list[Params], step_grads: list[list[torch.Tensor]] | None
) -> Hypergradient:
    """Back-propagate ``grad L_val(points[K])`` through the ``K`` virtual steps taken at ``points[:K]``, every
    second-order product a central finite difference (see ``finite_difference_hypergradient``). With clipping,
    the products are taken along ``J_k^T a`` (``J_k``: the clipping's Jacobian at step ``k``'s gradient)."""
    names = list(points[-1])
    w_last = {n: t.clone().requires_grad_(True) for n, t in points[-1].items()}
    val = _seeded(seeds[-1], lambda: problem.val_loss(problem.forward(w_last, problem.val_batch), problem.val_batch))
    direction = _grads_or_zeros(val, [w_last[n] for n in names])

    hypergrad = [torch.zeros_like(p) for p in problem.loss_params]
    for k in reversed(range(len(problem.train_batches))):
        need_hvp = k > 0  # H_k a is only needed to carry the direction to earlier steps
        along = direction if step_grads is None else _clipped_vjp(direction, step_grads[k], problem.max_grad_norm)
        norm = _total_norm([d.double() for d in along])
        eps = problem.fd_epsilon / (norm + 1e-12)
        perturbed = []
        for sign in (1.0, -1.0):
            w = {
                n: (points[k][n] + sign * eps.to(d.dtype) * d).requires_grad_(need_hvp)
                for n, d in zip(names, along)
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
