"""The start-of-fit capture of the dense network is reused for the pruned network's program, and
a capture that does not reproduce the pruned network falls back to a fresh torch.export."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from jointprune.models.checks import check_exportable
from jointprune.pruning import load_pruned, load_report, save_pruned
from jointprune.pruning.capture import DenseCapture

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import calibrate_bn, one_thread  # noqa: E402,F401

SHAPE = (3, 8, 8)


class WidthNet(nn.Module):
    """The same class at two widths stands for a dense network and its pruned cut (same names)."""

    def __init__(self, width: int, shuffle: bool = False):
        super().__init__()
        self.shuffle = shuffle
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        pooled = self.body(x).mean((2, 3))
        if self.shuffle:  # a channel count baked into the graph: reshape(b, C // 2, -1) with C fixed at capture
            b, c = pooled.shape
            pooled = pooled.reshape(b, c // 2, -1).flip(1).reshape(b, c)
        return self.fc(pooled)


def report_for(net: nn.Module) -> dict:
    params = sum(p.numel() for p in net.parameters())
    return {"dense_flops": 100, "pruned_flops": 50, "flops_budget": 0.5, "dense_params": params,
            "pruned_params": params, "groups": [], "input_shape": list(SHAPE)}


@pytest.fixture
def count_exports(monkeypatch):
    calls = []
    real = torch.export.export

    def counting(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.export, "export", counting)
    return calls


@pytest.mark.parametrize("shuffle, fresh_exports", [(False, 0), (True, 1)], ids=["reused", "baked-size-falls-back"])
def test_the_start_capture_is_reused_or_the_pruned_network_captured_afresh(shuffle, fresh_exports, count_exports,
                                                                           tmp_path):
    torch.manual_seed(0)
    dense = calibrate_bn(WidthNet(8, shuffle), (4, *SHAPE))
    capture = DenseCapture.of(check_exportable(dense, SHAPE))
    assert count_exports == ["WidthNet"]  # the start check's one capture
    small = calibrate_bn(WidthNet(4, shuffle), (4, *SHAPE), seed=1).eval()
    out = save_pruned(small, tmp_path / "pruned", report_for(small), torch.zeros(1, *SHAPE), capture=capture)
    assert len(count_exports) == 1 + fresh_exports
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        expected = small(x)
        got = load_pruned(out)(x)
    assert load_report(out)["batch"] == "dynamic"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_without_a_capture_the_export_traces_the_network(count_exports, tmp_path):
    small = WidthNet(4).eval()
    save_pruned(small, tmp_path / "pruned", report_for(small), torch.zeros(1, *SHAPE))
    assert count_exports == ["WidthNet"]


def test_the_capture_does_not_hold_the_dense_weights():
    dense = WidthNet(8)
    capture = DenseCapture.of(check_exportable(dense, SHAPE))
    assert not list(capture.graph_module.parameters())
    held = {id(v) for v in vars(capture).values()}
    assert not any(id(p) in held for p in dense.parameters())
    assert not any(isinstance(v, dict) and any(t is p for t in v.values() for p in dense.parameters())
                   for v in vars(capture).values())
