"""Exact resume: a run killed (SIGKILL) in the joint phase and restarted with --ckpt_path last
ends with the same incumbent, agent and weights as an uninterrupted run with the same seed."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import run_cli  # noqa: E402

# The quickstart itself, shrunk so the test takes about a minute.
SMALL = ["--data.init_args.resize", "16", "--data.init_args.batch_size", "128", "--data.init_args.reward_size", "64",
         "--trainer.max_epochs", "4", "--model.schedule.agent_until", "3", "--model.schedule.extract_at", "3",
         "--model.agent.episodes_per_epoch", "3", "--model.agent.sac_updates", "10", "--model.agent.batch_size", "16",
         "--model.env_repr.decoder_steps", "10", "--trainer.enable_progress_bar", "false",
         "--model.cnn.init_args.width", "8"]


def fit(root: Path, *extra):
    return run_cli("fit", "--config", "experiments/quickstart.yaml", *SMALL, "--trainer.default_root_dir", root,
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
