"""Name -> builder registry for the model zoo (timm / torchvision style).

Builders are plain functions registered under their own ``__name__`` so that a
config file or CLI can say ``model: cifar_resnet56`` and get the network back
from :func:`create_model` without importing the family module itself.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from torch import nn

_F = TypeVar("_F", bound=Callable[..., nn.Module])

# Filled at import time by the @register_model decorators in the family modules
# (jointprune/models/__init__.py imports every family so this is populated).
_MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: _F) -> _F:
    """Register ``fn`` as a model builder under ``fn.__name__`` and return it unchanged."""
    name = fn.__name__
    if name in _MODEL_REGISTRY and _MODEL_REGISTRY[name] is not fn:
        # Two builders silently shadowing each other would make configs ambiguous.
        raise ValueError(f"Model name '{name}' is already registered by another builder.")
    _MODEL_REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Return every registered model name, sorted."""
    return sorted(_MODEL_REGISTRY)


def is_model(name: str) -> bool:
    """Return True when ``name`` is a registered model name."""
    return name in _MODEL_REGISTRY


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` go to its builder (keyword-only)."""
    if name not in _MODEL_REGISTRY:
        raise ValueError(f"Unknown model '{name}'; choose one of: {', '.join(list_models())}.")
    return _MODEL_REGISTRY[name](**kwargs)


def check_no_weights(weights: Any) -> None:
    """Shared guard for builders: this project trains from scratch and never downloads weights."""
    if weights is not None:
        raise ValueError(
            f"Pretrained weights cannot be downloaded in this project (got weights={weights!r}); "
            "pass weights=None and train from scratch."
        )
