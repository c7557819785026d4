"""A W&B run (offline: no account) killed mid-run resumes the same run with `--ckpt_path last`:
the same W&B run id, the same checkpoints folder, the same export folder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import HERE, run_cli  # noqa: E402

WANDB = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def fit(cwd: Path, *extra):
    return run_cli("fit", "--config", HERE / "tiny.yaml", "--config", "experiments/wandb.yaml",
                   "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                   "--trainer.callbacks.save_last", "true", *extra, cwd=str(cwd), env_extra=WANDB)


def test_killed_wandb_run_resumes_the_same_run(tmp_path):
    killed = fit(tmp_path, "--trainer.callbacks+=probe.KillAt", "--trainer.callbacks.epoch", "2")
    assert killed.returncode == -9, killed.stderr[-3000:]
    [run_id] = [p.name for p in (tmp_path / "runs" / "wandb" / "jointprune").iterdir() if p.is_dir()]
    resumed = fit(tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    # one checkpoints folder, one W&B run id (two offline segments of it), one export named by it
    assert [p.name for p in (tmp_path / "runs" / "wandb" / "jointprune").iterdir() if p.is_dir()] == [run_id]
    segments = list((tmp_path / "runs" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(p.name.endswith(run_id) for p in segments)
    [export] = list((tmp_path / "runs" / "wandb" / "pruned").iterdir())
    assert export.name.endswith(run_id) and (export / "pruned.json").exists()


def test_wandb_resume_without_a_run_stops_with_a_sentence(tmp_path):
    out = fit(tmp_path, "--ckpt_path", "last")
    assert out.returncode == 2 and "found no checkpoint" in out.stderr
