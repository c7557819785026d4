"""save_pruned / load_pruned / load_report: the self-contained export and its failure messages.
(The fresh-process reload of every registered model is in test_extract.py.)"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from jointprune import load_pruned as top_level_load_pruned
from jointprune.pruning import (
    BudgetClipper,
    ChannelStructure,
    ExportError,
    FlopsModel,
    extract_subnetwork,
    group_importance,
    load_pruned,
    load_report,
    save_pruned,
    top_k_masks,
)

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import (  # noqa: E402
    REPORT_KEYS,
    BranchyCNN,
    calibrate_bn,
    make_report,
    one_sentence,
    one_thread,  # noqa: F401
    random_episode,
)


@pytest.fixture(scope="module")
def pruned():
    """A pruned user CNN (concat, depthwise and grouped convs), its input and its report."""
    torch.manual_seed(0)
    model = calibrate_bn(BranchyCNN(), (8, 3, 16, 16))
    x = torch.randn(3, 3, 16, 16)
    st = ChannelStructure(model, x[:1])
    fm = FlopsModel(st)
    kept = random_episode(BudgetClipper(fm, 0.5), np.random.default_rng(0))
    small = extract_subnetwork(model, st, top_k_masks(group_importance(model, st), kept)).eval()
    return small, x, make_report(fm, kept, 0.5, model, small)


def test_roundtrip_in_process(pruned, tmp_path):
    small, x, report = pruned
    small.train()  # save_pruned exports eval semantics and gives the caller its mode back
    out = save_pruned(small, tmp_path / "run" / "pruned", report, x[:1])
    assert small.training
    small.eval()
    assert sorted(p.name for p in out.iterdir()) == ["pruned.json", "pruned.pt"]  # no temporaries left
    assert load_report(out) == json.loads((out / "pruned.json").read_text())
    assert set(REPORT_KEYS) <= set(load_report(out))
    with torch.no_grad():
        expected = small(x)
        for path in (out, out / "pruned.pt", str(out)):
            loaded = load_pruned(path)
            assert isinstance(loaded, torch.nn.Module)
            assert torch.allclose(loaded(x), expected, rtol=0, atol=1e-5)
        loaded = top_level_load_pruned(out)
        for batch in (1, 5):  # the batch dimension was exported as dynamic
            xb = torch.randn(batch, 3, 16, 16)
            assert torch.allclose(loaded(xb), small(xb), rtol=0, atol=1e-5)


def test_report_without_required_keys_is_refused(pruned, tmp_path):
    small, x, report = pruned
    bad = {k: v for k, v in report.items() if k not in ("pruned_flops", "groups")}
    with pytest.raises(ExportError, match=r"^the pruned report lacks pruned_flops, groups; it needs dense_flops") as exc:
        save_pruned(small, tmp_path, bad, x[:1])
    assert one_sentence(str(exc.value))
    assert not any(tmp_path.iterdir())


def _write_valid_json(d: Path, report: dict) -> None:
    (d / "pruned.json").write_text(json.dumps(report))


@pytest.mark.parametrize("case, match", [
    ("missing-dir", r"is not a jointprune pruned export: expected a directory \(or its pruned\.pt\) holding pruned\.pt and pruned\.json"),
    ("empty-dir", r"is not a jointprune pruned export: expected a directory"),
    ("only-json", r"is not a jointprune pruned export: expected a directory"),
    ("garbage-pt", r"pruned\.pt is not a readable jointprune pruned\.pt \(\w+\)\.$"),
    ("truncated-pt", r"pruned\.pt is not a readable jointprune pruned\.pt \(\w+\)\.$"),
    ("json-missing-keys", r"pruned\.json is not a jointprune report: it needs the keys dense_flops, pruned_flops"),
    ("json-not-a-dict", r"pruned\.json is not a jointprune report: it needs the keys"),
    ("json-invalid", r"pruned\.json is not a valid pruned\.json \(.+\)\.$"),
])
def test_paths_that_are_not_a_pruned_export_are_one_sentence(case, match, pruned, tmp_path):
    small, x, report = pruned
    d = tmp_path / "export"
    if case != "missing-dir":
        d.mkdir()
    if case == "only-json":
        _write_valid_json(d, report)
    elif case == "garbage-pt":
        (d / "pruned.pt").write_bytes(b"this is not a torch.export archive" * 10)
        _write_valid_json(d, report)
    elif case == "truncated-pt":
        save_pruned(small, d, report, x[:1])
        data = (d / "pruned.pt").read_bytes()
        (d / "pruned.pt").write_bytes(data[: len(data) // 2])
    elif case.startswith("json"):
        save_pruned(small, d, report, x[:1])
        text = {"json-missing-keys": json.dumps({"dense_flops": 1.0, "groups": {}}),
                "json-not-a-dict": json.dumps([1, 2, 3]),
                "json-invalid": "{ not json"}[case]
        (d / "pruned.json").write_text(text)
    with pytest.raises(ExportError, match=match) as exc:
        load_pruned(d)
    assert one_sentence(str(exc.value))
    assert isinstance(exc.value, ValueError)
    if case.startswith("json") or case in ("missing-dir", "empty-dir", "only-json"):
        with pytest.raises(ExportError, match=match):
            load_report(d)


def test_onnx_export_passes_the_checker(pruned, tmp_path):
    onnx = pytest.importorskip("onnx")
    small, x, report = pruned
    out = save_pruned(small, tmp_path, report, x[:1], onnx=True)
    assert sorted(p.name for p in out.iterdir()) == ["pruned.json", "pruned.onnx", "pruned.pt"]
    proto = onnx.load(str(out / "pruned.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param  # the batch dimension is symbolic
    try:
        import onnxruntime as ort
    except ImportError:
        return
    session = ort.InferenceSession(str(out / "pruned.onnx"))
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert np.allclose(got, small(x).numpy(), atol=1e-4)


def _report(model, x):
    flops, params = tp.utils.count_ops_and_params(model, x[:1])
    return {"dense_flops": flops, "pruned_flops": flops, "flops_budget": 1.0, "dense_params": params,
            "pruned_params": params, "groups": []}


def test_fx_export_keeps_layers_so_the_counter_agrees(tmp_path):
    """The reloaded network is made of torch.nn layers: torch-pruning counts the same FLOPs,
    and it switches between train and eval like any module."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 4)).eval()
    x = torch.randn(3, 3, 8, 8)
    save_pruned(model, tmp_path, _report(model, x), x[:1])
    assert json.loads((tmp_path / "pruned.json").read_text())["format"] == "fx"
    loaded = load_pruned(tmp_path)
    assert tp.utils.count_ops_and_params(loaded, x[:1])[0] == tp.utils.count_ops_and_params(model, x[:1])[0]
    loaded.train()
    loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))


class DataDependent(nn.Module):
    """fx cannot trace a branch on a shape (a Proxy has no truth value); torch.export can."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        if x.shape[-1] > 2:
            return y
        return -y


def test_untraceable_network_falls_back_to_torch_export(tmp_path):
    model = DataDependent().eval()
    x = torch.randn(2, 3, 4, 4)
    save_pruned(model, tmp_path, _report(model, x), x[:1])
    assert json.loads((tmp_path / "pruned.json").read_text())["format"] == "export"
    loaded = load_pruned(tmp_path)
    assert loaded.eval() is loaded and loaded.train() is loaded  # no NotImplementedError
    torch.testing.assert_close(loaded(x), model(x))
