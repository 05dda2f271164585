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

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from timm.layers import create_classifier, get_device_dtype
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from .convnet import create_lkd_model

__all__ = ["CifarResNet", "CifarBasicBlock"]

# Normalisation used by RepDistiller / CRD / DKD for CIFAR-100.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus (projection) shortcut, then ReLU."""

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


class CifarResNet(nn.Module):
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
    """

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
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        assert (depth - 2) % 6 == 0 and depth >= 8, "depth should be 6n+2 (e.g. 8, 20, 32, 44, 56, 110)"
        assert len(num_filters) == 4, "num_filters is (stem, stage1, stage2, stage3)"
        n = (depth - 2) // 6
        block = CifarBasicBlock
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

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
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **dd,
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        """RepDistiller's init: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0, default linear."""
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
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

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
        """Forward features that returns intermediates (stem + three stages, see ``feature_info``).

        Args:
            x: Input image tensor.
            indices: Take last n blocks if int, all if None, select matching indices if sequence.
            norm: Unused (no final norm layer), for API compatibility.
            stop_early: Stop iterating over blocks when last desired intermediate hit.
            output_fmt: Shape of intermediate feature outputs (only 'NCHW').
            intermediates_only: Only return intermediate features.

        Returns:
            Features and list of intermediate features or just intermediate features.
        """
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)

        # forward pass
        feat_idx = 0
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        if feat_idx in take_indices:
            intermediates.append(x)

        layer_names = ("layer1", "layer2", "layer3")
        if stop_early:
            layer_names = layer_names[:max_index]
        for n in layer_names:
            feat_idx += 1
            layer = getattr(self, n)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(layer, x)
            else:
                x = layer(x)
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
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        prune_end = max_index < len(self.feature_info) - 1
        for n in ("layer1", "layer2", "layer3")[max_index:]:
            # empty, not Identity, so (flattened) checkpoint_seq can iterate it
            setattr(self, n, nn.Sequential())
        if prune_end:
            # features now end at the last kept tap, the head is sized for the final features so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
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


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return create_lkd_model(
        CifarResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "origin_url": "https://github.com/HobbitLong/RepDistiller",
        "paper_ids": "arXiv:1512.03385,arXiv:1910.10699",
        **kwargs,
    }


_NARROW = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

default_cfgs = generate_default_cfgs({
    name: _cfg()
    for name in (
        "cifar_resnet8", "cifar_resnet14", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
        "cifar_resnet56", "cifar_resnet110", "cifar_resnet8x4", "cifar_resnet32x4",
    )
})


def _make(variant: str, depth: int, num_filters: Tuple[int, ...], pretrained: bool, kwargs: Dict[str, Any]):
    model_args = dict(depth=depth, num_filters=num_filters)
    return _create_cifar_resnet(variant, pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8 (widths 16/32/64)."""
    return _make("cifar_resnet8", 8, _NARROW, pretrained, kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-14 (widths 16/32/64)."""
    return _make("cifar_resnet14", 14, _NARROW, pretrained, kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20 (widths 16/32/64)."""
    return _make("cifar_resnet20", 20, _NARROW, pretrained, kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32 (widths 16/32/64)."""
    return _make("cifar_resnet32", 32, _NARROW, pretrained, kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-44 (widths 16/32/64)."""
    return _make("cifar_resnet44", 44, _NARROW, pretrained, kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56 (widths 16/32/64), ~0.86M parameters at 100 classes."""
    return _make("cifar_resnet56", 56, _NARROW, pretrained, kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110 (widths 16/32/64), ~1.73M parameters at 100 classes."""
    return _make("cifar_resnet110", 110, _NARROW, pretrained, kwargs)


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8x4 (stem 32, widths 64/128/256), ~1.23M parameters at 100 classes."""
    return _make("cifar_resnet8x4", 8, _X4, pretrained, kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32x4 (stem 32, widths 64/128/256), ~7.43M parameters at 100 classes."""
    return _make("cifar_resnet32x4", 32, _X4, pretrained, kwargs)
