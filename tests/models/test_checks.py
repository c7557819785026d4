"""Checks on the user's network before the first epoch: one sentence each."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm

from jointprune.models import create_model
from jointprune.models.checks import NetworkError, check_exportable, check_outputs



class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

    def forward(self, x):
        features = self.conv(x).mean((2, 3))
        return self.fc(features), features


class ControlFlowNet(TupleNet):
    def forward(self, x):
        out = self.fc(self.conv(x).mean((2, 3)))
        return out * 2 if out.sum() > 0 else out


class MapNet(nn.Module):
    """Forgets to pool and flatten: returns a 4-D map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return self.conv(x)


def test_good_network_passes_and_keeps_its_state():
    model = create_model("cifar_resnet20", num_classes=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert check_outputs(model, (3, 32, 32), 4) == 4
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("model, shape, classes, match", [
    (TupleNet(), (3, 8, 8), None, r"^model.cnn returns a tuple in training mode, not a logits tensor of shape "
                                   r"\(batch, classes\); make forward return only the logits"),
    (tvm.googlenet(weights=None, num_classes=3, init_weights=False), (3, 32, 32), None,
     r"returns a GoogLeNetOutputs in training mode.*pass aux_logits: false"),
    (MapNet(), (3, 8, 8), None, r"returns a tensor of shape \(2, 3, 6, 6\) for a batch of 2 images"),
    (tvm.alexnet(num_classes=3), (3, 16, 16), None,
     r"^model.cnn cannot take inputs of shape \(3, 16, 16\) \(the data's input_shape\).*Output size is too small"),
    (TupleNet(), (3, 8, 8), 1, r"^the data has 1 class; classification needs at least 2 classes"),
    (create_model("cifar_resnet20", num_classes=10), (3, 32, 32), 5,
     r"^model.cnn outputs 10 classes but the data has 5; set model.cnn.init_args.num_classes: 5\.$"),
], ids=["tuple", "googlenet-aux", "4d-map", "too-small", "one-class", "num-classes"])
def test_wrong_networks_are_one_sentence(model, shape, classes, match):
    with pytest.raises(NetworkError, match=match) as err:
        check_outputs(model, shape, classes)
    assert "\n" not in str(err.value) and str(err.value).endswith(".")


def test_forward_that_export_cannot_capture_is_one_sentence():
    with pytest.raises(NetworkError, match=r"^torch.export cannot capture model.cnn's forward") as err:
        check_exportable(ControlFlowNet(), (3, 8, 8))
    assert "\n" not in str(err.value) and "check_at_start: false" in str(err.value)


def test_export_check_returns_its_capture_in_the_mode_it_found():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).train()
    program = check_exportable(model, (3, 8, 8))
    assert isinstance(program, torch.export.ExportedProgram) and model.training  # the export reuses it
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(program.module()(x), model.eval()(x))  # eval mode, any batch size
