"""CIFAR-style ResNets of the knowledge-distillation literature (CRD / RepDistiller, DKD), registered in timm.

The architecture of ``models/resnet.py`` in https://github.com/HobbitLong/RepDistiller: a 3x3 stem conv, three
stages of BasicBlocks (depth ``6n + 2``) at strides 1, 2, 2, global average pooling and a linear classifier.

* ``cifar_resnet{8,14,20,32,44,56,110}``: stem 16 channels, stage widths 16 / 32 / 64.
* ``cifar_resnet8x4``, ``cifar_resnet32x4``: stem 32 channels, stage widths 64 / 128 / 256
  (``num_filters = [32, 64, 128, 256]``).

Parameter names match RepDistiller's (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample}``, ``fc``), so its published CIFAR-100 teacher checkpoints
load with ``model.load_state_dict(ckpt["model"])``. The names are prefixed ``cifar_`` so they do not clash
with timm's ImageNet ``resnet*``. Default config: 32x32 RGB, CIFAR-100 mean / std, 100 classes.

Feature taps (``feature_info`` / ``forward_intermediates``), as timm's ResNet: index 0 is the stem (after its
ReLU, reduction 1), indices 1-3 the three stages (reductions 1, 2, 4); these are RepDistiller's ``f0``-``f3``
(post-ReLU).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Type

import torch
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ._base import CIFAR100_MEAN, CIFAR100_STD  # noqa: F401  (re-exported)
from ._base import StagedNet, cifar_cfg, create_lkd_model, register_variants

__all__ = ["CifarResNet", "CifarBasicBlock"]


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus (projection) shortcut, then ReLU.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first conv.
        downsample: the projection shortcut (``None``: identity).
        act_layer / norm_layer: activation and normalisation layers.
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
    """

    expansion = 1

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(planes, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(planes, **dd)
        self.downsample = downsample
        self.act2 = act_layer(inplace=True)

    def zero_init_last(self) -> None:
        if getattr(self.bn2, "weight", None) is not None:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus shortcut, then the activation.

        Args:
            x: input feature map ``(B, inplanes, H, W)``.
        """
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act2(x)
        return x


class CifarResNet(StagedNet):
    """CIFAR ResNet (RepDistiller's ``ResNet`` with BasicBlocks).

    Args:
        depth: network depth, ``6n + 2`` (``n`` BasicBlocks per stage).
        num_filters: stem width followed by the three stage widths, e.g. ``(16, 16, 32, 64)``.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        drop_rate: dropout before the classifier (0 in the reference models).
        global_pool: timm global pooling type ('avg', 'max', 'avgmax', 'catavgmax', '' for none).
        zero_init_last: zero-init the last BN of each residual branch (off in the reference models).
        act_layer / norm_layer: activation and normalisation layers.
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
    """

    stage_names = ("layer1", "layer2", "layer3")

    def __init__(
            self,
            depth: int = 56,
            num_filters: Sequence[int] = (16, 16, 32, 64),
            num_classes: int = 100,
            in_chans: int = 3,
            drop_rate: float = 0.0,
            global_pool: str = "avg",
            zero_init_last: bool = False,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        dd = {"device": device, "dtype": dtype}
        assert (depth - 2) % 6 == 0 and depth >= 8, "depth should be 6n+2 (e.g. 8, 20, 32, 44, 56, 110)"
        assert len(num_filters) == 4, "num_filters is (stem, stage1, stage2, stage3)"
        n = (depth - 2) // 6
        block = CifarBasicBlock

        # Stem
        self.conv1 = nn.Conv2d(in_chans, num_filters[0], kernel_size=3, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(num_filters[0], **dd)
        self.act1 = act_layer(inplace=True)
        self.feature_info = [dict(num_chs=num_filters[0], reduction=1, module="act1")]

        # Stages
        inplanes = num_filters[0]
        reduction = 1
        for i, (planes, stride) in enumerate(zip(num_filters[1:], (1, 2, 2))):
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(
                        inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False, **dd,
                    ),
                    norm_layer(planes * block.expansion, **dd),
                )
            blocks = [
                block(inplanes, planes, stride, downsample, act_layer=act_layer, norm_layer=norm_layer, **dd),
            ]
            inplanes = planes * block.expansion
            blocks += [
                block(inplanes, planes, act_layer=act_layer, norm_layer=norm_layer, **dd) for _ in range(1, n)
            ]
            reduction *= stride
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=inplanes, reduction=reduction, module=f"layer{i + 1}"))

        # Head (pooling and classifier)
        self.num_features = inplanes
        self._create_head(global_pool, **dd)

        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        """RepDistiller's init: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0, default linear.

        Args:
            zero_init_last: also zero the last BN weight of each residual branch.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        """Parameter groups for timm's layer-wise optimizer settings (regexes over parameter names).

        Args:
            coarse: one group per stage instead of one per block.
        """
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn gradient checkpointing of the stages on or off.

        Args:
            enable: checkpoint (recompute in the backward pass) instead of storing activations.
        """
        self.grad_checkpointing = enable

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        return x

    def _forward_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def _prune_stages(self, num_keep: int) -> None:
        for n in self.stage_names[num_keep:]:
            # empty, not Identity, so (flattened) checkpoint_seq can iterate it
            setattr(self, n, nn.Sequential())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map (before pooling and the classifier).

        Args:
            x: input images ``(B, in_chans, H, W)``.
        """
        x = self._forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
        return x


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return create_lkd_model(
        CifarResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs,
    )


_NARROW = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

default_cfgs = register_variants(
    globals(),
    _create_cifar_resnet,
    cifar_cfg(paper_ids="arXiv:1512.03385,arXiv:1910.10699"),
    {
        "cifar_resnet8": (dict(depth=8, num_filters=_NARROW), "CIFAR ResNet-8 (widths 16/32/64)."),
        "cifar_resnet14": (dict(depth=14, num_filters=_NARROW), "CIFAR ResNet-14 (widths 16/32/64)."),
        "cifar_resnet20": (dict(depth=20, num_filters=_NARROW), "CIFAR ResNet-20 (widths 16/32/64)."),
        "cifar_resnet32": (dict(depth=32, num_filters=_NARROW), "CIFAR ResNet-32 (widths 16/32/64)."),
        "cifar_resnet44": (dict(depth=44, num_filters=_NARROW), "CIFAR ResNet-44 (widths 16/32/64)."),
        "cifar_resnet56": (
            dict(depth=56, num_filters=_NARROW),
            "CIFAR ResNet-56 (widths 16/32/64), ~0.86M parameters at 100 classes.",
        ),
        "cifar_resnet110": (
            dict(depth=110, num_filters=_NARROW),
            "CIFAR ResNet-110 (widths 16/32/64), ~1.73M parameters at 100 classes.",
        ),
        "cifar_resnet8x4": (
            dict(depth=8, num_filters=_X4),
            "CIFAR ResNet-8x4 (stem 32, widths 64/128/256), ~1.23M parameters at 100 classes.",
        ),
        "cifar_resnet32x4": (
            dict(depth=32, num_filters=_X4),
            "CIFAR ResNet-32x4 (stem 32, widths 64/128/256), ~7.43M parameters at 100 classes.",
        ),
    },
)
