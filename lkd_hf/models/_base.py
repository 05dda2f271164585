"""Code shared by the ``lkd_hf`` model families: the timm model interface over a list of stages, default
``pretrained_cfg`` entries, and the builder / registration helpers.

* :class:`StagedNet`: ``nn.Module`` base giving a stem + stages + pooled linear head network timm's
  ``forward_intermediates`` / ``prune_intermediate_layers`` / ``forward_head`` / ``get_classifier`` /
  ``reset_classifier``. A subclass builds its layers and ``feature_info`` and says where its stages are
  (``_stages``), how its stem and stages run (``_forward_stem`` / ``_forward_stage``), how a stage is pruned
  (``_prune_stages``) and, for pre-activation nets, what its final norm is (``_final_norm``).
* :func:`create_lkd_model`: ``build_model_with_cfg`` keeping ``pretrained_cfg`` consistent with ``in_chans``.
* :func:`register_variants`: the family's ``default_cfgs`` and one registered timm entrypoint per variant.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union

import torch
import torch.nn.functional as F
from timm.layers import create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from torch import nn

from ..channels import adapt_channel_stats

__all__ = [
    "StagedNet", "create_lkd_model", "register_variants", "lkd_cfg", "cifar_cfg",
    "CIFAR100_MEAN", "CIFAR100_STD",
]

ModelT = TypeVar("ModelT", bound=nn.Module)

# Normalisation used by RepDistiller / CRD / DKD for CIFAR-100.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


# ------------------------------------------------------------------------------------------------------------
# timm model interface
# ------------------------------------------------------------------------------------------------------------


class StagedNet(nn.Module):
    """Stem, stages (whose outputs are the feature taps), optional final norm, pooling, dropout, ``fc``.

    Feature tap 0 is the stem output when ``stem_tap`` is true, the stage outputs follow. Subclasses set
    ``num_features`` and call :meth:`_create_head` once their layers are built.

    Args:
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
    """

    stem_tap: bool = True
    stage_names: Tuple[str, ...] = ()  # attributes holding the stages, in order (used by the default _stages)

    def __init__(self, num_classes: int, in_chans: int, drop_rate: float):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

    # --- hooks ----------------------------------------------------------------------------------------------

    def _stages(self) -> List[nn.Module]:
        """The stages, in order; each one's output is a feature tap."""
        return [getattr(self, n) for n in self.stage_names]

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _forward_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return stage(x)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Norm / activation applied to the last stage's output in ``forward_features`` (none by default)."""
        return x

    def _prune_stages(self, num_keep: int) -> None:
        """Drop every stage after the first ``num_keep``."""
        raise NotImplementedError

    def _prune_final_norm(self) -> None:
        pass

    # --- head -----------------------------------------------------------------------------------------------

    def _create_head(self, global_pool: str, device=None, dtype=None) -> None:
        self.global_pool, self.fc = create_classifier(
            self.num_features, self.num_classes, pool_type=global_pool, device=device, dtype=dtype,
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        """The classifier module (``fc``), or its attribute name.

        Args:
            name_only: return the name ``"fc"`` instead of the module.
        """
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (``num_classes=0``: none); ``global_pool=None`` keeps the pooling type.

        Args:
            num_classes: outputs of the new classifier (0 for no classifier).
            global_pool: timm global pooling type ('avg', 'max', 'avgmax', 'catavgmax', '' for none), or ``None``
                to keep the current one.
        """
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self._create_head(global_pool, **dd)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    # --- timm feature API -----------------------------------------------------------------------------------

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (the feature taps, see ``feature_info``).

        Args:
            x: Input image tensor.
            indices: Take last n taps if int, all if None, select matching indices if sequence (negative
                indices count from the end; out-of-range indices raise).
            norm: Apply the final norm (if the model has one) to the last stage's intermediate (if taken).
            stop_early: Stop iterating over stages when last desired intermediate hit.
            output_fmt: Shape of intermediate feature outputs (only 'NCHW').
            intermediates_only: Only return intermediate features.

        Returns:
            Features and list of intermediate features or just intermediate features.
        """
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        stages = self._stages()
        first = int(self.stem_tap)  # tap index of the first stage
        last_idx = first + len(stages) - 1
        take_indices, max_index = feature_take_indices(last_idx + 1, indices)

        x = self._forward_stem(x)
        if self.stem_tap and 0 in take_indices:
            intermediates.append(x)

        if stop_early:
            stages = stages[:max_index + 1 - first]
        feat_idx = first - 1
        x_norm: Optional[torch.Tensor] = None
        for feat_idx, stage in enumerate(stages, start=first):
            x = self._forward_stage(stage, x)
            if feat_idx in take_indices:
                if norm and feat_idx == last_idx:
                    x_norm = self._final_norm(x)
                    intermediates.append(x_norm)
                else:
                    intermediates.append(x)

        if intermediates_only:
            return intermediates

        if feat_idx == last_idx:
            x = x_norm if x_norm is not None else self._final_norm(x)

        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune layers not required for specified intermediates.

        Args:
            indices: Indices of intermediate layers to keep.
            prune_norm: Whether to prune the final norm (if the model has one).
            prune_head: Whether to prune the classifier head.

        Returns:
            List of indices that were kept.
        """
        first = int(self.stem_tap)
        num_taps = first + len(self._stages())
        take_indices, max_index = feature_take_indices(num_taps, indices)
        prune_end = max_index < num_taps - 1
        if prune_norm or prune_end:
            # a final norm is sized for (and only applied to) the last stage
            self._prune_final_norm()
        self._prune_stages(max_index + 1 - first)
        if prune_end:
            # features now end at the last kept tap, the head is sized for the final features so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling, dropout and the classifier.

        Args:
            x: the final feature map from ``forward_features``.
            pre_logits: return the pooled features instead of the logits.
        """
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``forward_head(forward_features(x))``.

        Args:
            x: input images ``(B, in_chans, H, W)``.
        """
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ------------------------------------------------------------------------------------------------------------
# Default configs
# ------------------------------------------------------------------------------------------------------------


def lkd_cfg(**kwargs: Any) -> Dict[str, Any]:
    """``pretrained_cfg`` entries common to all ``lkd_hf`` models (no weights, no crop, ``fc`` head).

    Args:
        **kwargs: further ``pretrained_cfg`` entries (e.g. ``input_size``, ``mean``, ``std``); they override the
            common ones.
    """
    return {"url": "", "crop_pct": 1.0, "interpolation": "bilinear", "classifier": "fc", **kwargs}


def cifar_cfg(**kwargs: Any) -> Dict[str, Any]:
    """``pretrained_cfg`` of the RepDistiller CIFAR nets: 32x32 RGB, CIFAR-100 mean / std, 100 classes.

    Args:
        **kwargs: further ``pretrained_cfg`` entries (e.g. ``paper_ids``).
    """
    return lkd_cfg(
        num_classes=100,
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        first_conv="conv1",
        origin_url="https://github.com/HobbitLong/RepDistiller",
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------------------
# Builder and registration
# ------------------------------------------------------------------------------------------------------------


def _in_chans_overlay(cfg: Dict[str, Any], in_chans: int) -> Dict[str, Any]:
    """``pretrained_cfg`` entries to replace so the config describes a model with ``in_chans`` channels."""
    overlay: Dict[str, Any] = {}
    for key in ("input_size", "test_input_size"):
        size = cfg.get(key)
        if size is not None and size[0] != in_chans:
            overlay[key] = (in_chans, *size[1:])
    if overlay:
        for key in ("mean", "std"):
            if cfg.get(key) is not None:
                overlay[key] = adapt_channel_stats(cfg[key], in_chans)
    return overlay


def create_lkd_model(
        model_cls: Type[ModelT],
        variant: str,
        pretrained: bool = False,
        **kwargs: Any,
) -> ModelT:
    """``timm.models.build_model_with_cfg`` with the ``pretrained_cfg`` adapted to a non-default ``in_chans``.

    timm's ``resolve_data_config`` reads ``input_size`` / ``mean`` / ``std`` straight from
    ``model.pretrained_cfg``; for a model created with e.g. ``in_chans=3`` from a 1-channel config, those
    entries are overlaid with a 3-channel ``input_size`` and 3-entry ``mean`` / ``std`` (single values
    repeated, several values averaged). Entries given in a caller's ``pretrained_cfg_overlay`` are respected
    unless they contradict ``in_chans``.

    Args:
        model_cls: the model class.
        variant: the registered model name (its ``pretrained_cfg`` is looked up).
        pretrained: load pretrained weights.
        **kwargs: passed to ``build_model_with_cfg`` and the model's constructor (``in_chans``, ``num_classes``,
            ``feature_cfg``, ``pretrained_cfg_overlay``, ...).
    """
    in_chans = kwargs.get("in_chans")
    if in_chans is not None:
        user_overlay = kwargs.get("pretrained_cfg_overlay") or {}
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get("pretrained_cfg"),
            pretrained_cfg_overlay=user_overlay,
        ).to_dict()
        overlay = _in_chans_overlay(cfg, in_chans)
        if overlay:
            kwargs["pretrained_cfg_overlay"] = {**user_overlay, **overlay}
    return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)


def register_variants(
        namespace: Dict[str, Any],
        create_fn: Callable[..., nn.Module],
        default_cfg: Dict[str, Any],
        variants: Mapping[str, Tuple[Dict[str, Any], str]],
) -> Dict[str, Any]:
    """Register one timm entrypoint per variant of a model family, from the family module's ``globals()``.

    Sets the module's ``default_cfgs`` (``default_cfg`` for every variant; timm's ``register_model`` reads it)
    and returns it. For each ``name: (model_args, doc)`` an entrypoint ``name(pretrained=False, **kwargs)``
    (docstring ``doc``) calls ``create_fn(name, pretrained, **model_args)`` with ``kwargs`` taking precedence;
    it is registered with ``register_model`` (so added to the module's ``__all__``) and bound in the module.

    Args:
        namespace: the family module's ``globals()``.
        create_fn: the family's builder, ``create_fn(variant, pretrained, **kwargs)``.
        default_cfg: the ``pretrained_cfg`` of every variant.
        variants: ``name: (model_args, doc)`` per variant.
    """
    namespace["default_cfgs"] = generate_default_cfgs({name: dict(default_cfg) for name in variants})
    for name, (model_args, doc) in variants.items():
        namespace[name] = register_model(_entrypoint(namespace["__name__"], name, create_fn, model_args, doc))
    return namespace["default_cfgs"]


def _entrypoint(
        module: str, name: str, create_fn: Callable[..., nn.Module], model_args: Dict[str, Any], doc: str,
) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_fn(name, pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    entrypoint.__doc__ = doc
    # the model class, as the hand-written timm entrypoints annotate it
    entrypoint.__annotations__["return"] = create_fn.__annotations__.get("return", "nn.Module")
    return entrypoint
