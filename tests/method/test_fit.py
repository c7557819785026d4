"""End to end: train from scratch and prune in one run, through the Lightning module."""
import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch_pruning as tp

from jointprune import load_pruned
from jointprune.data import DigitsDataModule
from jointprune.errors import JointPruneError
from jointprune.module import JointPruneModule
from jointprune.options import AgentOptions, EnvReprOptions, ExportOptions, ScheduleOptions

sys.path.insert(0, str(Path(__file__).parent))
from tiny import NaNCNN, TinyCNN  # noqa: E402

HERE = Path(__file__).parent


def small_run(tmp_path, cnn=None, budget=0.5, max_epochs=4, **kwargs):
    L.seed_everything(0)
    dm = DigitsDataModule(resize=16, batch_size=128, reward_size=64)
    options = dict(schedule=ScheduleOptions(warmup_epochs=1, agent_until=3, extract_at=3),
                   agent=AgentOptions(episodes_per_epoch=3, sac_updates=8, batch_size=16, random_epochs=1),
                   env_repr=EnvReprOptions(decoder_steps=10, dim=16),
                   export=ExportOptions(dirpath=str(tmp_path / "export")))
    options.update(kwargs)
    model = JointPruneModule(cnn or TinyCNN(num_classes=10), flops_budget=budget, input_shape=dm.input_shape,
                             num_classes=dm.num_classes, **options)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return model, trainer, dm


def test_fit_prunes_within_budget_and_exports(tmp_path, monkeypatch):
    captures, real_export = [], torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: captures.append(1) or real_export(*a, **k))
    model, trainer, dm = small_run(tmp_path)
    trainer.fit(model, dm)
    assert len(captures) == 1  # the start check's capture, reused by the export (pruning/capture.py)
    export = tmp_path / "export"
    report = json.loads((export / "pruned.json").read_text())
    # The hard guarantee, checked with torch-pruning's own counter on the reloaded network.
    assert report["pruned_flops"] <= 0.5 * report["dense_flops"]
    assert report["pruned_params"] < report["dense_params"]
    assert 0.0 <= report["test_acc"] <= 1.0 and 0.0 <= report["val_acc"] <= 1.0
    assert [g["kept"] for g in report["groups"]] == [int(m.sum()) for m in model.incumbent_masks]
    assert (export / "widths.png").stat().st_size > 1000
    # Agent epochs 1 and 2 ran: one summary each, with finite rewards and the agent's time share.
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert all(0.0 <= h["reward_mean"] <= 1.0 and h["agent_time_fraction"] > 0 for h in report["history"])
    # epoch 1: 3 random episodes; epoch 2: 3 stochastic + 1 at the policy mean
    assert len(model.replay) == (3 + 4) * len(model.structure)
    # The CNN was physically pruned at epoch 3 and kept training.
    assert model.extracted and report["extracted_at_epoch"] == 3
    loaded = load_pruned(export)
    x = torch.randn(5, *dm.input_shape)
    model.cnn.eval()
    torch.testing.assert_close(loaded(x), model.cnn(x), atol=1e-4, rtol=1e-4)
    counted, _ = tp.utils.count_ops_and_params(model.cnn, x[:1])
    assert counted == report["pruned_flops"]


def test_sgd_momentum_is_sliced_at_extraction(tmp_path):
    model, trainer, dm = small_run(tmp_path, max_epochs=4)
    trainer.fit(model, dm)
    opt = model.optimizers()[0].optimizer
    params = list(model.cnn.parameters())
    assert opt.param_groups[0]["params"] == params
    for p in params:  # momentum kept for every (small) parameter, with its new shape
        assert opt.state[p]["momentum_buffer"].shape == p.shape


def test_nan_loss_stops_with_epoch_and_saves_nothing(tmp_path):
    model, trainer, dm = small_run(tmp_path, cnn=NaNCNN(num_classes=10))
    with pytest.raises(JointPruneError, match=r"training loss became NaN or infinite at epoch 0 \(batch \d+\)"):
        trainer.fit(model, dm)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5, float("nan")])
def test_budget_out_of_range(budget):
    with pytest.raises(JointPruneError, match="flops_budget must be a fraction"):
        JointPruneModule(TinyCNN(), flops_budget=budget, input_shape=(3, 16, 16))


def test_schedule_beyond_max_epochs(tmp_path):
    model, trainer, dm = small_run(tmp_path, schedule=ScheduleOptions(warmup_epochs=1, agent_until=9, extract_at=9))
    with pytest.raises(JointPruneError, match="agent_until=9 is beyond max_epochs=4"):
        trainer.fit(model, dm)
    model, trainer, dm = small_run(tmp_path, schedule=ScheduleOptions(warmup_epochs=1, agent_until=2, extract_at=1.5))
    with pytest.raises(JointPruneError, match="extract_at=1.5 is a fraction of max_epochs"):
        trainer.fit(model, dm)


def test_wrong_num_classes_is_one_sentence():
    with pytest.raises(JointPruneError, match="outputs 7 classes but the data has 10"):
        JointPruneModule(TinyCNN(num_classes=7), input_shape=(3, 16, 16), num_classes=10)


def test_ablations_run(tmp_path):
    """z fixed (no environment representation) and lambda = 0 (no alignment) both train and export."""
    from jointprune.options import AlignmentOptions
    model, trainer, dm = small_run(tmp_path, env_repr=EnvReprOptions(enabled=False, dim=16),
                                   alignment=AlignmentOptions(weight=0.0))
    trainer.fit(model, dm)
    assert sum(p.numel() for p in model.env_repr.parameters()) == 0
    assert json.loads((tmp_path / "export" / "pruned.json").read_text())["pruned_flops"] > 0
