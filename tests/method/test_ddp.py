"""DDP for real: two CPU processes (gloo) with the three optimizer groups."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import HERE, run_cli  # noqa: E402


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    out = run_cli("fit", "--config", HERE / "tiny.yaml", "--trainer.strategy", "ddp", "--trainer.devices", "2",
                  "--trainer.default_root_dir", tmp_path, "--trainer.callbacks+=probe.StateProbe",
                  "--trainer.callbacks.out_dir", tmp_path / "probe", timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "unused parameters" not in out.stderr
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
    # Training continued on the physically pruned network under DDP (re-wrapped after surgery).
    assert ranks[0]["cnn_params"] == report["pruned_params"]
