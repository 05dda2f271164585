"""timm models for distillation experiments; importing this package registers them in timm's model registry.

* :mod:`~lkd_hf.models.convnet`: small VGG-style CNNs for 28x28 grayscale images
  (``lkd_convnet_teacher``, ``lkd_convnet_s16``, ``lkd_convnet_s4``).
* :mod:`~lkd_hf.models.cifar_resnet`: CIFAR ResNets of the KD literature
  (``cifar_resnet{8,14,20,32,44,56,110}``, ``cifar_resnet8x4``, ``cifar_resnet32x4``).
* :mod:`~lkd_hf.models.wrn`: CIFAR Wide ResNets (``cifar_wrn_40_2``, ``cifar_wrn_40_1``, ``cifar_wrn_16_2``,
  ``cifar_wrn_16_1``).

Create them with ``timm.create_model(name, num_classes=..., in_chans=...)``.
"""

from . import cifar_resnet, convnet, wrn  # noqa: F401  (importing them registers their models in timm)
from ._base import create_lkd_model
from .cifar_resnet import CifarBasicBlock, CifarResNet
from .convnet import ConvNet
from .wrn import WideResNet

__all__ = ["ConvNet", "CifarResNet", "CifarBasicBlock", "WideResNet", "create_lkd_model"]
