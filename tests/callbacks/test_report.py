"""The final table and the width plot read true: like-with-like accuracy rows, 'slower' when
slower, FLOPs shares that match the exact model, a plot that names its groups."""
from __future__ import annotations

import copy
import io
import sys
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp

from jointprune.callbacks.report import cpu_latencies_ms, flops_shares, speed_words, table_lines, width_plot_png
from jointprune.pruning import ChannelStructure, FlopsModel

sys.path.insert(0, str(Path(__file__).parents[1] / "pruning"))
from pruning_helpers import BranchyCNN  # noqa: E402


def report(**extra) -> dict:
    groups = [{"name": f"layer{i}.conv1", "dense": d, "kept": k, "kept_fraction": k / d, "flops_share": s}
              for i, (d, k, s) in enumerate([(16, 4, 0.1), (32, 24, 0.3), (1280, 640, 0.5)])]
    return {"dense_flops": 1000, "pruned_flops": 480, "flops_budget": 0.5, "dense_params": 100, "pruned_params": 50,
            "groups": groups, "test_acc": 0.9861, "epochs": 8, "extracted_at_epoch": 4,
            "dense_test_acc_at_extraction": 0.5611, "pruned_test_acc_at_extraction": 0.4011,
            "latency_ms_batch64_cpu": {"dense": 10.0, "pruned": 12.5}, **extra}


def test_slower_is_called_slower():
    assert speed_words(10.0, 12.5) == "1.25x slower"
    assert speed_words(12.5, 10.0) == "1.25x faster"
    text = "\n".join(table_lines(report(), Path("out")))
    assert "1.25 (1.25x slower)" in text and "faster" not in text


def test_accuracy_rows_compare_like_with_like():
    lines = table_lines(report(), Path("out"))
    cut = next(line for line in lines if line.startswith("| test top-1 at the cut (epoch 4)"))
    assert cut == "| test top-1 at the cut (epoch 4) | 0.5611 | 0.4011 | -0.1600 |"
    end = next(line for line in lines if line.startswith("| test top-1 at the end (epoch 8)"))
    assert end == "| test top-1 at the end (epoch 8) | not measured | 0.9861 |  |"  # no made-up dense figure
    with_base = table_lines(report(baseline={"path": "runs/dense/pruned", "test_acc": 0.99, "flops_ratio": 1.0}),
                            Path("out"))
    end = next(line for line in with_base if line.startswith("| test top-1 at the end"))
    assert end == "| test top-1 at the end (epoch 8) | 0.9900 (baseline run) | 0.9861 | -0.0039 |"
    assert "runs/dense/pruned (1.000 of dense FLOPs)" in with_base[-1]


def test_the_latency_helpers_fields_are_read_when_present():
    text = "\n".join(table_lines(report(dense_latency_ms=8.0, pruned_latency_ms=4.0, device="cuda", batch=64),
                                 Path("out")))
    assert "| latency ms (cuda, 64) | 8.0 | 4.0 | 0.50 (2.00x faster) |" in text


def test_flops_shares_are_what_removing_a_group_would_save():
    model = BranchyCNN().eval()
    x = torch.zeros(1, 3, 16, 16)
    fm = FlopsModel(ChannelStructure(model, x))
    kept = [max(1, s // 2) for s in fm.sizes.astype(int)]
    shares = flops_shares(fm, kept)
    assert len(shares) == len(kept) and all(0 < s < 1 for s in shares)
    for g in range(len(kept)):
        alone = list(kept)
        alone[g] = 0
        assert np.isclose(shares[g], (fm(kept) - fm(alone)) / fm(kept))
    assert fm.dense == tp.utils.count_ops_and_params(model, x)[0]


def test_width_plot_is_a_png_of_fractions():
    from PIL import Image
    png = width_plot_png(report(latency_budget=0.6))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] >= 600


def test_a_bad_export_folder_or_baseline_stops_before_training(tmp_path):
    from types import SimpleNamespace

    import pytest

    from jointprune.callbacks.subnet_extraction import check_export_setup
    from jointprune.errors import JointPruneError
    from jointprune.options import ExportOptions

    def setup(**options):
        pm = SimpleNamespace(export_opts=ExportOptions(**options), flops_budget=0.5, latency_budget=None)
        check_export_setup(SimpleNamespace(default_root_dir=str(tmp_path), logger=None), pm)

    setup(dirpath=str(tmp_path / "new"))  # a new folder is fine
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(JointPruneError, match=r"holds files other than a jointprune export") as exc:
        setup(dirpath=str(tmp_path / "mine"))
    assert "\n" not in str(exc.value)
    with pytest.raises(JointPruneError, match=r"^model\.export\.baseline='.*nowhere': .* is not a jointprune pruned export"):
        setup(dirpath=str(tmp_path / "new"), baseline=str(tmp_path / "nowhere"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


class GradProbe(torch.nn.Module):
    """Records whether autograd was on in each forward."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.grad_on: list[bool] = []

    def forward(self, x):
        self.grad_on.append(torch.is_grad_enabled())
        return self.conv(x)


def test_the_final_tables_cpu_latency_is_inference_without_autograd(monkeypatch):
    seen = []
    real_deepcopy = copy.deepcopy

    def keep(m, *a):  # the timed copies, to read what their forwards saw
        out = real_deepcopy(m, *a)
        seen.append(out)
        return out
    monkeypatch.setattr("copy.deepcopy", keep)
    out = cpu_latencies_ms({"dense": GradProbe(), "pruned": GradProbe(), "missing": None}, (3, 8, 8), batch=2, runs=3)
    assert out["dense"] > 0 and out["pruned"] > 0 and out["missing"] is None
    calls = [flag for m in seen for flag in m.grad_on]
    assert len(calls) == 2 * (1 + 3) and not any(calls)  # a warm-up and 3 timed runs each, none building a graph
