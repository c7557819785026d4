"""Exact resume: a run killed (SIGKILL) in the joint phase and restarted with --ckpt_path last
ends with the same incumbent, agent and weights as an uninterrupted run with the same seed."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import call_cli, run_cli  # noqa: E402

# The quickstart itself, shrunk so the test takes about a minute.
SMALL = ["--data.init_args.resize", "16", "--data.init_args.batch_size", "128", "--data.init_args.reward_size", "64",
         "--trainer.max_epochs", "4", "--model.schedule.agent_until", "3", "--model.schedule.extract_at", "3",
         "--model.agent.episodes_per_epoch", "3", "--model.agent.sac_updates", "10", "--model.agent.batch_size", "16",
         "--model.env_repr.decoder_steps", "10", "--trainer.enable_progress_bar", "false",
         "--model.cnn.init_args.width", "8"]


def fit(root: Path, *extra, runner=run_cli):
    """`runner=call_cli` for the refusals: they stop before training, in this process."""
    return runner("fit", "--config", "experiments/quickstart.yaml", *SMALL, "--trainer.default_root_dir", root,
                   "--trainer.callbacks+=probe.StateProbe", "--trainer.callbacks.out_dir", root / "probe", *extra)


def test_killed_run_resumes_exactly(tmp_path):
    whole = fit(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = fit(tmp_path / "killed", "--trainer.callbacks+=probe.KillAt", "--trainer.callbacks.epoch", "2")
    assert killed.returncode == -9  # SIGKILL in the joint phase, after epoch 1's checkpoint
    assert not (tmp_path / "killed" / "probe").exists()
    resumed = fit(tmp_path / "killed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    a = json.loads((tmp_path / "whole" / "probe" / "rank0.json").read_text())
    b = json.loads((tmp_path / "killed" / "probe" / "rank0.json").read_text())
    for key in ("incumbent_kept", "incumbent_masks", "replay_size", "history", "sac", "env_repr", "decoder", "cnn"):
        assert a[key] == b[key], key


# ---------------------------------------------------------------- past extraction, and refusals
import pytest  # noqa: E402

PAST = ["--trainer.max_epochs", "5"]  # extraction at epoch 3; killed at the start of epoch 4


@pytest.fixture(scope="module")
def killed_past_extraction(tmp_path_factory):
    root = tmp_path_factory.mktemp("past")
    out = fit(root, *PAST, "--trainer.callbacks+=probe.KillAt", "--trainer.callbacks.epoch", "4")
    assert out.returncode == -9, out.stderr[-3000:]
    return root


def test_resume_refuses_a_changed_budget(killed_past_extraction):
    out = fit(killed_past_extraction, *PAST, "--ckpt_path", "last", "--model.flops_budget", "0.4", runner=call_cli)
    assert out.returncode == 2
    assert "model.flops_budget=0.5" in out.stderr and "0.4" in out.stderr and "Traceback" not in out.stderr


def test_resume_from_an_explicit_path_refuses_a_changed_schedule(killed_past_extraction):
    ckpt = next(killed_past_extraction.rglob("last.ckpt"))
    out = fit(killed_past_extraction, *PAST, "--ckpt_path", ckpt, "--model.schedule.agent_until", "2", runner=call_cli)
    assert out.returncode == 2
    assert "model.schedule" in out.stderr and "agent_until" in out.stderr


def test_resume_refuses_a_changed_epoch_count(killed_past_extraction):
    out = fit(killed_past_extraction, "--trainer.max_epochs", "6", "--ckpt_path", "last", runner=call_cli)
    assert out.returncode == 2 and "max_epochs" in out.stderr


def test_resume_without_a_checkpoint_stops_unless_asked_to_start_afresh(tmp_path):
    out = fit(tmp_path, "--ckpt_path", "last", runner=call_cli)
    assert out.returncode == 2 and "found no checkpoint" in out.stderr and "--allow_fresh_start" in out.stderr
    assert not (tmp_path / "pruned").exists()


def test_a_second_run_never_writes_another_runs_export(killed_past_extraction):
    out = fit(killed_past_extraction, *PAST, runner=call_cli)  # a new run (no --ckpt_path) into the same folder
    assert out.returncode == 2 and "belongs to another run" in out.stderr


def test_resume_past_extraction_keeps_the_extraction_facts(killed_past_extraction):
    out = fit(killed_past_extraction, *PAST, "--ckpt_path", "last")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((killed_past_extraction / "pruned" / "pruned.json").read_text())
    assert report["extracted_at_epoch"] == 3
    assert report["dense_test_acc_at_extraction"] is not None and 0 <= report["dense_test_acc_at_extraction"] <= 1
