"""Wide ResNets for CIFAR (as in CRD / RepDistiller's ``models/wrn.py``), registered in timm.

``WideResNet(depth, widen_factor)``: a 3x3 stem conv (16 channels), three stages of ``(depth - 4) / 6``
pre-activation BasicBlocks of widths ``16k / 32k / 64k`` at strides 1, 2, 2, a final BN-ReLU, global average
pooling and a linear classifier. Registered: ``cifar_wrn_40_2``, ``cifar_wrn_40_1``, ``cifar_wrn_16_2``,
``cifar_wrn_16_1`` (32x32 RGB, CIFAR-100 mean / std, 100 classes).

Parameter names match RepDistiller's (``conv1``,
``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``), so its published CIFAR-100
checkpoints load with ``model.load_state_dict(ckpt["model"])``.

Feature taps follow timm's pre-activation-network convention (timm's ResNetV2): index 0 is the stem conv
output (reduction 1), indices 1-3 the raw (pre-activation) stage outputs (reductions 1, 2, 4); the final
BN-ReLU is part of ``forward_features`` and is applied to the last tap only with ``forward_intermediates(...,
norm=True)``. The taps equal CRD's ``forward(x, is_feat=True)`` features ``f0``-``f3``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from timm.layers import create_classifier, get_device_dtype
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from .cifar_resnet import CIFAR100_MEAN, CIFAR100_STD
from .convnet import create_lkd_model

__all__ = ["WideResNet", "WideBasicBlock", "NetworkBlock"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus (1x1 projection) shortcut.

    When the channel count changes, the pre-activation is shared with the 1x1 projection shortcut (as in CRD).
    """

    def __init__(
            self,
            in_planes: int,
            out_planes: int,
            stride: int = 1,
            drop_rate: float = 0.0,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.bn1 = norm_layer(in_planes, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv1 = nn.Conv2d(
            in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False, **dd,
        )
        self.bn2 = norm_layer(out_planes, **dd)
        self.act2 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False, **dd,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        if not self.equal_in_out:
            x = out  # the projection shortcut sees the pre-activated input
        out = self.act2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(x)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` :class:`WideBasicBlock` (the first one may downsample / widen)."""

    def __init__(
            self,
            nb_layers: int,
            in_planes: int,
            out_planes: int,
            stride: int,
            drop_rate: float = 0.0,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        self.layer = nn.Sequential(*[
            WideBasicBlock(
                in_planes if i == 0 else out_planes,
                out_planes,
                stride if i == 0 else 1,
                drop_rate,
                act_layer=act_layer,
                norm_layer=norm_layer,
                **dd,
            )
            for i in range(int(nb_layers))
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.layer, x)
        return self.layer(x)


class WideResNet(nn.Module):
    """Wide ResNet WRN-depth-k for CIFAR (CRD / RepDistiller).

    Args:
        depth: network depth, ``6n + 4`` (``n`` blocks per stage), e.g. 16, 28, 40.
        widen_factor: width multiplier ``k`` of the stage widths 16k / 32k / 64k.
        num_classes: classifier outputs (0 for no classifier).
        in_chans: input image channels.
        drop_rate: dropout before the classifier (timm convention; 0 in the reference models).
        block_drop_rate: dropout between the two convs of each block (CRD's ``dropRate``, 0 by default).
        global_pool: timm global pooling type ('avg', 'max', 'avgmax', 'catavgmax', '' for none).
        act_layer / norm_layer: activation and normalisation layers.
    """

    def __init__(
            self,
            depth: int = 40,
            widen_factor: int = 2,
            num_classes: int = 100,
            in_chans: int = 3,
            drop_rate: float = 0.0,
            block_drop_rate: float = 0.0,
            global_pool: str = "avg",
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        assert (depth - 4) % 6 == 0 and depth >= 10, "depth should be 6n+4 (e.g. 16, 28, 40)"
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        # Stem
        self.conv1 = nn.Conv2d(in_chans, channels[0], kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module="conv1")]

        # Stages
        reduction = 1
        for i, stride in enumerate((1, 2, 2)):
            reduction *= stride
            self.add_module(f"block{i + 1}", NetworkBlock(
                n, channels[i], channels[i + 1], stride, block_drop_rate,
                act_layer=act_layer, norm_layer=norm_layer, **dd,
            ))
            self.feature_info.append(
                dict(num_chs=channels[i + 1], reduction=reduction, module=f"block{i + 1}"),
            )

        # Final pre-activation norm (part of forward_features), named as in CRD
        self.bn1 = norm_layer(channels[3], **dd)
        self.act = act_layer(inplace=True)

        # Head (pooling and classifier)
        self.num_features = channels[3]
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, **dd,
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """CRD's init: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0, linear bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(x))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^conv1",
            blocks=r"^block(\d+)" if coarse else [(r"^block(\d+)\.layer\.(\d+)", None), (r"^bn1", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for n in ("block1", "block2", "block3"):
            block = getattr(self, n)
            if isinstance(block, NetworkBlock):
                block.grad_checkpointing = enable

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
            norm: Apply the final BN-ReLU to the last stage's intermediate (if taken).
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
        if feat_idx in take_indices:
            intermediates.append(x)

        last_idx = len(self.feature_info) - 1
        stages = [self.block1, self.block2, self.block3]
        if stop_early:
            stages = stages[:max_index]
        x_norm: Optional[torch.Tensor] = None
        for feat_idx, stage in enumerate(stages, start=1):
            x = stage(x)
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
            prune_norm: Whether to prune the final BN-ReLU.
            prune_head: Whether to prune the classifier head.

        Returns:
            List of indices that were kept.
        """
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        prune_end = max_index < len(self.feature_info) - 1
        if prune_norm or prune_end:
            # the final norm is sized for (and only applied to) the last stage
            self.bn1 = nn.Identity()
            self.act = nn.Identity()
        for n in ("block1", "block2", "block3")[max_index:]:
            setattr(self, n, nn.Identity())
        if prune_end:
            # features now end at the last kept tap, the head is sized for the final features so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        x = self._final_norm(x)
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


def _create_wrn(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    return create_lkd_model(
        WideResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs,
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
        "paper_ids": "arXiv:1605.07146,arXiv:1910.10699",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    name: _cfg() for name in ("cifar_wrn_40_2", "cifar_wrn_40_1", "cifar_wrn_16_2", "cifar_wrn_16_1")
})


def _make(
        variant: str, depth: int, widen_factor: int, pretrained: bool, kwargs: Dict[str, Any],
) -> WideResNet:
    return _create_wrn(variant, pretrained, **dict(dict(depth=depth, widen_factor=widen_factor), **kwargs))


@register_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-40-2 for CIFAR, ~2.25M parameters at 100 classes."""
    return _make("cifar_wrn_40_2", 40, 2, pretrained, kwargs)


@register_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-40-1 for CIFAR, ~0.57M parameters at 100 classes."""
    return _make("cifar_wrn_40_1", 40, 1, pretrained, kwargs)


@register_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-2 for CIFAR, ~0.70M parameters at 100 classes."""
    return _make("cifar_wrn_16_2", 16, 2, pretrained, kwargs)


@register_model
def cifar_wrn_16_1(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-1 for CIFAR, ~0.18M parameters at 100 classes."""
    return _make("cifar_wrn_16_1", 16, 1, pretrained, kwargs)
