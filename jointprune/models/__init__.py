"""Model zoo: every family module is imported here so its @register_model builders
are in the registry as soon as ``jointprune.models`` is imported."""
from .cifar_resnet import CifarResNet
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .registry import create_model, is_model, list_models, register_model
from .torchvision_models import TorchvisionModel
from .registry import _MODEL_REGISTRY

# Every zoo builder is importable as `jointprune.models.<name>`, so a config (or the CLI's
# `--model.cnn <name>`) can name it like any builder function.
globals().update(_MODEL_REGISTRY)

__all__ = [
    "CifarResNet",
    "MobileNetV1",
    "MobileNetV2",
    "TorchvisionModel",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    *_MODEL_REGISTRY,
]
