"""Hypergradient estimators of the bi-level LKD objective, registered by name.

The student's virtual trajectory from weights ``w_0`` is
``w_{k+1} = w_k - lr * clip(grad_w L_train(w_k, batch_k; phi))`` for ``k < K``; the outer objective is
``L_val(w_K)``. An estimator returns ``d L_val(w_K) / d phi``.

* ``unrolled``: exact: reverse mode through the ``K`` virtual steps with exact products, recomputing each step
  (mixed products by forward mode, Hessian-vector products by a double backward through one step), so its memory
  does not grow with ``K``. Needs double backward (``K > 1``) and forward-mode derivatives through the student
  (fails for e.g. hardsigmoid or fused SDPA attention).
* ``finite_difference``: reverse mode through the same ``K`` steps where every second-order product is a central
  finite difference of first-order gradients (DARTS generalised to ``K`` steps); with ``K == 1`` the perturbed
  points only need a student *forward*. Works for every model.
* ``implicit``: the implicit-function-theorem hypergradient with a ``K``-term Neumann series: ``finite_difference``
  with every virtual step linearised at ``w_0`` (no trajectory; validation gradient at ``w_0``). At ``K == 1`` it is
  the first-order term of the one-step look-ahead. The series converges only where ``lr`` times the training
  loss's curvature is below 2 (it diverged for ``K >= 5`` at the student's learning rate in docs/experiments.md: use
  ``K == 1`` or a smaller ``lookahead_lr``). Works for every model.

Both draw the same dropout randomness for a virtual step and for its perturbed re-evaluations. With
``MetaProblem.max_grad_norm`` set, every virtual step clips its gradient as the Trainer's real step does (and is
differentiated through the clipping): a look-ahead with the unclipped gradient of a large-gradient loss (DIST at
T=8: norm ~200, where the real step is clipped to 1) overshoots, and its hypergradient then turns the loss down.

Cost and precision options of a :class:`MetaProblem`:

* ``first_step_grads``: the first virtual step's training gradient at the start weights, when the caller already
  has it (the real student step computes it when the look-ahead starts from the live weights on the current batch
  with the same loss); every estimator then skips that student forward/backward.
* ``mixed_product="jvp"``: ``finite_difference`` and ``implicit`` take every mixed product
  ``d/dphi <grad_w L_train, v>`` exactly, from a forward-mode derivative of the student's output along ``v`` and a
  double backward through the training loss only (the student is never differentiated twice). At ``K == 1`` this
  is the only second-order product, so the estimate has no finite-difference error. Hessian-vector products
  (``K > 1``) stay finite differences.
* ``autocast_dtype``: the validation forward/backward runs under ``torch.autocast`` to this dtype; every pass of the
  training loss runs with autocast disabled. In bf16, a difference of two nearby forwards is rounding noise (the
  weights' perturbation is below bf16's resolution), a bf16 tangent or double backward loses accuracy, and a bf16
  training gradient moves the clipping's Jacobian, which projects the validation gradient off that gradient (the
  two are nearly parallel, so the small remainder takes the error). On a small ResNet these gave cosines to the
  fp64 hypergradient down to 0.60-0.74, 0.97 and 0.94; with only the validation pass in bf16, ``unrolled`` and the
  ``"jvp"`` estimators stayed above 0.998 (``tests/test_meta_precision.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._pytree import tree_flatten, tree_unflatten

Params = dict[str, torch.Tensor]
Batch = dict[str, Any]

MIXED_PRODUCTS = ("finite_difference", "jvp")
"""How ``finite_difference`` and ``implicit`` take the mixed products ``d/dphi <grad_w L_train, v>``."""


@dataclass
class MetaProblem:
    """One meta step's inputs, independent of how the trainer produced them.

    Attributes:
        forward: ``forward(params, batch) -> student output`` (a functional call of the student). It must run in
            the precision of the enclosing autocast state (not enter or leave autocast itself): the estimators call
            it under ``torch.autocast(device, dtype=autocast_dtype)`` or with autocast disabled.
        train_loss: ``train_loss(student_output, batch) -> scalar``: the inner objective (depends on ``loss_params``).
        val_loss: ``val_loss(student_output, batch) -> scalar``: the outer objective (validation cross-entropy).
        loss_params: the loss networks' trainable parameters ``phi``.
        train_batches: the ``K`` batches of the virtual steps.
        val_batch: the validation batch.
        lr: step size of the virtual steps.
        fd_epsilon: finite-difference perturbation, relative to the norm of the perturbation direction.
        max_grad_norm: if set, every virtual step's gradient is clipped to this total norm, as the Trainer clips the
            real step's (``torch.nn.utils.clip_grad_norm_``); the clipping is differentiated through.
        first_step_grads: optionally ``grad_w L_train(w_0, train_batches[0])``, one tensor per start weight in the
            order of ``start_params``, unclipped: the estimators use it instead of computing it (one student
            forward/backward less). A
            gradient from a bf16 forward moves the clipping's Jacobian (see ``autocast_dtype``): give one computed in
            full precision.
        mixed_product: how ``finite_difference`` and ``implicit`` take ``d/dphi <grad_w L_train, v>``:
            ``"finite_difference"`` (central differences; two student forwards at the last step) or ``"jvp"``
            (exact: one student forward with tangents, about 1.5x the two forwards' FLOPs).
        autocast_dtype: if set (e.g. ``torch.bfloat16``), the validation pass runs under autocast to this dtype,
            the training-loss passes in full precision (see the module docstring); ``None``: autocast disabled
            throughout. fp16 gradients are not loss-scaled: prefer bf16.
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
    first_step_grads: list[torch.Tensor] | None = None
    mixed_product: str = "finite_difference"
    autocast_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.mixed_product not in MIXED_PRODUCTS:
            raise ValueError(f"mixed_product must be one of {MIXED_PRODUCTS}, got {self.mixed_product!r}")


def unrolled_unsupported(model: Any, error: Exception) -> str:
    """The message for a student that ``unrolled`` cannot differentiate twice or in forward mode.

    Args:
        model: the student.
        error: what torch raised.
    """
    return (f"hypergradient='unrolled' differentiates twice (and in forward mode) through the student, which "
            f"{type(model).__name__} does not support ({error}). Use LKDConfig(hypergradient='finite_difference') "
            "(or 'implicit'): they need no double backward.")


@dataclass
class Hypergradient:
    """An estimator's result: one gradient per loss parameter, and the validation loss at ``w_K``."""

    grads: list[torch.Tensor]
    val_loss: torch.Tensor


Estimator = Callable[[MetaProblem, Params], Hypergradient]
_ESTIMATORS: dict[str, Estimator] = {}


def register_hypergradient(name: str, *, overwrite: bool = False) -> Callable[[Estimator], Estimator]:
    """Register a hypergradient estimator ``fn(problem, start_params) -> Hypergradient`` under ``name``.

    Args:
        name: the name that ``LKDConfig.hypergradient`` selects it by.
        overwrite: replace an estimator already registered as ``name`` (otherwise a ``ValueError``).
    """

    def decorator(fn: Estimator) -> Estimator:
        if name in _ESTIMATORS and not overwrite:
            raise ValueError(
                f"A hypergradient named {name!r} is already registered; pass overwrite=True to replace it."
            )
        _ESTIMATORS[name] = fn
        return fn

    return decorator


def available_hypergradients() -> list[str]:
    """Names of the registered hypergradient estimators."""
    return sorted(_ESTIMATORS)


def get_hypergradient(name: str) -> Estimator:
    """The estimator registered as ``name``; unknown names list the known ones.

    Args:
        name: a registered estimator name, e.g. ``"unrolled"``, ``"finite_difference"`` or ``"implicit"``.
    """
    if name not in _ESTIMATORS:
        raise ValueError(f"Unknown hypergradient {name!r}. Known: {', '.join(available_hypergradients())}.")
    return _ESTIMATORS[name]


def _seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the global RNGs seeded with ``seed``, restoring them afterwards (same dropout masks)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn()


def _student_output(problem: MetaProblem, weights: Params, batch: Batch, dtype: torch.dtype | None = None) -> Any:
    """``problem.forward(weights, batch)`` under autocast to ``dtype``, or with autocast disabled (``None``)."""
    device_type = next(iter(weights.values())).device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        return problem.forward(weights, batch)


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
    """Exact hypergradient through the ``K`` virtual steps, recomputing each step instead of keeping the graph of
    all of them.

    The virtual steps run without a graph (their gradients kept for the clipping's Jacobian); then
    ``grad L_val(w_K)`` is carried back through them with exact products, one step at a time: the mixed products
    ``d/dphi <grad_w L_train(w_k), v>`` by forward mode (one student forward with tangents, no graph kept) and, for
    ``k > 0``, the Hessian-vector products by a double backward through that step alone. Peak memory is that of one
    step's double backward (at ``K == 1``: of the validation forward/backward), whatever ``K``; back-propagating
    through all ``K`` steps at once would keep ``K + 1`` forward graphs and ``K`` backward graphs.

    Args:
        problem: the meta step's inputs (:class:`MetaProblem`).
        start_params: the student weights ``w_0`` the virtual steps start from, by parameter name.
    """
    seeds = _step_seeds(problem)
    return _reverse_mode(problem, seeds, *_trajectory(problem, seeds, start_params), exact=True)


@register_hypergradient("finite_difference")
def finite_difference_hypergradient(problem: MetaProblem, start_params: Params) -> Hypergradient:
    """Reverse-mode hypergradient whose second-order products are central finite differences.

    With ``a_K = grad L_val(w_K)``, for ``k = K-1 .. 0``:
    ``dphi += -lr * d/dphi <grad_w L_k(w_k), a_{k+1}>`` and ``a_k = a_{k+1} - lr * H_k a_{k+1}``, each product
    taken as ``(g(w_k + e a) - g(w_k - e a)) / 2e`` with ``e = fd_epsilon / ||a||`` (with clipping, along
    ``J_k^T a_{k+1}`` instead of ``a_{k+1}``, ``J_k`` the clipping's Jacobian at step ``k``'s gradient). With
    ``mixed_product="jvp"`` the ``dphi`` terms are exact forward-mode products instead.

    Student passes: ``K + 1`` forward/backward (``K`` when ``first_step_grads`` is given), then ``2 (K - 1)``
    forward/backward for steps ``K-1 .. 1`` and two forwards for step 0 (``"jvp"``: one forward with tangents per
    step instead of the two forwards, the ``2 (K - 1)`` forward/backward passes still giving the ``H_k a``).

    Args:
        problem: the meta step's inputs (:class:`MetaProblem`).
        start_params: the student weights ``w_0`` the virtual steps start from, by parameter name.
    """
    seeds = _step_seeds(problem)
    return _reverse_mode(problem, seeds, *_trajectory(problem, seeds, start_params))


def _trajectory(
    problem: MetaProblem, seeds: list[int], start_params: Params
) -> tuple[list[Params], list[list[torch.Tensor]]]:
    """The ``K`` virtual steps from ``start_params`` without a graph: the weights ``w_0 .. w_K`` and each step's
    unclipped training gradient."""
    trajectory, step_grads = [{n: p.detach() for n, p in start_params.items()}], []
    for k, (seed, batch) in enumerate(zip(seeds, problem.train_batches)):
        step_grads.append(_step_grads(problem, k, seed, batch, trajectory[-1]))
        step = _clipped(step_grads[-1], problem.max_grad_norm)
        trajectory.append({n: t - problem.lr * g for (n, t), g in zip(trajectory[-1].items(), step)})
    return trajectory, step_grads


@register_hypergradient("implicit")
def implicit_hypergradient(problem: MetaProblem, start_params: Params) -> Hypergradient:
    """Implicit-function-theorem hypergradient with a ``K``-term Neumann series, by finite differences.

    Treats the start weights ``w`` as the inner solution (Lorraine et al., 2020):
    ``dL_val/dphi = -d/dphi <grad_w L_train(w), H^-1 grad_w L_val(w)>``, with ``H^-1`` approximated by
    ``lr * sum_{j<K} (I - lr H)^j``. Computed as ``finite_difference`` with every virtual step linearised at ``w``
    (``w_k = w`` for all ``k``; step ``k``'s Hessian and mixed product on ``batch_k``, validation gradient at ``w``),
    ``2K`` student forward/backward passes (``K`` more with clipping, one of them saved by ``first_step_grads``).
    Equals ``unrolled`` when the training loss is quadratic in ``w`` and the validation loss linear. Diverges when
    ``lr`` times the curvature exceeds 2.

    Args:
        problem: the meta step's inputs (:class:`MetaProblem`).
        start_params: the student weights ``w_0`` the virtual steps start from, by parameter name.
    """
    seeds = _step_seeds(problem)
    point = {n: p.detach() for n, p in start_params.items()}
    step_grads = None
    if problem.max_grad_norm is not None:  # the clipping's Jacobian needs each step's gradient at w
        batches = enumerate(zip(seeds, problem.train_batches))
        step_grads = [_step_grads(problem, k, seed, batch, point) for k, (seed, batch) in batches]
    return _reverse_mode(problem, seeds, [point] * (len(problem.train_batches) + 1), step_grads)


def _step_grads(problem: MetaProblem, k: int, seed: int, batch: Batch, point: Params) -> list[torch.Tensor]:
    """Virtual step ``k``'s training gradient at ``point``: ``problem.first_step_grads`` for step 0 if given."""
    grads = problem.first_step_grads
    if k > 0 or grads is None:
        return _train_grads(problem, seed, batch, point)
    if len(grads) != len(point) or any(g.shape != p.shape for g, p in zip(grads, point.values())):
        raise ValueError("first_step_grads must hold one gradient per start weight, in the order of start_params.")
    return [g.detach() for g in grads]


def _val_loss(problem: MetaProblem, weights: Params) -> torch.Tensor:
    """The validation loss at ``weights``, its forward under autocast to ``problem.autocast_dtype`` if set."""
    batch = problem.val_batch
    return problem.val_loss(_student_output(problem, weights, batch, problem.autocast_dtype), batch)


def _train_grads(problem: MetaProblem, seed: int, batch: Batch, point: Params) -> list[torch.Tensor]:
    """``grad_w L_train(w, batch)`` at ``point`` (detached)."""
    w = {n: t.clone().requires_grad_(True) for n, t in point.items()}
    loss = _seeded(seed, lambda: problem.train_loss(_student_output(problem, w, batch), batch))
    return _grads_or_zeros(loss, list(w.values()))


def _reverse_mode(
    problem: MetaProblem,
    seeds: list[int],
    points: list[Params],
    step_grads: list[list[torch.Tensor]] | None,
    exact: bool = False,
) -> Hypergradient:
    """Back-propagate ``grad L_val(points[K])`` through the ``K`` virtual steps taken at ``points[:K]``, every
    Hessian-vector product a central finite difference and every mixed product one too or, with
    ``mixed_product="jvp"``, a forward-mode product (see ``finite_difference_hypergradient``); with ``exact``, the
    mixed products by forward mode and the Hessian-vector products by double backward. With clipping, the products
    are taken along ``J_k^T a`` (``J_k``: the clipping's Jacobian at step ``k``'s gradient)."""
    names = list(points[-1])
    w_last = {n: t.clone().requires_grad_(True) for n, t in points[-1].items()}
    val = _seeded(seeds[-1], lambda: _val_loss(problem, w_last))
    direction = _grads_or_zeros(val, [w_last[n] for n in names])

    hypergrad = [torch.zeros_like(p) for p in problem.loss_params]
    for k in reversed(range(len(problem.train_batches))):
        need_hvp = k > 0  # H_k a is only needed to carry the direction to earlier steps
        along = direction if step_grads is None else _clipped_vjp(direction, step_grads[k], problem.max_grad_norm)
        batch = problem.train_batches[k]
        if exact:
            mixed = _jvp_mixed_product(problem, seeds[k], batch, points[k], along)
            hvp = _exact_hvp(problem, seeds[k], batch, points[k], along) if need_hvp else None
        elif problem.mixed_product == "jvp":
            mixed = _jvp_mixed_product(problem, seeds[k], batch, points[k], along)
            hvp = _fd_products(problem, seeds[k], batch, points[k], along, wrt_phi=False)[1] if need_hvp else None
        else:
            mixed, hvp = _fd_products(problem, seeds[k], batch, points[k], along, wrt_phi=True, wrt_w=need_hvp)
        hypergrad = [h - (problem.lr * m).to(h.dtype) for h, m in zip(hypergrad, mixed)]
        if need_hvp:
            direction = [d - (problem.lr * h).to(d.dtype) for d, h in zip(direction, hvp)]
    return Hypergradient(grads=hypergrad, val_loss=val.detach())


def _exact_hvp(
    problem: MetaProblem, seed: int, batch: Batch, point: Params, along: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``H v = grad_w <grad_w L_train(point, batch), v>``, by a double backward through this one step."""
    w = {n: t.clone().requires_grad_(True) for n, t in point.items()}
    loss = _seeded(seed, lambda: problem.train_loss(_student_output(problem, w, batch), batch))
    grads = _grads_or_zeros(loss, list(w.values()), create_graph=True)
    directional = sum((g * v).sum() for g, v in zip(grads, along))
    if not directional.requires_grad:  # no weight reaches the loss twice: a zero Hessian
        return [torch.zeros_like(t) for t in w.values()]
    return _grads_or_zeros(directional, list(w.values()))


def _fd_products(
    problem: MetaProblem,
    seed: int,
    batch: Batch,
    point: Params,
    along: list[torch.Tensor],
    wrt_phi: bool,
    wrt_w: bool = True,
) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
    """Central differences ``(g(point + e v) - g(point - e v)) / 2e`` of the training loss's gradients w.r.t. the
    loss parameters (``wrt_phi``: the mixed product) and w.r.t. the weights (``wrt_w``: the Hessian-vector
    product), ``e = fd_epsilon / ||v||``, ``v = along``. Without ``wrt_w`` the student runs forward only."""
    names = list(point)
    eps = problem.fd_epsilon / (_total_norm([d.double() for d in along]) + 1e-12)
    perturbed = []
    for sign in (1.0, -1.0):
        w = {n: (point[n] + sign * eps.to(d.dtype) * d).requires_grad_(wrt_w) for n, d in zip(names, along)}

        def train_loss_at_w(w=w):
            with torch.set_grad_enabled(wrt_w):
                output = _student_output(problem, w, batch)
            return problem.train_loss(output, batch)

        loss = _seeded(seed, train_loss_at_w)
        wrt = (problem.loss_params if wrt_phi else []) + ([w[n] for n in names] if wrt_w else [])
        perturbed.append(_grads_or_zeros(loss, wrt))
    products = [(gp - gm) / (2 * eps) for gp, gm in zip(*perturbed)]
    num_phi = len(problem.loss_params) if wrt_phi else 0
    return (products[:num_phi] if wrt_phi else None), (products[num_phi:] if wrt_w else None)


def _jvp_mixed_product(
    problem: MetaProblem, seed: int, batch: Batch, point: Params, along: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``d/dphi <grad_w L_train(point, batch), v>`` exactly: with the student output ``z(w)`` and
    ``L_train = l(z, phi)`` it is ``d/dphi <grad_z l(z, phi), J_z v>``, from one forward with tangents ``v``
    (forward-mode AD, no graph) and a double backward through the training loss only."""
    with torch.no_grad(), fwAD.dual_level():
        duals = {n: fwAD.make_dual(point[n], d) for n, d in zip(point, along)}
        output = _seeded(seed, lambda: _student_output(problem, duals, batch))
        leaves, spec = tree_flatten(output)
        unpacked = [fwAD.unpack_dual(x) if isinstance(x, torch.Tensor) else (x, None) for x in leaves]
        primals = [p.detach().clone() if isinstance(p, torch.Tensor) else p for p, _ in unpacked]
        tangents = [None if t is None else t.clone() for _, t in unpacked]
    differentiable = [i for i, t in enumerate(tangents) if t is not None]
    for i in differentiable:  # a view, not the leaf: module-input hooks (e.g. FlopCounterMode's) reject leaves
        primals[i] = primals[i].requires_grad_(True).view_as(primals[i])
    loss = problem.train_loss(tree_unflatten(primals, spec), batch)
    output_grads = _grads_or_zeros(loss, [primals[i] for i in differentiable], create_graph=True)
    directional = sum((g * tangents[i]).sum() for g, i in zip(output_grads, differentiable))
    return _grads_or_zeros(directional, problem.loss_params)
