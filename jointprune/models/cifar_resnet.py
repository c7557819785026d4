"""CIFAR ResNet-20/32/56/110 (He et al. 2016, section 4.2).

Three stages of ``width``/2x/4x channels (16/32/64 by default) with
n = (depth - 2) / 6 BasicBlocks each, a 3x3 conv stem, global average pooling
and a linear classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import check_no_weights, register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Separate ReLU modules (not inplace, not functional) keep the graph simple
        # for torch-pruning's tracer.
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        # Option B shortcut: a 1x1 conv + BN projection when the shape changes,
        # identity otherwise. The paper's option A (stride-2 subsampling plus
        # zero-padding the channels via a lambda / F.pad) changes the channel count
        # with a functional op that torch-pruning's DependencyGraph cannot follow,
        # so pruning the residual channels would break the add. Option B costs
        # ~2.8k extra parameters on ResNet-56.
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place add: an in-place `+=` on a tensor autograd/tracing still needs is fragile.
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs; ``depth`` must be 6n+2 (20, 32, 44, 56, 110, ...)."""

    def __init__(self, depth: int = 56, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n+2 with n >= 1 (e.g. 20, 32, 56, 110), got {depth}.")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(width, width, n, stride=1)
        self.layer2 = self._make_stage(width, 2 * width, n, stride=2)
        self.layer3 = self._make_stage(2 * width, 4 * width, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        _init_weights(self)

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    # Kaiming (He) init as in the paper: the net is trained from scratch, so init matters.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _build(depth: int, num_classes: int, in_channels: int, weights: object, **kwargs: object) -> CifarResNet:
    check_no_weights(weights)
    return CifarResNet(depth=depth, num_classes=num_classes, in_channels=in_channels, **kwargs)  # type: ignore[arg-type]


@register_model
def cifar_resnet20(*, num_classes: int = 10, in_channels: int = 3, weights: object = None, **kwargs: object) -> CifarResNet:
    return _build(20, num_classes, in_channels, weights, **kwargs)


@register_model
def cifar_resnet32(*, num_classes: int = 10, in_channels: int = 3, weights: object = None, **kwargs: object) -> CifarResNet:
    return _build(32, num_classes, in_channels, weights, **kwargs)


@register_model
def cifar_resnet56(*, num_classes: int = 10, in_channels: int = 3, weights: object = None, **kwargs: object) -> CifarResNet:
    return _build(56, num_classes, in_channels, weights, **kwargs)


@register_model
def cifar_resnet110(*, num_classes: int = 10, in_channels: int = 3, weights: object = None, **kwargs: object) -> CifarResNet:
    return _build(110, num_classes, in_channels, weights, **kwargs)
