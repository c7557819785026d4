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


def tiny_loop_fit(tmp_path, monkeypatch, verify_rounds: int, agent_epochs: int = 1):
    """tiny_latency_fit with deterministic tables (cost ~ channels in x out): these tests are
    about the loop, not the timing. (module, trainer, data), not yet fitted."""
    from jointprune.options import AgentOptions, EnvReprOptions
    monkeypatch.setattr(latency_mod, "_measure_layer", lambda call, name, q, *a: 1e-3 * q["cin"] * q.get("cout", q["cin"]))
    monkeypatch.setattr(latency_mod, "time_pieces", lambda model, shape, *a: np.full(
        2 * len(latency_mod._record(model, torch.zeros(1, *shape))) + 1, 0.001))
    return tiny_latency_fit(
        tmp_path, AgentOptions(episodes_per_epoch=2, sac_updates=2, batch_size=8, random_epochs=1, hidden=16),
        EnvReprOptions(decoder_steps=2, dim=8),
        LatencyOptions(grid_points=2, repeats=1, max_repeats=2, network_repeats=2, verify_rounds=verify_rounds,
                       cache=False),
        agent_epochs=agent_epochs)


def test_a_run_records_the_loop_in_pruned_json(tmp_path, monkeypatch, capsys):
    def fake(dense, small, *a, **kw):  # a device much slower than any table: shrink to the floor
        return {"ratio": 0.99, "noise": 0.01, "dense_ms": 1.0, "pruned_ms": 1.0}
    monkeypatch.setattr(verify_mod, "measure_pair", fake)
    model, trainer, dm = tiny_loop_fit(tmp_path, monkeypatch, verify_rounds=10)
    trainer.fit(model, dm)
    report = json.loads((tmp_path / "export" / "pruned.json").read_text())
    assert report["latency_verify_status"] == "floor"
    assert [r["measured"] for r in report["latency_verify"]] == [0.99] * len(report["latency_verify"])
    assert report["latency_verify_kept_round"] == len(report["latency_verify"]) - 1  # the floor, measured last
    assert "cannot be met" in report["latency_verify_note"] and report["latency_verify_seconds"] >= 0
    assert model.incumbent_kept == [int(c[0]) for c in model.clipper.candidates]  # cut to the floor
    out = capsys.readouterr().out
    assert "latency measured 0.990" in out  # the epoch's summary line


# ---- the aim moves after every earlier agent epoch (latency.correct_each_epoch) ----

def aiming_run(kept, budget=0.8, epoch=1, **latency):
    """fake_run with the module's own aim_latency, at an agent epoch before the last."""
    from types import MethodType

    from jointprune.module import JointPruneModule
    from jointprune.options import AgentOptions
    pm, trainer, flops = fake_run(kept, rounds=3, budget=budget)
    pm.latency_opts = LatencyOptions(**{"verify_rounds": 3, "verify_repeats": 3, **latency})
    pm.flops, pm.flops_budget, pm.keep_rule, pm.agent_opts = flops, 1.0, KeepRule(max_ratio=0.75), AgentOptions()
    pm.latency_target, pm.latency_points = None, []
    pm.aim_latency = MethodType(JointPruneModule.aim_latency, pm)
    pm.aim_latency(None)
    trainer.current_epoch = epoch
    return pm, trainer


def scaled_pair(model, factor, noise=0.01):
    """measure_pair on a device whose latency ratio is `factor` times the model's."""
    def fake(dense, small, *a, **kw):
        kept = [small.c1.out_channels, small.c2.out_channels]
        return {"ratio": factor * model(kept) / model.dense, "noise": noise, "dense_ms": 1.0, "pruned_ms": 1.0}
    return fake


def model_ratio(pm, kept):
    return float(pm.latency_model(np.asarray(kept, dtype=float)) / pm.latency_model.dense)


def test_the_aim_is_corrected_after_earlier_agent_epochs_only():
    pm, trainer = aiming_run([6, 9])
    assert verify_mod.correction_due(trainer, pm) and not verify_mod.due(trainer, pm)
    trainer.current_epoch = 2  # the agent's last epoch: the loop itself runs there
    assert not verify_mod.correction_due(trainer, pm) and verify_mod.due(trainer, pm)
    for off in ({"correct_each_epoch": False}, {"verify_rounds": 0}):
        pm, trainer = aiming_run([6, 9], **off)
        assert not verify_mod.correction_due(trainer, pm)


