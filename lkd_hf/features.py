"""Feature taps and connectors for feature distillation between any timm teacher / student pair (CNN or ViT).

A *tap* names where a feature map is taken from a model:

* an ``int`` is a stage index into the model's ``feature_info`` (negative indices count from the end) and is
  read with timm's ``forward_intermediates(x, indices=..., output_fmt="NCHW")``, so ViT tokens come back as
  ``(B, C, H / patch, W / patch)`` maps with the prefix (class / register / distillation) tokens dropped, and
  intermediates are not passed through the final norm (timm's ``norm=False`` default);
* a ``str`` is a module name (a key of ``dict(model.named_modules())``) read with a forward hook, for models
  without ``forward_intermediates`` or to tap a specific module. Hooked outputs are converted to NCHW by
  :func:`to_nchw`.

:func:`forward_with_features` returns the logits and the tapped features of ONE forward pass (the logits
equal ``model(x)``). :class:`Connector` maps a student feature map onto a teacher feature map's shape
(FitNet-style 1x1 conv + BN regressor, then pooling / interpolation), and :class:`StudentWithConnectors`
bundles a student, its taps and connectors into one module whose ``forward`` can be run through
``torch.func.functional_call``::

    wrapper = StudentWithConnectors.build(student, teacher, [1, -1], [1, -1], input_size=(3, 32, 32))
    logits, student_feats = wrapper(x, return_features=True)      # student_feats have the teacher's shapes
    with torch.no_grad():
        teacher_logits, teacher_feats = forward_with_features(teacher, x, wrapper.teacher_taps)
    student = wrapper.student                                      # plain timm model, e.g. for export
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Tap",
    "Connector",
    "StudentWithConnectors",
    "build_connectors",
    "feature_shapes",
    "forward_with_features",
    "resolve_taps",
    "to_nchw",
]

Tap = Union[int, str]
Shape3 = tuple[int, int, int]

_MAX_LISTED_MODULES = 20


# ------------------------------------------------------------------------------------------------------------
# Tap resolution
# ------------------------------------------------------------------------------------------------------------


def _feature_info(model: nn.Module) -> list[dict]:
    """``model.feature_info`` as a list of dicts (``[]`` when the model has none)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    info = getattr(info, "info", info)  # timm's FeatureInfo (features_only models) wraps the list
    return list(info) if isinstance(info, (list, tuple)) else []


def _describe_stages(info: list[dict]) -> str:
    return "\n".join(
        f"  {i}: module {f.get('module')!r}, {f.get('num_chs')} channels, reduction {f.get('reduction')}"
        for i, f in enumerate(info)
    )


def _describe_modules(model: nn.Module, info: list[dict]) -> str:
    """The ``feature_info`` stages if the model has them, else its first named modules."""
    if info:
        return "feature_info stages (index: module):\n" + _describe_stages(info)
    names = [n for n, _ in model.named_modules() if n]
    listed = "\n".join(f"  {n}" for n in names[:_MAX_LISTED_MODULES])
    if len(names) > _MAX_LISTED_MODULES:
        listed += f"\n  ... ({len(names)} modules in total, see dict(model.named_modules()))"
    return "modules:\n" + listed


def _supports_intermediates(model: nn.Module) -> bool:
    return all(callable(getattr(model, name, None)) for name in ("forward_intermediates", "forward_head"))


