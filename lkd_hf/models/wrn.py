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

from typing import Any, Dict, Type

import torch
import torch.nn.functional as F
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ._base import StagedNet, cifar_cfg, create_lkd_model, register_variants

__all__ = ["WideResNet", "WideBasicBlock", "NetworkBlock"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus (1x1 projection) shortcut.

    When the channel count changes, the pre-activation is shared with the 1x1 projection shortcut (as in CRD).

    Args:
        in_planes: input channels.
        out_planes: output channels (a 1x1 projection shortcut when they differ from ``in_planes``).
        stride: stride of the first conv (and of the shortcut).
        drop_rate: dropout between the two convs.
        act_layer / norm_layer: activation and normalisation layers.
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
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
        """Residual branch plus shortcut.

        Args:
            x: input feature map ``(B, in_planes, H, W)``.
        """
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
    """A stage of ``nb_layers`` :class:`WideBasicBlock` (the first one may downsample / widen).

    Args:
        nb_layers: number of blocks.
        in_planes: input channels.
        out_planes: output channels of every block.
        stride: stride of the first block.
        drop_rate: dropout between the two convs of each block.
        act_layer / norm_layer: activation and normalisation layers.
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
    """

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
        """The blocks, in order.

        Args:
            x: input feature map ``(B, in_planes, H, W)``.
        """
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.layer, x)
        return self.layer(x)


class WideResNet(StagedNet):
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
        device / dtype: device and dtype of the parameters (``None``: PyTorch's defaults).
    """

    stage_names = ("block1", "block2", "block3")

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
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        dd = {"device": device, "dtype": dtype}
        assert (depth - 4) % 6 == 0 and depth >= 10, "depth should be 6n+4 (e.g. 16, 28, 40)"
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

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
        self._create_head(global_pool, **dd)

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
        """Parameter groups for timm's layer-wise optimizer settings (regexes over parameter names).

        Args:
            coarse: one group per stage instead of one per block.
        """
        return dict(
            stem=r"^conv1",
            blocks=r"^block(\d+)" if coarse else [(r"^block(\d+)\.layer\.(\d+)", None), (r"^bn1", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn gradient checkpointing of the stages on or off.

        Args:
            enable: checkpoint (recompute in the backward pass) instead of storing activations.
        """
        self.grad_checkpointing = enable
        for block in self._stages():
            if isinstance(block, NetworkBlock):
                block.grad_checkpointing = enable

    def _forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def _prune_final_norm(self) -> None:
        self.bn1 = nn.Identity()
        self.act = nn.Identity()

    def _prune_stages(self, num_keep: int) -> None:
        for n in self.stage_names[num_keep:]:
            setattr(self, n, nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map after the last BN-ReLU (before pooling and the classifier).

        Args:
            x: input images ``(B, in_chans, H, W)``.
        """
        x = self.conv1(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        x = self._final_norm(x)
        return x


def _create_wrn(variant: str, pretrained: bool = False, **kwargs: Any) -> WideResNet:
    return create_lkd_model(
        WideResNet, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs,
    )


default_cfgs = register_variants(
    globals(),
    _create_wrn,
    cifar_cfg(paper_ids="arXiv:1605.07146,arXiv:1910.10699"),
    {
        "cifar_wrn_40_2": (
            dict(depth=40, widen_factor=2),
            "WRN-40-2 for CIFAR, ~2.25M parameters at 100 classes.",
        ),
        "cifar_wrn_40_1": (
            dict(depth=40, widen_factor=1),
            "WRN-40-1 for CIFAR, ~0.57M parameters at 100 classes.",
        ),
        "cifar_wrn_16_2": (
            dict(depth=16, widen_factor=2),
            "WRN-16-2 for CIFAR, ~0.70M parameters at 100 classes.",
        ),
        "cifar_wrn_16_1": (
            dict(depth=16, widen_factor=1),
            "WRN-16-1 for CIFAR, ~0.18M parameters at 100 classes.",
        ),
    },
)