def test_a_slow_device_lowers_the_aim_and_later_episodes_follow_it(monkeypatch):
    pm, trainer = aiming_run([6, 9])
    assert model_ratio(pm, [6, 9]) <= 0.8  # the model says the incumbent fits; the device says 1.25x more
    monkeypatch.setattr(verify_mod, "measure_pair", scaled_pair(pm.latency_model, 1.25))
    out = verify_mod.correct_aim(trainer, pm)
    assert out["measured"] == pytest.approx(1.25 * out["predicted"])
    assert out["target"] == pytest.approx(0.8 / 1.25) == pm.latency_target
    assert pm.clipper.costs[1].fraction == pytest.approx(0.8 / 1.25)
    assert pm.latency_points == [(out["predicted"], out["measured"])]
    # the incumbent is shrunk to the aim, keeping its shape, and its masks follow
    assert model_ratio(pm, pm.incumbent_kept) <= 0.64 < model_ratio(pm, [6, 9])
    assert all(a <= b for a, b in zip(pm.incumbent_kept, [6, 9]))
    # ... and filled back as close under the aim as single groups allow (no overshoot below it)
    for g, cands in enumerate(pm.clipper.candidates):
        nxt = [int(c) for c in cands if pm.incumbent_kept[g] < c <= [6, 9][g]]
        if nxt:
            trial = list(pm.incumbent_kept)
            trial[g] = nxt[0]
            assert model_ratio(pm, trial) > 0.64
    assert [int(m.sum()) for m in pm.incumbent_masks] == pm.incumbent_kept
    # any later episode, even one asking to keep everything, is clipped to the aim
    episode = pm.environment.rollout(lambda state: 0.0)
    assert model_ratio(pm, episode.kept) <= 0.64 + 1e-9
    assert 1.25 * model_ratio(pm, episode.kept) <= 0.8 + 1e-9  # what it would measure meets the budget


def test_a_fast_device_raises_the_aim_and_leaves_the_incumbent(monkeypatch):
    pm, trainer = aiming_run([4, 6])
    monkeypatch.setattr(verify_mod, "measure_pair", scaled_pair(pm.latency_model, 0.9))
    out = verify_mod.correct_aim(trainer, pm)
    assert out["target"] == pytest.approx(0.8 / 0.9)
    assert pm.incumbent_kept == [4, 6]
    episode = pm.environment.rollout(lambda state: 0.0)
    assert 0.8 < model_ratio(pm, episode.kept) <= 0.8 / 0.9 + 1e-9  # room the budget alone did not give


def test_a_noisy_measurement_moves_nothing(monkeypatch):
    pm, trainer = aiming_run([6, 9])
    monkeypatch.setattr(verify_mod, "measure_pair", scaled_pair(pm.latency_model, 1.25, noise=0.2))
    out = verify_mod.correct_aim(trainer, pm)
    assert out["target"] == 0.8 and pm.latency_target is None and pm.latency_points == []
    assert pm.incumbent_kept == [6, 9] and pm.clipper.costs[1].fraction == 0.8


def test_the_aim_never_goes_below_what_the_keep_rules_reach(monkeypatch):
    pm, trainer = aiming_run([6, 9], budget=0.4)
    monkeypatch.setattr(verify_mod, "measure_pair", scaled_pair(pm.latency_model, 3.0))
    out = verify_mod.correct_aim(trainer, pm)
    floor = model_ratio(pm, [2, 3])  # the fewest counts (max_ratio 0.75)
    assert out["target"] == pytest.approx(floor, rel=1e-5) and pm.incumbent_kept == [2, 3]
    pm.environment.rollout(lambda state: 0.0)  # the clipper can still complete an episode


def test_the_aim_survives_a_checkpoint():
    from jointprune.agent import ReplayBuffer
    from jointprune.module import JointPruneModule
    modules = []
    for _ in range(2):
        pm = JointPruneModule(Chain(), latency_budget=0.8, input_shape=(3, 8, 8), num_classes=5)
        pm.replay = ReplayBuffer(8, 4, 1)
        pm.epochs = pm.resolve_schedule(4)
        pm.latency_model = Linear(pm.structure.sizes)
        pm.aim_latency(None)
        modules.append(pm)
    saved, fresh = modules
    saved.latency_points = [(0.76, 0.95)]
    saved.aim_latency(0.64)
    checkpoint = {}
    saved.on_save_checkpoint(checkpoint)
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.latency_target == 0.64 and fresh.clipper.costs[1].fraction == pytest.approx(0.64)
    assert fresh.latency_points == [(0.76, 0.95)]


def test_a_run_aims_its_later_episodes_at_what_measures_the_budget(tmp_path, monkeypatch, capsys):
    model, trainer, dm = tiny_loop_fit(tmp_path, monkeypatch, verify_rounds=3, agent_epochs=2)

    def device(dense, small, *a, **kw):  # 1.2x the model's ratio, read off the widths really cut
        kept = [small.c1.out_channels, small.c2.out_channels]
        return {"ratio": 1.2 * model_ratio(model, kept), "noise": 0.01, "dense_ms": 1.0, "pruned_ms": 1.0}
    monkeypatch.setattr(verify_mod, "measure_pair", device)
    trainer.fit(model, dm)
    first, last = model.history
    assert first["latency_target"] == pytest.approx(0.9 / 1.2) == model.latency_target
    assert first["latency_measured"] == pytest.approx(1.2 * first["latency_predicted"])
    # the last agent epoch's episodes were clipped to the aim, so the loop found its incumbent in budget
    report = json.loads((tmp_path / "export" / "pruned.json").read_text())
    assert report["latency_verify"][0]["predicted"] <= 0.9 / 1.2 + 1e-9
    assert report["latency_verify"][0]["measured"] <= 0.9 + 1e-9
    assert "episodes now aim at model 0.750" in capsys.readouterr().out
