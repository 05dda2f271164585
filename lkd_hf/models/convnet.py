"""VGG-style small CNNs for fast CPU distillation experiments (28x28 grayscale by default).

Registered in timm's model registry, so ``timm.create_model("lkd_convnet_s4", num_classes=10)`` works once
:mod:`lkd_hf.models` is imported:

* ``lkd_convnet_teacher``: widths (32, 64, 128), 2 convs per stage, classifier dropout 0.2.
* ``lkd_convnet_s16``: widths (16, 32, 64), 1 conv per stage.
* ``lkd_convnet_s4``: widths (4, 8, 16), 1 conv per stage.

A stage is ``convs_per_stage`` x (3x3 conv, BN, ReLU), preceded by a 2x2 max-pool for every stage but the
first, so the stage outputs (the feature taps, ``feature_info``) have reductions 1, 2, 4, ...; the head is
global average pooling, dropout and a linear classifier. The models follow timm's conventions
(``forward_features`` / ``forward_head`` / ``forward_intermediates`` / ``prune_intermediate_layers`` /
``reset_classifier``, ``pretrained_cfg``, ``features_only=True``).

This module also holds :func:`create_lkd_model`, the ``build_model_with_cfg`` wrapper shared by all ``lkd_hf``
model families: it keeps the model's ``pretrained_cfg`` (``input_size``, ``mean``, ``std``) consistent with a
non-default ``in_chans`` so that ``timm.data.resolve_data_config({}, model=model)`` describes the model built.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import torch
import torch.nn.functional as F
from timm.layers import create_classifier, get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq
from torch import nn

__all__ = ["ConvNet", "create_lkd_model"]

ModelT = TypeVar("ModelT", bound=nn.Module)


# ------------------------------------------------------------------------------------------------------------
# Shared builder
# ------------------------------------------------------------------------------------------------------------


def _adapt_stats(values: Union[float, Sequence[float]], in_chans: int) -> Tuple[float, ...]:
    """Per-channel normalisation stats for ``in_chans`` channels: kept if they match, one value repeated, else
    the mean of the values repeated (the policy of timm's prefetch loaders)."""
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    if len(values) == in_chans:
        return values
    value = values[0] if len(values) == 1 else sum(values) / len(values)
    return (value,) * in_chans


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
                overlay[key] = _adapt_stats(cfg[key], in_chans)
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


# ------------------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------------------


class ConvBnAct(nn.Module):
    """3x3 conv (no bias), batch norm, activation."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, padding=1, bias=False, **dd)
        self.bn = norm_layer(out_chs, **dd)
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvStage(nn.Module):
    """Optional 2x2 max-pool (downsampling into the stage) followed by ``depth`` :class:`ConvBnAct` blocks."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            downsample: bool,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvBnAct(
                in_chs if i == 0 else out_chs, out_chs, act_layer=act_layer, norm_layer=norm_layer, **dd,
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x


class ConvNet(nn.Module):
    """VGG-style CNN: stages of 3x3 conv-BN-ReLU separated by 2x2 max-pools, global pooling, dropout, linear.

    Args:
        widths: output channels of each stage (one entry per stage).
        convs_per_stage: number of conv-BN-ReLU blocks in every stage.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
        global_pool: timm global pooling type ('avg', 'max', 'avgmax', 'catavgmax', '' for none).
        act_layer / norm_layer: activation and normalisation layers.
    """

    def __init__(
            self,
            widths: Tuple[int, ...] = (32, 64, 128),
            convs_per_stage: int = 2,
            num_classes: int = 10,
            in_chans: int = 1,
            drop_rate: float = 0.0,
            global_pool: str = "avg",
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        widths = tuple(int(w) for w in widths)
        assert len(widths) >= 1, "ConvNet needs at least one stage"
        assert convs_per_stage >= 1, "ConvNet needs at least one conv per stage"
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        stages = []
        self.feature_info = []
        prev_chs = in_chans
        for i, width in enumerate(widths):
            stages.append(ConvStage(
                prev_chs, width, convs_per_stage, downsample=i > 0,
                act_layer=act_layer, norm_layer=norm_layer, **dd,
            ))
            self.feature_info.append(dict(num_chs=width, reduction=2 ** i, module=f"stages.{i}"))
            prev_chs = width
        self.stages = nn.Sequential(*stages)

        self.num_features = prev_chs
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **dd,
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) conv weights; BN and linear layers keep PyTorch's defaults."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stages\.0\.blocks\.0",  # the first conv
            blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)",
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (``num_classes=0``: none); ``global_pool=None`` keeps the pooling type."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **dd,
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (the stage outputs, see ``feature_info``).

        Args:
            x: Input image tensor.
            indices: Take last n stages if int, all if None, select matching indices if sequence (negative
                indices count from the end; out-of-range indices raise).
            norm: Unused (no final norm layer), for API compatibility.
            stop_early: Stop iterating over stages when last desired intermediate hit.
            output_fmt: Shape of intermediate feature outputs (only 'NCHW').
            intermediates_only: Only return intermediate features.

        Returns:
            Features and list of intermediate features or just intermediate features.
        """
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)

        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)

        if intermediates_only:
            return intermediates

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
            prune_norm: Unused (no final norm layer), for API compatibility.
            prune_head: Whether to prune the classifier head.

        Returns:
            List of indices that were kept.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            # features now end at the last kept tap, the head is sized for the final features so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ------------------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------------------


def _create_convnet(variant: str, pretrained: bool = False, **kwargs: Any) -> ConvNet:
    num_stages = len(kwargs.get("widths", (32, 64, 128)))
    return create_lkd_model(
        ConvNet,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(num_stages))),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.5,),
        "std": (0.5,),
        "first_conv": "stages.0.blocks.0.conv",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "lkd_convnet_teacher": _cfg(),
    "lkd_convnet_s4": _cfg(),
    "lkd_convnet_s16": _cfg(),
})


@register_model
def lkd_convnet_teacher(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Teacher ConvNet: widths (32, 64, 128), 2 convs per stage (6 convs), classifier dropout 0.2."""
    model_args = dict(widths=(32, 64, 128), convs_per_stage=2, drop_rate=0.2)
    return _create_convnet("lkd_convnet_teacher", pretrained, **dict(model_args, **kwargs))


@register_model
def lkd_convnet_s4(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Very small student ConvNet: widths (4, 8, 16), 1 conv per stage (3 convs)."""
    model_args = dict(widths=(4, 8, 16), convs_per_stage=1)
    return _create_convnet("lkd_convnet_s4", pretrained, **dict(model_args, **kwargs))


@register_model
def lkd_convnet_s16(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Mid-size student ConvNet: widths (16, 32, 64), 1 conv per stage (3 convs)."""
    model_args = dict(widths=(16, 32, 64), convs_per_stage=1)
    return _create_convnet("lkd_convnet_s16", pretrained, **dict(model_args, **kwargs))