def resolve_taps(model: nn.Module, taps: Sequence[Tap]) -> list[Tap]:
    """Validate ``taps`` for ``model`` and normalise int taps to non-negative stage indices.

    Args:
        model: a timm model (or any ``nn.Module`` when all taps are module names).
        taps: stage indices into ``model.feature_info`` (negative from the end) and / or module names.

    Returns:
        The taps, in the given order, with int taps made non-negative.

    Raises:
        ValueError: empty taps, an index out of range, an unknown module name, or int taps on a model without
            ``forward_intermediates`` / ``feature_info``. Messages list what is available.
        TypeError: a tap that is neither an int nor a str.
    """
    if isinstance(taps, (str, int)) or not isinstance(taps, Sequence):
        raise TypeError(f"taps must be a list of stage indices (int) / module names (str), got {taps!r}")
    if len(taps) == 0:
        raise ValueError("taps is empty: give at least one stage index (int) or module name (str)")
    model_name = type(model).__name__
    info = _feature_info(model)
    module_names: set | None = None
    resolved: list[Tap] = []
    for tap in taps:
        if isinstance(tap, bool) or not isinstance(tap, (int, str)):
            raise TypeError(f"a tap is a stage index (int) or a module name (str), got {tap!r}")
        if isinstance(tap, int):
            if not _supports_intermediates(model) or not info:
                missing = "forward_intermediates/forward_head" if info else "feature_info"
                raise ValueError(
                    f"int tap {tap} needs a timm model with feature_info and forward_intermediates, but "
                    f"{model_name} has no {missing}; name modules instead (str taps), e.g. from its "
                    + _describe_modules(model, info)
                )
            if not -len(info) <= tap < len(info):
                raise ValueError(
                    f"tap index {tap} is out of range for {model_name}, which has {len(info)} feature stages "
                    f"(negative indices count from the end):\n" + _describe_stages(info)
                )
            resolved.append(tap % len(info))
        else:
            if module_names is None:
                module_names = {n for n, _ in model.named_modules() if n}
            if tap not in module_names:
                close = difflib.get_close_matches(tap, sorted(module_names), n=5)
                hint = f"close matches: {close}; " if close else ""
                raise ValueError(
                    f"unknown module name {tap!r} for {model_name}; {hint}available "
                    + _describe_modules(model, info)
                )
            resolved.append(tap)
    return resolved


# ------------------------------------------------------------------------------------------------------------
# Forward with features
# ------------------------------------------------------------------------------------------------------------


def to_nchw(feature: Tensor, num_prefix_tokens: int | None = None) -> Tensor:
    """A hooked module output as an NCHW map.

    * ``(B, C, H, W)`` is returned as is (4-D outputs are assumed NCHW; NHWC stages such as Swin's are
      misread, use int taps for those);
    * ``(B, C)`` becomes ``(B, C, 1, 1)``;
    * ``(B, N, C)`` tokens become ``(B, C, S, S)`` on a square grid: the first ``num_prefix_tokens`` tokens
      (the model's ``num_prefix_tokens``, e.g. class / register tokens) are dropped if
      ``N - num_prefix_tokens`` is a square, else all tokens are kept if ``N`` is a square; without
      ``num_prefix_tokens``, all tokens are kept if ``N`` is a square, else one leading class token is
      dropped if ``N - 1`` is a square. Non-square grids raise (use int taps).

    Args:
        feature: the hooked module's output, ``(B, C, H, W)``, ``(B, C)`` or ``(B, N, C)``.
        num_prefix_tokens: the model's number of leading non-spatial tokens, or ``None`` when unknown.

    Raises:
        ValueError: a feature of another rank, or tokens that do not lie on a square grid.
    """
    if feature.ndim == 4:
        return feature
    if feature.ndim == 2:
        return feature[:, :, None, None]
    if feature.ndim != 3:
        raise ValueError(f"cannot turn a feature of shape {tuple(feature.shape)} into an NCHW map")
    batch, num_tokens, channels = feature.shape
    candidates = list(dict.fromkeys([num_prefix_tokens, 0])) if num_prefix_tokens is not None else [0, 1]
    for prefix in candidates:
        side = math.isqrt(max(num_tokens - prefix, 0))
        if side > 0 and side * side == num_tokens - prefix:
            grid = feature[:, prefix:].reshape(batch, side, side, channels)
            return grid.permute(0, 3, 1, 2).contiguous()
    raise ValueError(
        f"cannot lay out {num_tokens} tokens (shape {tuple(feature.shape)}) on a square grid "
        f"(prefix tokens tried: {candidates}); use an int tap (forward_intermediates) for this model"
    )


