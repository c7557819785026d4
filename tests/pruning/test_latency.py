"""The latency model: its tables, the on-disk cache, bad input, and a tiny fit under a latency budget."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from jointprune.errors import JointPruneError
from jointprune.models import CifarResNet, MobileNetV2
from jointprune.options import LatencyOptions
from jointprune.pruning import ChannelStructure, FlopsModel, KeepRule
from jointprune.pruning import latency as latency_mod
from jointprune.pruning.latency import LatencyModel, check_latency_budget
from jointprune.pruning.latency_table import LatencyCache, resolve_device
from jointprune.pruning.latency_setup import check_options
from jointprune.utils.allocator import steady_allocator

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import one_thread  # noqa: E402,F401

CPU = torch.device("cpu")


class Chain(nn.Module):
    """conv(3->8) - BN - ReLU - conv(8->12) - BN - ReLU - pool - linear: two groups, and the second
    conv depends on both (its input on group 0, its output on group 1)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU()
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.r2(self.b2(self.c2(self.r1(self.b1(self.c1(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def constant_pieces(ms):
    """A stand-in for `time_pieces` that times nothing: every piece of the forward takes `ms`."""
    def pieces(model, input_shape, *a):
        return np.full(2 * len(latency_mod._record(model, torch.zeros(1, *input_shape))) + 1, ms)
    return pieces


def build(tmp_path, batch=2, points=3, threads=1, **kw):
    model = Chain().eval()
    structure = ChannelStructure(model, torch.zeros(1, 3, 8, 8))
    rule = KeepRule(max_ratio=0.5)
    cands = [rule.candidates(n) for n in structure.sizes]
    opts = LatencyOptions(grid_points=points, warmup=0, repeats=1, max_repeats=2, network_repeats=2, cache_dir=str(tmp_path), **kw)
    return LatencyModel.measure(structure, cands, CPU, batch, threads, opts), structure, cands


def test_tables_cover_each_layer_by_the_groups_it_depends_on(tmp_path):
    lm, structure, cands = build(tmp_path)
    assert structure.sizes == [8, 12]
    # c1/b1/r1 follow group 0, c2 both groups, b2/r2/fc's input group 1.
    assert set(lm.terms) == {(0,), (0, 1), (1,)}
    assert lm.terms[(0, 1)].shape == (3, 3)
    np.testing.assert_array_equal(lm.grids[0], [4, 6, 8])
    np.testing.assert_array_equal(lm.grids[1], [6, 9, 12])
    assert all((t > 0).all() for t in lm.terms.values())
    # The dense network's latency is the measured whole network by construction.
    assert lm.dense == pytest.approx(lm.rest + lm.gaps.dense.sum()
                                     + sum(float(t[(-1,) * t.ndim]) for t in lm.terms.values()))
    # Between grid points the model interpolates linearly; a batch equals one vector at a time.
    lo, hi = lm([4, 12]), lm([6, 12])
    assert lm([5, 12]) == pytest.approx((lo + hi) / 2)
    batch = np.array([[4, 6], [5, 7], [8, 12]], dtype=float)
    np.testing.assert_allclose(lm(batch), [lm(k) for k in batch])
    # HALP-style entries: batch, input shape (channels, feature map), output channels, groups.
    entries = json.loads(Path(lm.info["cache_file"]).read_text())["entries"]
    conv_keys = [json.loads(k) for k in entries if k.startswith('["Conv2d"')]
    assert {(k[2][0], k[2][1], k[3]) for k in conv_keys} == \
        {(2, 3, c) for c in (4, 6, 8)} | {(2, c, d) for c in (4, 6, 8) for d in (6, 9, 12)}
    assert lm.info["timed_entries"] == len(entries) and lm.info["batch_size"] == 2


def test_second_build_reads_the_cache_and_times_nothing(tmp_path, monkeypatch):
    first, _, _ = build(tmp_path)

    def no_timing(*a, **k):
        raise AssertionError("a cached table was timed again")

    monkeypatch.setattr(latency_mod, "steady_ms", no_timing)
    monkeypatch.setattr(latency_mod, "measure_gaps", no_timing)
    second, _, _ = build(tmp_path)
    assert second.info["cache_hit"] and second.info["timed_entries"] == 0
    assert second.dense == first.dense and second([5, 7]) == first([5, 7])
    # Another thread count is another device configuration: a different cache file.
    monkeypatch.undo()
    other, _, _ = build(tmp_path, threads=2)
    assert other.info["cache_file"] != first.info["cache_file"] and other.info["timed_entries"] > 0


def test_an_unreadable_cache_is_measured_again_and_replaced(tmp_path):
    first, _, _ = build(tmp_path)
    Path(first.info["cache_file"]).write_text("{ not json")
    again, _, _ = build(tmp_path)
    assert again.info["timed_entries"] == first.info["timed_entries"]
    assert json.loads(Path(first.info["cache_file"]).read_text())["meta"]["threads"] == 1
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_cache_off_writes_nothing(tmp_path):
    lm, _, _ = build(tmp_path, cache=False)
    assert lm.info["timed_entries"] > 0 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("budget", [0.0, 1.5, -0.1, float("nan"), True, "0.5"])
def test_bad_latency_budget_is_one_sentence(budget):
    with pytest.raises(JointPruneError, match="latency_budget must be a fraction"):
        check_latency_budget(budget)


def test_unavailable_or_unknown_device_is_refused():
    if not torch.cuda.is_available():
        with pytest.raises(JointPruneError, match="not available on this machine"):
            resolve_device("cuda:0", CPU)
    with pytest.raises(JointPruneError, match="not a device name"):
        resolve_device("banana", CPU)
    assert resolve_device(None, CPU) == CPU


@pytest.mark.parametrize("batch", [0, -3, 1.5])
def test_batch_size_below_one_is_refused(tmp_path, batch):
    with pytest.raises(JointPruneError, match="batch_size must be an integer of at least 1"):
        build(tmp_path, batch=batch)


def test_bad_measurement_options_are_refused():
    with pytest.raises(JointPruneError, match="grid_points must be an integer of at least 2"):
        check_options(LatencyOptions(grid_points=1))


def test_a_layer_that_fails_at_a_candidate_width_names_it(tmp_path, monkeypatch):
    real = latency_mod._layer_at

    def fails_at_six(call, q):
        if q.get("cout") == 6:
            raise RuntimeError("no kernel for this width")
        return real(call, q)

    monkeypatch.setattr(latency_mod, "_layer_at", fails_at_six)
    with pytest.raises(JointPruneError, match=r"latency of layer c1 cannot be measured at 3 input and 6 output"):
        build(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing cached half-way


def test_cache_key_names_device_torch_and_threads(tmp_path):
    a = LatencyCache(str(tmp_path), CPU, 1)
    b = LatencyCache(str(tmp_path), CPU, 4)
    assert a.path != b.path and a.meta["torch"] == torch.__version__ and a.meta["device"].startswith("cpu")


class DigitsChain(Chain):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 10)


def tiny_latency_fit(tmp_path, agent, env_repr, latency, agent_epochs: int = 1):
    """A run of DigitsChain under latency budget 0.9 alone (one warm-up epoch, `agent_epochs` agent
    epochs, the cut right after them, one more epoch): (module, trainer, data), not yet fitted."""
    import lightning as L

    from jointprune.data import DigitsDataModule
    from jointprune.module import JointPruneModule
    from jointprune.options import ExportOptions, ScheduleOptions

    L.seed_everything(0)
    # 16x16 inputs at batch 128: the convs, not per-call overheads, dominate the tiny net's latency,
    # so a 0.9 budget is reachable (the smallest reachable fraction here is about 0.5).
    dm = DigitsDataModule(resize=16, batch_size=128, reward_size=64)
    model = JointPruneModule(
        DigitsChain(), latency_budget=0.9, input_shape=dm.input_shape, num_classes=dm.num_classes,
        schedule=ScheduleOptions(warmup_epochs=1, agent_until=1 + agent_epochs, extract_at=1 + agent_epochs),
        agent=agent, env_repr=env_repr, latency=latency, export=ExportOptions(dirpath=str(tmp_path / "export")))
    trainer = L.Trainer(max_epochs=2 + agent_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return model, trainer, dm


def test_tiny_fit_under_a_latency_budget_exports_within_it(tmp_path, monkeypatch):
    from jointprune.options import AgentOptions, EnvReprOptions

    def refuse(structure):  # the tables reuse the FLOPs model's surgery (FlopsModel.timed_probe)
        raise AssertionError("the latency model probed the network a second time")
    monkeypatch.setattr(latency_mod, "_probe", refuse)

    model, trainer, dm = tiny_latency_fit(
        tmp_path, AgentOptions(episodes_per_epoch=3, sac_updates=4, batch_size=8, random_epochs=1, hidden=16),
        EnvReprOptions(decoder_steps=4, dim=8),
        # the closed loop off: it may grow the export past the model's budget on a measurement (its
        # own tests in test_latency_verify_run.py); this test is about the model's guarantee
        LatencyOptions(grid_points=3, repeats=2, max_repeats=8, network_repeats=2, cache_dir=str(tmp_path / "cache"),
                       verify_rounds=0))
    assert model.flops_budget == 1.0  # alone, the latency budget is the only limit
    trainer.fit(model, dm)
    lm = model.latency_model
    assert lm is not None and lm.info["batch_size"] == 128 and lm.info["device"] == "cpu"
    # The guarantee, in the model's terms: every finished episode, hence the export, fits.
    assert lm(model.incumbent_kept) <= 0.9 * lm.dense + 1e-9
    report = json.loads((tmp_path / "export" / "pruned.json").read_text())
    for key in ("latency_budget", "dense_latency_ms", "pruned_latency_ms", "latency_device", "latency_batch_size",
                "latency_threads", "latency_budget_met"):
        assert key in report
    # timed on the steady allocator, and the report says so (utils/allocator.py)
    assert report["latency_allocator"] == lm.info["allocator"] == steady_allocator()
    assert report["latency_budget"] == 0.9 and report["latency_batch_size"] == 128
    assert report["latency_model_ratio"] == pytest.approx(lm(model.incumbent_kept) / lm.dense)


def test_an_unreachable_latency_budget_is_refused_at_start(tmp_path):
    import lightning as L

    from jointprune.data import DigitsDataModule
    from jointprune.module import JointPruneModule

    dm = DigitsDataModule(resize=8, batch_size=32, reward_size=64)
    model = JointPruneModule(DigitsChain(), latency_budget=0.01, input_shape=dm.input_shape,
                             num_classes=dm.num_classes,
                             latency=LatencyOptions(grid_points=2, repeats=1, max_repeats=2, network_repeats=2,
                                                    cache_dir=str(tmp_path / "cache")))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(JointPruneError, match=r"latency_budget=0.01 cannot be met.*\d\.\d{3} of the dense latency"):
        trainer.fit(model, dm)


def test_a_missed_budget_is_said_plainly_in_the_final_table():
    from jointprune.callbacks.latency_report import latency_rows
    report = {"latency_budget": 0.5, "latency_budget_met": False, "latency_ratio": 0.62, "latency_noise": 0.03,
              "latency_model_ratio": 0.49, "latency_device": "cpu", "latency_batch_size": 64, "latency_threads": 2,
              "dense_latency_ms": 10.0, "pruned_latency_ms": 6.2}
    rows = latency_rows(report)
    assert "MISSED" in rows[0][3] and "budget 0.5" in rows[0][3]
    assert "measures 0.620 of the dense latency" in rows[1][3]
    assert "MISSED" not in latency_rows({**report, "latency_budget_met": True})[0][3]
    assert len(latency_rows({**report, "latency_budget_met": True})) == 1
    assert latency_rows({"flops_budget": 0.5}) == []  # no latency budget: no rows


def test_latency_sweep_prunes_to_latency_alone():
    import yaml
    root = Path(__file__).resolve().parents[2]
    sweep = yaml.safe_load((root / "experiments" / "sweep_latency_budget.yaml").read_text())
    assert sweep["parameters"]["model.latency_budget"]["values"] == [0.3, 0.5, 0.7]
    cmd = sweep["command"]
    assert cmd[cmd.index("--model.flops_budget") + 1] == "1.0" and cmd[-1] == "${args}"


def test_calibration_rescales_the_savings_to_the_measured_sub_network(tmp_path, monkeypatch):
    # Deterministic tables (cost ~ channels in x channels out): the test is about the rescaling.
    monkeypatch.setattr(latency_mod, "_measure_layer",
                        lambda call, name, q, *a: 1e-3 * q["cin"] * q.get("cout", q["cin"]))
    monkeypatch.setattr(latency_mod, "time_pieces", constant_pieces(0.05))
    plain, _, _ = build(tmp_path, cache=False)
    predicted = plain([4, 6]) / plain.dense
    assert predicted < 0.9
    target = 1 - 0.5 * (1 - predicted)  # the measured sub-network saves half what the tables say
    calls = []

    def measured(structure, fewest, *a):
        calls.append(fewest)
        return target

    monkeypatch.setattr(latency_mod, "_measure_fewest", measured)
    cal, _, _ = build(tmp_path, calibrate=True)
    assert calls == [[4, 6]]  # the network cut to the fewest counts measured, once
    assert cal.dense == pytest.approx(plain.dense) and cal.savings_scale == pytest.approx(0.5)
    assert cal([4, 6]) / cal.dense == pytest.approx(target)
    # Savings scale alike everywhere, so the model keeps its shape (and any non-monotonicity).
    k = np.array([[5, 7], [8, 9], [6, 12]], dtype=float)
    np.testing.assert_allclose(cal.dense - cal(k), 0.5 * (plain.dense - plain(k)))
    again, _, _ = build(tmp_path, calibrate=True)
    assert calls == [[4, 6]] and again.savings_scale == cal.savings_scale  # read from the cache


@pytest.mark.parametrize("make", [Chain, lambda: CifarResNet(depth=8, width=4), lambda: MobileNetV2(width_mult=0.25)],
                         ids=["chain", "resnet", "mobilenetv2"])
def test_the_flops_models_probe_gives_the_same_tables_as_the_latency_models_own(make):
    """The latency model reuses the FLOPs model's surgery (FlopsModel.timed_probe): the layer calls,
    their table keys and d[call, quantity, group] equal what its own probe finds."""
    model = make().eval()
    structure = ChannelStructure(model, torch.zeros(1, 3, 16, 16))
    own_calls, own_names, own_d = latency_mod._probe(structure)
    calls, names, d = FlopsModel(structure).timed_probe
    assert names == own_names and len(calls) == len(own_calls) > 0
    assert [latency_mod._key(c, latency_mod._quantities(c), 4) for c in calls] == \
        [latency_mod._key(c, latency_mod._quantities(c), 4) for c in own_calls]
    np.testing.assert_array_equal(d, own_d)
    assert d.any()
    live = dict(model.named_modules())
    assert all(c["module"] is live[n] for c, n in zip(calls, names))  # the dense live layers


def test_what_runs_between_layers_scales_with_the_channels_before_it(tmp_path, monkeypatch):
    """A gap (the pooling after r2, an add) runs on the tensor the call before it made: its time
    goes from the dense network's to the fewest network's with that call's output channels, while
    a gap after a call no group changes (after fc) stays constant."""
    monkeypatch.setattr(latency_mod, "_measure_layer", lambda *a: 0.0)  # only the gaps count here
    widths = {}

    def pieces(model, input_shape, *a):  # every gap takes 0.1 ms per channel of the call before it
        calls = latency_mod._record(model, torch.zeros(1, *input_shape))
        out = [c.get("cout", c["cin"]) for c in calls]
        widths[len(widths)] = out
        return np.array([1.0] + [v for w in out for v in (0.0, 0.1 * w)])

    monkeypatch.setattr(latency_mod, "time_pieces", pieces)
    lm, structure, _ = build(tmp_path, cache=False)
    dense_out, fewest_out = widths[0], widths[1]
    assert dense_out[:3] == [8, 8, 8] and fewest_out[:3] == [4, 4, 4]  # c1, b1, r1 at group 0's floor
    assert dense_out[-1] == fewest_out[-1] == 5  # fc: no group changes its output
    assert lm.rest == pytest.approx(1.0 + 0.5)  # the first gap and the gap after fc
    assert lm.dense == pytest.approx(0.1 * sum(dense_out) + 1.0)
    # Linear in between: group 0 at 6 of 8 (the gaps after c1, b1, r1 at 0.6 ms), group 1 at 9
    # of 12 (after c2, b2, r2 at 0.9 ms), and the constant first gap and gap after fc.
    assert lm([6, 9]) == pytest.approx(1.0 + 3 * 0.6 + 3 * 0.9 + 0.5)
    assert lm([4, 6]) == pytest.approx(1.0 + 0.1 * sum(fewest_out))


def test_gaps_too_small_to_matter_are_scaled_without_timing_the_fewest_network(tmp_path, monkeypatch):
    """Timing the fewest network costs a cold forward: skipped when the gaps that scale are under
    MEASURE_FEWEST_SHARE of the dense forward, and those gaps are then taken as proportional."""
    monkeypatch.setattr(latency_mod, "_measure_layer", lambda *a: 0.0)
    timed = []

    def pieces(model, input_shape, *a):  # calls take 10 ms, every gap 0.001 ms per channel
        calls = latency_mod._record(model, torch.zeros(1, *input_shape))
        timed.append(model)
        return np.array([0.0] + [v for c in calls for v in (10.0, 0.001 * c.get("cout", c["cin"]))])

    monkeypatch.setattr(latency_mod, "time_pieces", pieces)
    lm, structure, _ = build(tmp_path, cache=False)
    assert len(timed) == 1 and timed[0] is structure.model  # the dense network only
    assert lm.gaps.dense.sum() < latency_mod.MEASURE_FEWEST_SHARE * 7 * 10.0  # 7 calls of 10 ms
    # proportional: group 0's three gaps at 4 of 8 channels take half their dense time
    np.testing.assert_allclose(lm.gaps.fewest[:3], 0.5 * lm.gaps.dense[:3])
    assert lm([4, 12]) == pytest.approx(lm.dense - 3 * 0.5 * 0.008)
