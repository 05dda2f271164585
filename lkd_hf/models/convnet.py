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

:func:`create_lkd_model` (defined in :mod:`lkd_hf.models._base`, re-exported here) is the
``build_model_with_cfg`` wrapper shared by all ``lkd_hf`` model families: it keeps the model's
``pretrained_cfg`` (``input_size``, ``mean``, ``std``) consistent with a non-default ``in_chans`` so that
``timm.data.resolve_data_config({}, model=model)`` describes the model built.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple, Type

import torch
from timm.models._manipulate import checkpoint, checkpoint_seq
from torch import nn

from ._base import StagedNet, create_lkd_model, lkd_cfg, register_variants

__all__ = ["ConvNet", "create_lkd_model"]


class ConvBnAct(nn.Module):
    """3x3 conv (no bias), batch norm, activation.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        act_layer / norm_layer: activation and normalisation layers.
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
    """

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
        """Conv, norm, activation.

        Args:
            x: input feature map ``(B, in_chs, H, W)``.
        """
        return self.act(self.bn(self.conv(x)))


class ConvStage(nn.Module):
    """Optional 2x2 max-pool (downsampling into the stage) followed by ``depth`` :class:`ConvBnAct` blocks.

    Args:
        in_chs: input channels.
        out_chs: output channels of every block.
        depth: number of blocks.
        downsample: start with the 2x2 max-pool.
        act_layer / norm_layer: activation and normalisation layers.
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
    """

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
        """Pool (if downsampling), then the blocks.

        Args:
            x: input feature map ``(B, in_chs, H, W)``.
        """
        x = self.pool(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x


class ConvNet(StagedNet):
    """VGG-style CNN: stages of 3x3 conv-BN-ReLU separated by 2x2 max-pools, global pooling, dropout, linear.

    Args:
        widths: output channels of each stage (one entry per stage).
        convs_per_stage: number of conv-BN-ReLU blocks in every stage.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
        global_pool: timm global pooling type ('avg', 'max', 'avgmax', 'catavgmax', '' for none).
        act_layer / norm_layer: activation and normalisation layers.
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
    """

    stem_tap = False  # no stem: feature tap i is stage i

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
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        dd = {"device": device, "dtype": dtype}
        widths = tuple(int(w) for w in widths)
        assert len(widths) >= 1, "ConvNet needs at least one stage"
        assert convs_per_stage >= 1, "ConvNet needs at least one conv per stage"

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
        self._create_head(global_pool, **dd)

        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) conv weights; BN and linear layers keep PyTorch's defaults."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for timm's layer-wise optimizer settings (regexes over parameter names).

        Args:
            coarse: one group per stage instead of one per block.
        """
        return dict(
            stem=r"^stages\.0\.blocks\.0",  # the first conv
            blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)",
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn gradient checkpointing of the stages on or off.

        Args:
            enable: checkpoint (recompute in the backward pass) instead of storing activations.
        """
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    def _stages(self) -> List[nn.Module]:
        return list(self.stages)

    def _forward_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(stage, x)
        return stage(x)

    def _prune_stages(self, num_keep: int) -> None:
        self.stages = self.stages[:num_keep]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map (before pooling and the classifier).

        Args:
            x: input images ``(B, in_chans, H, W)``.
        """
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
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


default_cfgs = register_variants(
    globals(),
    _create_convnet,
    lkd_cfg(
        num_classes=10,
        input_size=(1, 28, 28),
        pool_size=(7, 7),
        mean=(0.5,),
        std=(0.5,),
        first_conv="stages.0.blocks.0.conv",
    ),
    {
        "lkd_convnet_teacher": (
            dict(widths=(32, 64, 128), convs_per_stage=2, drop_rate=0.2),
            "Teacher ConvNet: widths (32, 64, 128), 2 convs per stage (6 convs), classifier dropout 0.2.",
        ),
        "lkd_convnet_s4": (
            dict(widths=(4, 8, 16), convs_per_stage=1),
            "Very small student ConvNet: widths (4, 8, 16), 1 conv per stage (3 convs).",
        ),
        "lkd_convnet_s16": (
            dict(widths=(16, 32, 64), convs_per_stage=1),
            "Mid-size student ConvNet: widths (16, 32, 64), 1 conv per stage (3 convs).",
        ),
    },
)
