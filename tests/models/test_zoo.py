"""Tests for the model zoo and its registry (CPU, tiny inputs, a few seconds in all)."""
from __future__ import annotations

import jsonargparse
import pytest
import torch
import torch_pruning as tp
from torch import nn

from jointprune.models import (
    CifarResNet,
    MobileNetV1,
    MobileNetV2,
    TorchvisionModel,
    create_model,
    is_model,
    list_models,
)

NUM_CLASSES = 7
# Thinner MobileNets keep the parametrized tests fast on 2 CPU cores; the block
# structure (what torch-pruning has to trace) does not depend on the width.
SMALL_KWARGS: dict[str, dict] = {
    name: {"width_mult": 0.35}
    for name in ["cifar_mobilenet_v1", "cifar_mobilenet_v2", "mobilenet_v1", "mobilenet_v2", "tv_mobilenet_v2"]
}


def _input(name: str, in_channels: int = 3) -> torch.Tensor:
    # CIFAR-stem models get 32x32; ImageNet-stem models downsample 32x, so 64x64
    # keeps a 2x2 map before pooling (BatchNorm in train mode needs >1 value per channel).
    size = 32 if name.startswith("cifar_") else 64
    return torch.randn(2, in_channels, size, size)


def _classifier(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_registry_lists_all_families() -> None:
    assert list_models() == sorted(list_models())
    for name in ["cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_resnet110",
                 "cifar_mobilenet_v1", "cifar_mobilenet_v2", "mobilenet_v1", "mobilenet_v2",
                 "tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_mobilenet_v2"]:
        assert is_model(name), name
    assert not is_model("resnet57")


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_dependency_graph(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES, **SMALL_KWARGS.get(name, {}))
    x = _input(name)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"

    # The pruning engine must be able to trace the model and find prunable groups.
    model.zero_grad(set_to_none=True)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    groups = list(dg.get_all_groups(ignored_layers=[_classifier(model)]))
    assert groups, f"{name}: torch-pruning found no prunable groups"


@pytest.mark.parametrize(
    "model, size",
    [
        (CifarResNet(depth=20, num_classes=NUM_CLASSES), 32),  # option-B shortcuts across stages
        (MobileNetV1(num_classes=NUM_CLASSES, width_mult=0.5, stem="cifar"), 32),  # depthwise convs
        (MobileNetV2(num_classes=NUM_CLASSES, width_mult=0.5, stem="cifar"), 32),  # inverted residuals
        (TorchvisionModel("resnet18", num_classes=NUM_CLASSES), 64),  # wrapped module
    ],
    ids=["cifar_resnet20", "cifar_mobilenet_v1", "cifar_mobilenet_v2", "TorchvisionModel"],
)
def test_channel_pruning_end_to_end(model: nn.Module, size: int) -> None:
    # Beyond building the graph: actually remove channels and check the net still runs.
    x = torch.randn(2, 3, size, size)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.25, ignored_layers=[_classifier(model)],
    )
    pruner.step()
    assert sum(p.numel() for p in model.parameters()) < before
    assert model(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
def test_in_channels_1(name: str) -> None:
    model = create_model(name, num_classes=NUM_CLASSES, in_channels=1, **SMALL_KWARGS.get(name, {})).eval()
    with torch.no_grad():
        assert model(_input(name, in_channels=1)).shape == (2, NUM_CLASSES)


def test_unknown_name_error_lists_choices() -> None:
    with pytest.raises(ValueError) as exc:
        create_model("resnet57")
    msg = str(exc.value)
    assert msg.startswith("Unknown model 'resnet57'; choose one of: ")
    assert all(name in msg for name in list_models())
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["cifar_resnet20", "mobilenet_v2", "tv_resnet18"])
@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "DEFAULT", True])
def test_non_none_weights_rejected(name: str, weights: object) -> None:
    with pytest.raises(ValueError, match="cannot be downloaded"):
        create_model(name, weights=weights)


@pytest.mark.parametrize("depth", [0, 8 + 1, 57])
def test_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"depth must be 6n\+2.*got {depth}\."):
        CifarResNet(depth=depth)


def test_bad_stem_and_torchvision_name() -> None:
    with pytest.raises(ValueError, match="Unknown stem 'tiny'"):
        MobileNetV2(stem="tiny")
    with pytest.raises(ValueError, match="Unknown torchvision model 'vgg11'"):
        TorchvisionModel("vgg11")


def test_cifar_resnet56_param_count() -> None:
    n = sum(p.numel() for p in create_model("cifar_resnet56").parameters())
    # Paper (option A) ResNet-56 is 853,018 params; option B adds two 1x1 conv+BN
    # projections (16->32: 512+64, 32->64: 2048+128) = 2,752 -> 855,770.
    assert n == 855_770


def test_builders_are_keyword_only() -> None:
    from jointprune.models.cifar_resnet import cifar_resnet56
    from jointprune.models.mobilenet_v2 import cifar_mobilenet_v2

    with pytest.raises(TypeError):
        cifar_resnet56(10)  # type: ignore[misc]
    with pytest.raises(TypeError):
        cifar_mobilenet_v2(10, 3)  # type: ignore[misc]


def test_mobilenet_spatial_sizes() -> None:
    # CIFAR stems must keep enough resolution on 32x32 inputs: V2 ends at 4x4, V1 at 2x2.
    x = torch.randn(1, 3, 32, 32)
    assert MobileNetV2(stem="cifar", width_mult=0.35).features(x).shape[-2:] == (4, 4)
    assert MobileNetV1(stem="cifar", width_mult=0.25).features(x).shape[-2:] == (2, 2)
    assert MobileNetV2(stem="imagenet", width_mult=0.35).features(torch.randn(1, 3, 224, 224)).shape[-2:] == (7, 7)


@pytest.mark.parametrize(
    "class_path, init_args",
    [
        ("jointprune.models.CifarResNet", {"depth": 20}),
        ("jointprune.models.MobileNetV1", {"width_mult": 0.25, "stem": "cifar"}),
        ("jointprune.models.MobileNetV2", {"width_mult": 0.35, "stem": "cifar"}),
        ("jointprune.models.TorchvisionModel", {"name": "resnet18"}),
    ],
)
def test_jsonargparse_class_path(class_path: str, init_args: dict) -> None:
    # Every class takes num_classes plus plain typed args, so a CLI can build it from config.
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--model", type=nn.Module)
    cfg = parser.parse_object({"model": {"class_path": class_path,
                                         "init_args": {**init_args, "num_classes": NUM_CLASSES}}})
    model = parser.instantiate_classes(cfg).model
    assert _classifier(model).out_features == NUM_CLASSES
