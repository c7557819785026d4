"""MobileNetV2 (Sandler et al. 2018) with an ImageNet stem and a CIFAR (32x32) stem."""
from __future__ import annotations

import torch
from torch import nn

from .registry import check_no_weights, register_model

_STEMS = ("imagenet", "cifar")

# (expansion t, output channels c, repeats n, first stride s) from Table 2 of the paper.
_IMAGENET_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` without dropping more than 10%.

    Same rule as the reference TF / torchvision code: multiples of 8 map well to
    hardware, and the 10% guard keeps small width multipliers from collapsing layers.
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def check_stem(stem: str) -> None:
    if stem not in _STEMS:
        raise ValueError(f"Unknown stem '{stem}'; choose one of: {', '.join(_STEMS)}.")


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(),  # not inplace: keeps torch-pruning tracing and autograd straightforward
        )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            # Linear bottleneck: no activation after the projection (paper, section 3.2).
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2; ``stem="cifar"`` uses stride 1 in the first conv and in the first
    strided stage (the usual CIFAR adaptation), so a 32x32 input ends at 4x4."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        stem: str = "imagenet",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_stem(stem)
        cifar = stem == "cifar"
        setting = [list(s) for s in _IMAGENET_SETTING]
        if cifar:
            setting[1][3] = 1  # 24-channel stage: stride 2 -> 1
        in_ch = _make_divisible(32 * width_mult)
        # The 1280-wide head is never shrunk below 1280 (as in the paper / torchvision).
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(in_channels, in_ch, stride=1 if cifar else 2)]
        for t, c, n, s in setting:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(ConvBNReLU6(in_ch, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _init_weights(model: nn.Module) -> None:
    # Kaiming init for convs (trained from scratch), small normal for the classifier.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_model
def mobilenet_v2(*, num_classes: int = 1000, in_channels: int = 3, weights: object = None, **kwargs: object) -> MobileNetV2:
    """Our MobileNetV2 with the ImageNet stem (224x224 -> 7x7)."""
    check_no_weights(weights)
    kwargs.setdefault("stem", "imagenet")
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]


@register_model
def cifar_mobilenet_v2(*, num_classes: int = 10, in_channels: int = 3, weights: object = None, **kwargs: object) -> MobileNetV2:
    """MobileNetV2 with the CIFAR stem (32x32 -> 4x4)."""
    check_no_weights(weights)
    kwargs.setdefault("stem", "cifar")
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]
