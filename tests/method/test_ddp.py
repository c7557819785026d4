"""DDP for real: two CPU processes (gloo) with the three optimizer groups.

The first test runs the shipped quickstart as a user would (progress bar, ModelCheckpoint) plus
a logger; a regression of the collective ordering (callbacks/sync.py) makes it hang, so the
subprocess timeout turns a hang into a failure. Shrunk only by CLI overrides that keep every
callback: 4 epochs (2 agent epochs), 16x16 digits, a width-8 ResNet-20.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import HERE, run_cli, start_cli  # noqa: E402

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
SHRINK = ["--trainer.max_epochs", "4", "--model.schedule.agent_until", "3", "--model.schedule.extract_at", "3",
          "--data.init_args.resize", "16", "--model.cnn.init_args.width", "8"]


def test_quickstart_as_shipped_runs_under_ddp_with_progress_bar_and_logger(tmp_path):
    try:
        out = run_cli("fit", "--config", "experiments/quickstart.yaml", *DDP, *SHRINK,
                      "--trainer.default_root_dir", tmp_path,
                      "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", tmp_path,
                      "--trainer.callbacks+=probe.StateProbe", "--trainer.callbacks.out_dir", tmp_path / "probe",
                      timeout=300)
    except subprocess.TimeoutExpired:
        raise AssertionError("the DDP quickstart hung (ranks entered different collectives?)") from None
    assert out.returncode == 0, out.stderr[-4000:]
    assert "unused parameters" not in out.stderr
    assert "Epoch 3: 100%" in out.stdout + out.stderr  # the progress bar was on
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    same = ("incumbent_kept", "incumbent_masks", "sac", "env_repr", "decoder", "replay_size", "history", "cnn", "cnn_params")
    for key in same:  # decided once and broadcast: every rank holds the same agent and incumbent
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]["replay_size"] > 0 and len(ranks[0]["history"]) == 2
    # The export is written once (rank 0) and meets the budget.
    exports = list(tmp_path.rglob("pruned.json"))
    assert len(exports) == 1
    report = json.loads(exports[0].read_text())
    assert report["pruned_flops"] <= 0.5 * report["dense_flops"]
    # the shipped config's round_to: 4 holds every kept count to a width the kernels run fast
    assert all(g["kept"] % 4 == 0 or g["kept"] == g["dense"] for g in report["groups"]), report["groups"]
    # Training continued on the physically pruned network under DDP (re-wrapped after surgery).
    assert ranks[0]["cnn_params"] == report["pruned_params"]
    # The logger got the pruning summary of the agent epochs.
    import csv
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    logged = sorted({int(r["epoch"]) for r in rows if r.get("prune/flops_ratio")})
    assert logged == [1, 2, 3]  # every epoch from the first agent epoch on; epoch 3 the frozen values
    assert any(r.get("val/acc") for r in rows)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() or list(tmp_path.rglob("last.ckpt"))


def test_a_stuck_rank_fails_the_run_with_a_sentence(tmp_path):
    """Rank 1 stalls (600 s) where the agent's collectives run; rank 0 gives up after
    sync_timeout_s=5, says why, and ends rank 1 too."""
    flag = tmp_path / "stalled"
    proc = start_cli("fit", "--config", HERE / "tiny.yaml", *DDP, "--trainer.default_root_dir", tmp_path,
                     "--model.cluster.sync_timeout_s", "5",
                     "--trainer.callbacks+=probe.StallAt", "--trainer.callbacks.epoch", "1",
                     "--trainer.callbacks.rank", "1", "--trainer.callbacks.seconds", "600",
                     "--trainer.callbacks.where", "agent_point", "--trainer.callbacks.flag", flag)
    try:
        _wait_for(flag, proc)
        stalled = time.monotonic()
        _, stderr = proc.communicate(timeout=120)  # returns only once every rank has ended
        assert time.monotonic() - stalled < 120  # long before the stalled rank would wake up
        assert proc.returncode != 0
        assert "sync_timeout_s=5" in stderr and "jointprune: error:" in stderr, stderr[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def _wait_for(flag: Path, proc, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the stall"
        time.sleep(0.5)


def test_sigterm_ends_a_run_even_while_a_rank_is_blocked(tmp_path):
    """Rank 1 sleeps at the start of epoch 1, so rank 0 blocks inside DDP's gradient all-reduce
    (C++, where Python signal handlers never run). SIGTERM to the launching process ends both."""
    flag = tmp_path / "stalled"
    proc = start_cli("fit", "--config", HERE / "tiny.yaml", *DDP, "--trainer.default_root_dir", tmp_path,
                     "--model.cluster.sigterm_grace_s", "3",
                     "--trainer.callbacks+=probe.StallAt", "--trainer.callbacks.epoch", "1",
                     "--trainer.callbacks.rank", "1", "--trainer.callbacks.seconds", "3600",
                     "--trainer.callbacks.flag", flag)
    try:
        _wait_for(flag, proc)
        time.sleep(2)  # rank 0 is now inside the all-reduce
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert time.monotonic() - sent < 30
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
