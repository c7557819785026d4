"""Adapters around torchvision's architectures (random init only, never downloads)."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torchvision.models as tvm
from torch import nn

from .registry import check_no_weights, register_model

_TV_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "mobilenet_v2": tvm.mobilenet_v2,
}


def build_torchvision(name: str, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build torchvision's ``name`` with ``weights=None``; swap the first conv when in_channels != 3."""
    if name not in _TV_BUILDERS:
        raise ValueError(f"Unknown torchvision model '{name}'; choose one of: {', '.join(_TV_BUILDERS)}.")
    model = _TV_BUILDERS[name](weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    # The first Conv2d in module order is the stem for every architecture above
    # (resnet: conv1, mobilenet_v2: features[0][0]); keep all its hyper-parameters.
    name, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
        old.dilation, old.groups, old.bias is not None, old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's own init
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


class TorchvisionModel(nn.Module):
    """A torchvision architecture as a class with plain typed arguments, so configs can
    use ``class_path: jointprune.models.TorchvisionModel`` + ``init_args``.

    The network lives in ``self.net`` (state_dict keys get a ``net.`` prefix compared to
    the ``tv_*`` builders, which return the bare torchvision module).
    """

    def __init__(self, name: str = "resnet18", num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.net = build_torchvision(name, num_classes=num_classes, in_channels=in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _tv(name: str, num_classes: int, in_channels: int, weights: object, **kwargs: Any) -> nn.Module:
    check_no_weights(weights)
    return build_torchvision(name, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def tv_resnet18(*, num_classes: int = 1000, in_channels: int = 3, weights: object = None, **kwargs: Any) -> nn.Module:
    return _tv("resnet18", num_classes, in_channels, weights, **kwargs)


@register_model
def tv_resnet34(*, num_classes: int = 1000, in_channels: int = 3, weights: object = None, **kwargs: Any) -> nn.Module:
    return _tv("resnet34", num_classes, in_channels, weights, **kwargs)


@register_model
def tv_resnet50(*, num_classes: int = 1000, in_channels: int = 3, weights: object = None, **kwargs: Any) -> nn.Module:
    return _tv("resnet50", num_classes, in_channels, weights, **kwargs)


@register_model
def tv_mobilenet_v2(*, num_classes: int = 1000, in_channels: int = 3, weights: object = None, **kwargs: Any) -> nn.Module:
    """kwargs (e.g. ``width_mult``) go to torchvision.models.mobilenet_v2."""
    return _tv("mobilenet_v2", num_classes, in_channels, weights, **kwargs)
