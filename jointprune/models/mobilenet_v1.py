"""MobileNetV1 (Howard et al. 2017) with an ImageNet stem and a CIFAR (32x32) stem."""
from __future__ import annotations

import torch
from torch import nn

from .mobilenet_v2 import _make_divisible, check_stem
from .registry import check_no_weights, register_model

# (output channels, stride) of the 13 depthwise-separable blocks, Table 1 of the paper.
_BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),  # module, not inplace: simple for torch-pruning's tracer
    ]


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(
            *_conv_bn_relu(in_ch, in_ch, 3, stride, groups=in_ch),
            *_conv_bn_relu(in_ch, out_ch, 1, 1),
        )


class MobileNetV1(nn.Module):
    """MobileNetV1. ``stem="imagenet"``: stride-2 first conv as in the paper (32x down).
    ``stem="cifar"``: stride-1 first conv, so a 32x32 input goes through only the four
    block downsamplings and ends at 2x2 (the usual CIFAR adaptation)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        check_stem(stem)
        in_ch = _make_divisible(32 * width_mult)
        layers = _conv_bn_relu(in_channels, in_ch, 3, 1 if stem == "cifar" else 2)
        for c, s in _BLOCKS:
            out_ch = _make_divisible(c * width_mult)
            layers.append(DepthwiseSeparable(in_ch, out_ch, s))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # Kaiming init: trained from scratch
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def mobilenet_v1(*, num_classes: int = 1000, in_channels: int = 3, weights: object = None, **kwargs: object) -> MobileNetV1:
    """MobileNetV1 with the ImageNet stem (224x224 -> 7x7)."""
    check_no_weights(weights)
    kwargs.setdefault("stem", "imagenet")
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]


@register_model
def cifar_mobilenet_v1(*, num_classes: int = 10, in_channels: int = 3, weights: object = None, **kwargs: object) -> MobileNetV1:
    """MobileNetV1 with the CIFAR stem (32x32 -> 2x2)."""
    check_no_weights(weights)
    kwargs.setdefault("stem", "cifar")
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]
