"""The closed latency loop inside a run: the incumbent measured (a stubbed slow or fast device),
shrunk or grown back within the FLOPs budget, its masks rebuilt, and the loop recorded in
pruned.json and the summary line."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from jointprune.callbacks import latency_verify as verify_mod
from jointprune.pruning import latency as latency_mod
from jointprune.options import LatencyOptions, PruningOptions
from jointprune.pruning import BudgetClipper, ChannelStructure, FlopsModel, KeepRule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pruning"))
from test_latency import Chain, tiny_latency_fit  # noqa: E402


class Linear:
    """latency = 1 + channels, a stand-in for the measured tables."""
    name = "latency"

    def __init__(self, sizes):
        self.dense = float(self(np.array(sizes, dtype=float)))
        self.info = {"device": "cpu", "batch_size": 4, "threads": 1}

    def __call__(self, kept):
        return 1.0 + np.asarray(kept, dtype=float).sum(-1)


def slow_pair(model, overhead):
    """measure_pair on a device `overhead` slower (as a ratio) than `model`, read off the widths of
    the network it is given: the extraction must really have cut the counts."""
    seen = []

    def fake(dense, small, *a, **kw):
        kept = [small.c1.out_channels, small.c2.out_channels]
        seen.append(kept)
        return {"ratio": model(kept) / model.dense + overhead, "noise": 0.01, "dense_ms": 1.0, "pruned_ms": 1.0}
    return fake, seen


def fake_run(kept, rounds, budget=0.8, flops_budget=1.0):
    cnn = Chain()
    structure = ChannelStructure(cnn, torch.zeros(1, 3, 8, 8))
    rule = KeepRule(max_ratio=0.75)
    flops = FlopsModel(structure)
    lm = Linear(structure.sizes)
    pm = SimpleNamespace(cnn=cnn, structure=structure, pruning=PruningOptions(), latency_model=lm,
                         latency_opts=LatencyOptions(verify_rounds=rounds, verify_repeats=3), latency_budget=budget,
                         input_shape=(3, 8, 8), incumbent_kept=list(kept), incumbent_masks=None,
                         clipper=BudgetClipper(flops, flops_budget, rule), epochs={"agent_until": 3})
    trainer = SimpleNamespace(current_epoch=2, is_global_zero=True)
    return pm, trainer, flops


def test_the_incumbent_is_shrunk_until_the_slow_device_meets_the_budget(monkeypatch, capsys):
    pm, trainer, flops = fake_run([6, 9], rounds=3)
    assert pm.latency_model([6, 9]) / pm.latency_model.dense <= 0.8  # the model says it fits
    fake, seen = slow_pair(pm.latency_model, overhead=0.1)
    monkeypatch.setattr(verify_mod, "measure_pair", fake)
    before = flops([6, 9])
    assert verify_mod.due(trainer, pm)
    result = verify_mod.verify_incumbent(trainer, pm)
    assert result["status"] == "met" and result["sentence"] is None
    assert result["rounds"][0]["measured"] > 0.8 >= result["rounds"][-1]["measured"]
    assert seen[0] == [6, 9] and seen[-1] == pm.incumbent_kept
    assert flops(pm.incumbent_kept) < before
    assert all(a <= b for a, b in zip(pm.incumbent_kept, [6, 9]))
    # the masks follow the new counts (the alignment will empty the right channels)
    assert [int(m.sum()) for m in pm.incumbent_masks] == pm.incumbent_kept
    out = capsys.readouterr().out
    assert out.count("[jointprune] latency check") == len(result["rounds"])


def test_an_incumbent_measured_well_under_grows_back_within_the_flops_budget(monkeypatch, capsys):
    pm, trainer, flops = fake_run([4, 6], rounds=3, flops_budget=0.9)
    fake, seen = slow_pair(pm.latency_model, overhead=-0.15)  # the device runs faster than the model
    monkeypatch.setattr(verify_mod, "measure_pair", fake)
    result = verify_mod.verify_incumbent(trainer, pm)
    assert result["status"] == "met" and result["accepted"] >= 1
    kept_round = result["rounds"][result["accepted"]]
    assert kept_round["grown"] and result["rounds"][0]["measured"] < kept_round["measured"] <= 0.8 + 0.01
    assert all(a >= b for a, b in zip(pm.incumbent_kept, [4, 6])) and pm.incumbent_kept != [4, 6]
    assert all(flops(k) <= 0.9 * flops.dense for k in seen)  # every grown network met the FLOPs budget
    assert [int(m.sum()) for m in pm.incumbent_masks] == pm.incumbent_kept
    out = capsys.readouterr().out
    assert f"latency check {result['accepted']} (kept): grown" in out


def test_verify_rounds_zero_is_off():
    pm, trainer, _ = fake_run([6, 9], rounds=0)
    assert not verify_mod.due(trainer, pm)
    pm, trainer, _ = fake_run([6, 9], rounds=3)
    trainer.current_epoch = 1  # not the agent's last epoch
    assert not verify_mod.due(trainer, pm)


def test_a_floor_that_misses_is_said_in_one_sentence(monkeypatch, capsys):
    pm, trainer, _ = fake_run([6, 9], rounds=3, budget=0.3)
    fake, _ = slow_pair(pm.latency_model, overhead=0.5)
    monkeypatch.setattr(verify_mod, "measure_pair", fake)
    result = verify_mod.verify_incumbent(trainer, pm)
    assert result["status"] == "floor" and pm.incumbent_kept == [2, 3]  # the fewest counts (max_ratio 0.75)
    assert "the latency budget cannot be met on cpu" in result["sentence"]
    assert result["sentence"] in capsys.readouterr().out


def test_a_measurement_that_fails_is_one_sentence(monkeypatch):
    from jointprune.errors import JointPruneError
    pm, trainer, _ = fake_run([6, 9], rounds=3)

    def broken(*a, **kw):
        raise RuntimeError("out of memory\nmore detail")
    monkeypatch.setattr(verify_mod, "measure_pair", broken)
    with pytest.raises(JointPruneError, match=r"could not be measured on cpu after the agent \(out of memory\); "
                                              r"set model.latency.verify_rounds: 0"):
        verify_mod.verify_incumbent(trainer, pm)
    assert pm.incumbent_kept == [6, 9]  # left as it was


def test_a_run_records_the_loop_in_pruned_json(tmp_path, monkeypatch, capsys):
    from jointprune.options import AgentOptions, EnvReprOptions

    def fake(dense, small, *a, **kw):  # a device much slower than any table: shrink to the floor
        return {"ratio": 0.99, "noise": 0.01, "dense_ms": 1.0, "pruned_ms": 1.0}
    monkeypatch.setattr(verify_mod, "measure_pair", fake)
    # deterministic tables (cost ~ channels in x out): the test is about the loop, not the timing
    monkeypatch.setattr(latency_mod, "_measure_layer", lambda call, name, q, *a: 1e-3 * q["cin"] * q.get("cout", q["cin"]))
    monkeypatch.setattr(latency_mod, "time_pieces", lambda model, shape, *a: np.full(
        2 * len(latency_mod._record(model, torch.zeros(1, *shape))) + 1, 0.001))
    model, trainer, dm = tiny_latency_fit(
        tmp_path, AgentOptions(episodes_per_epoch=2, sac_updates=2, batch_size=8, random_epochs=1, hidden=16),
        EnvReprOptions(decoder_steps=2, dim=8),
        LatencyOptions(grid_points=2, repeats=1, max_repeats=2, network_repeats=2, verify_rounds=10, cache=False))
    trainer.fit(model, dm)
    report = json.loads((tmp_path / "export" / "pruned.json").read_text())
    assert report["latency_verify_status"] == "floor"
    assert [r["measured"] for r in report["latency_verify"]] == [0.99] * len(report["latency_verify"])
    assert report["latency_verify_kept_round"] == len(report["latency_verify"]) - 1  # the floor, measured last
    assert "cannot be met" in report["latency_verify_note"] and report["latency_verify_seconds"] >= 0
    assert model.incumbent_kept == [int(c[0]) for c in model.clipper.candidates]  # cut to the floor
    out = capsys.readouterr().out
    assert "latency measured 0.990" in out  # the epoch's summary line