def forward_with_features(model: nn.Module, x: Tensor, taps: Sequence[Tap]) -> tuple[Tensor, list[Tensor]]:
    """Logits and the tapped NCHW feature maps (in tap order) of one forward pass of ``model``.

    ``taps`` are validated with :func:`resolve_taps` (errors list what is available). Int taps are read with
    ``model.forward_intermediates(x, indices=..., output_fmt="NCHW")`` and the logits are
    ``model.forward_head(final)``, which equals ``model(x)``; with only str taps the logits are ``model(x)``.
    Str taps are read with forward hooks (outputs converted by :func:`to_nchw`), removed afterwards even if
    the forward raises. Gradients flow through the features as usual (wrap in ``torch.no_grad()`` for a
    teacher). Works under ``torch.func.functional_call`` of a module whose ``forward`` calls it.

    Args:
        model: a timm model (or any ``nn.Module`` when all taps are module names).
        x: the input batch, ``(B, C, H, W)``.
        taps: stage indices and / or module names (see :func:`resolve_taps`).
    """
    taps = resolve_taps(model, taps)
    indices = sorted({t for t in taps if isinstance(t, int)})
    names = list(dict.fromkeys(t for t in taps if isinstance(t, str)))
    hooked: dict[str, list[object]] = {name: [] for name in names}
    modules = dict(model.named_modules()) if names else {}
    handles = []
    try:
        for name in names:
            def hook(module: nn.Module, args: tuple, output: object, _name: str = name) -> None:
                hooked[_name].append(output)
            handles.append(modules[name].register_forward_hook(hook))
        by_index: dict[int, Tensor] = {}
        if indices:
            final, intermediates = model.forward_intermediates(x, indices=indices, output_fmt="NCHW")
            by_index = dict(zip(indices, intermediates))
            logits = model.forward_head(final)
        else:
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()

    by_name: dict[str, Tensor] = {}
    num_prefix_tokens = getattr(model, "num_prefix_tokens", None)
    for name, outputs in hooked.items():
        if len(outputs) != 1:
            raise ValueError(
                f"module {name!r} ran {len(outputs)} times in one forward pass; "
                "tap a module that runs exactly once"
            )
        if not isinstance(outputs[0], Tensor):
            raise TypeError(
                f"module {name!r} returned a {type(outputs[0]).__name__}, not a tensor; tap another module"
            )
        by_name[name] = to_nchw(outputs[0], num_prefix_tokens)
    return logits, [by_index[t] if isinstance(t, int) else by_name[t] for t in taps]


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in model.parameters():
        return tensor.device, tensor.dtype
    for tensor in model.buffers():
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def feature_shapes(model: nn.Module, taps: Sequence[Tap], input_size: Shape3) -> list[Shape3]:
    """``(C, H, W)`` of each tap for ``input_size = (C, H, W)`` inputs, from a dry run.

    Runs a batch of 2 zeros on the model's device / dtype under ``torch.no_grad()`` with the model in eval
    mode; every submodule's training flag is restored afterwards.

    Args:
        model: a timm model (or any ``nn.Module`` when all taps are module names).
        taps: stage indices and / or module names (see :func:`resolve_taps`).
        input_size: ``(C, H, W)`` of one input image.
    """
    taps = resolve_taps(model, taps)
    device, dtype = _device_dtype(model)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(2, *input_size, device=device, dtype=dtype)
            _, features = forward_with_features(model, x, taps)
    finally:
        for module, training in modes.items():
            module.training = training
    return [tuple(f.shape[1:]) for f in features]


# ------------------------------------------------------------------------------------------------------------
# Connectors
# ------------------------------------------------------------------------------------------------------------


class Connector(nn.Module):
    """Map a student feature map onto a teacher feature map's shape.

    A FitNet-style regressor (1x1 conv without bias + BatchNorm2d, present even when channel counts match),
    then a spatial match to the teacher's ``(H, W)``: adaptive average pooling when the student map is at
    least as large in both dimensions, bilinear interpolation (``align_corners=False``) otherwise, nothing
    when equal. The spatial match uses the input's actual size, so the output is always ``out_shape``.

    Args:
        in_shape: student feature ``(C, H, W)``.
        out_shape: teacher feature ``(C, H, W)``.
    """

    def __init__(self, in_shape: Shape3, out_shape: Shape3) -> None:
        super().__init__()
        if len(in_shape) != 3 or len(out_shape) != 3:
            raise ValueError(
                f"in_shape and out_shape are (C, H, W), got {tuple(in_shape)} and {tuple(out_shape)}"
            )
        self.in_shape: Shape3 = tuple(int(s) for s in in_shape)
        self.out_shape: Shape3 = tuple(int(s) for s in out_shape)
        self.conv = nn.Conv2d(self.in_shape[0], self.out_shape[0], kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(self.out_shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """The student feature mapped to ``out_shape``.

        Args:
            x: a student feature map ``(B, C, H, W)`` with ``C = in_shape[0]`` (any ``H, W``).
        """
        x = self.bn(self.conv(x))
        size = self.out_shape[1:]
        height, width = x.shape[-2:]
        if (height, width) == size:
            return x
        if height >= size[0] and width >= size[1]:
            return F.adaptive_avg_pool2d(x, size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"


def build_connectors(student_shapes: Sequence[Shape3], teacher_shapes: Sequence[Shape3]) -> nn.ModuleList:
    """One :class:`Connector` per (student, teacher) tap pair.

    Args:
        student_shapes: ``(C, H, W)`` of the student's features, one per tap.
        teacher_shapes: ``(C, H, W)`` of the paired teacher features, as many.
    """
    if len(student_shapes) != len(teacher_shapes):
        raise ValueError(
            f"{len(student_shapes)} student feature shapes but {len(teacher_shapes)} teacher feature shapes; "
            "student and teacher taps are paired one to one"
        )
    return nn.ModuleList(Connector(s, t) for s, t in zip(student_shapes, teacher_shapes))


class StudentWithConnectors(nn.Module):
    """A student, its feature taps and one connector per tap, as one module.

    ``forward(pixel_values)`` returns the student's logits; with ``return_features=True`` it returns
    ``(logits, [connector_k(feature_k), ...])`` from one forward pass, the connected features having the
    paired teacher features' shapes. ``wrapper.student`` is the plain student (its ``state_dict`` loads into
    a fresh ``timm.create_model`` of the same architecture).

    Args:
        student: the student model.
        taps: the student's taps (see :func:`resolve_taps`).
        connectors: one connector per tap.
        teacher_taps: the paired teacher taps (resolved), kept for the caller; set by :meth:`build`.
    """

    def __init__(
        self,
        student: nn.Module,
        taps: Sequence[Tap],
        connectors: nn.ModuleList,
        teacher_taps: Sequence[Tap] | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.taps: list[Tap] = resolve_taps(student, taps)
        if len(connectors) != len(self.taps):
            raise ValueError(
                f"{len(self.taps)} taps but {len(connectors)} connectors; give one connector per tap"
            )
        if teacher_taps is not None and len(teacher_taps) != len(self.taps):
            raise ValueError(f"{len(self.taps)} student taps but {len(teacher_taps)} teacher taps")
        self.connectors = connectors
        self.teacher_taps: list[Tap] | None = None if teacher_taps is None else list(teacher_taps)

    @classmethod
    def build(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        student_taps: Sequence[Tap],
        teacher_taps: Sequence[Tap],
        input_size: Shape3,
    ) -> "StudentWithConnectors":
        """Resolve and pair the taps, measure both models' feature shapes on ``input_size = (C, H, W)`` inputs
        and build the connectors on the student's device / dtype.

        Args:
            student: the student model.
            teacher: the teacher model.
            student_taps: the student's taps (see :func:`resolve_taps`).
            teacher_taps: the teacher's taps, paired one to one with ``student_taps``.
            input_size: ``(C, H, W)`` of one input image.
        """
        student_taps = resolve_taps(student, student_taps)
        teacher_taps = resolve_taps(teacher, teacher_taps)
        if len(student_taps) != len(teacher_taps):
            raise ValueError(
                f"{len(student_taps)} student taps {student_taps} but {len(teacher_taps)} teacher taps "
                f"{teacher_taps}; student and teacher taps are paired one to one"
            )
        connectors = build_connectors(
            feature_shapes(student, student_taps, input_size),
            feature_shapes(teacher, teacher_taps, input_size),
        )
        device, dtype = _device_dtype(student)
        return cls(student, student_taps, connectors.to(device=device, dtype=dtype), teacher_taps)

    def forward(
        self, pixel_values: Tensor, return_features: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """The student's logits, or ``(logits, connected features)`` when ``return_features`` is true.

        Args:
            pixel_values: the input batch, ``(B, C, H, W)``.
            return_features: also return the connector-mapped features, one per tap.
        """
        if not return_features:
            return self.student(pixel_values)
        logits, features = forward_with_features(self.student, pixel_values, self.taps)
        return logits, [connector(f) for connector, f in zip(self.connectors, features)]
