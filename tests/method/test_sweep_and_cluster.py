"""The W&B budget sweep (offline, several runs into one save_dir) and the SLURM example."""
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import HERE, ROOT, run_cli  # noqa: E402


def sweep_commands(sweep: dict, points: list[dict], before_args: list[str]) -> list[list[str]]:
    """Expand the sweep's command template the way `wandb agent` does (`before_args` shrinks
    the task for the test; the sweep's own values still come last and win)."""
    commands = []
    for point in points:
        args = [f"--{k}={v}" for k, v in point.items()]
        cmd = []
        for part in sweep["command"]:
            if part == "${env}":
                continue
            cmd += before_args + args if part == "${args}" else [part]
        commands.append(cmd)
    return commands


def test_sweep_runs_offline_into_one_save_dir(tmp_path):
    sweep = yaml.safe_load((ROOT / "experiments" / "sweep_budget.yaml").read_text())
    assert sweep["parameters"]["model.flops_budget"]["values"] == [0.3, 0.5, 0.7]
    assert "seed" in sweep["parameters"]  # --seed: seed_everything, model.seed and data seed at once
    points = [{"model.flops_budget": 0.3, "seed": 0}, {"model.flops_budget": 0.7, "seed": 1}]
    # the tiny task and one shared save_dir keep the test fast and exercise collisions
    shrink = ["--config", str(HERE / "tiny.yaml"),
              "--trainer.logger.class_path", "lightning.pytorch.loggers.WandbLogger",
              "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.project", "jp-test",
              "--model.export.dirpath", str(tmp_path / "pruned" / "budget{flops_budget}_seed{seed}_{version}")]
    for cmd in sweep_commands(sweep, points, shrink):
        assert cmd[:2] == ["jointprune", "fit"]
        out = run_cli(*cmd[1:], env_extra={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
        assert out.returncode == 0, out.stderr[-3000:]
    exports = sorted(p.parent.name for p in (tmp_path / "pruned").rglob("pruned.json"))
    assert len(exports) == 2 and exports[0].startswith("budget0.3_seed0_") and exports[1].startswith("budget0.7_seed1_")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    # each run logged the width chart and the per-epoch pruning summary
    assert all(list(r.rglob("pruned_widths*.png")) for r in runs)
    for run in runs:  # the offline record holds the per-epoch metrics by name
        record = next(run.glob("run-*.wandb")).read_bytes()
        assert b"prune/reward_mean" in record and b"prune/agent_time_fraction" in record and b"prune_keep/" in record
        assert b"final/test_acc" in record and b"final/latency_ms_batch64_cpu" in record  # the run summary


def test_one_seed_sets_the_agent_the_data_split_and_seed_everything(monkeypatch):
    """The sweep's `--seed` reaches model.seed (agent) and data.init_args.seed (reward split)."""
    import os
    sys.path.insert(0, str(ROOT))
    from jointprune.cli import JointPruneCLI
    from jointprune.module import JointPruneModule
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    cli = JointPruneCLI(JointPruneModule, subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"},
                        run=False, args=["--config", str(HERE / "tiny.yaml"), "--seed", "4",
                                         "--trainer.logger", "false"])
    assert cli.model.seed == 4 and cli.datamodule.seed == 4 and os.environ["PL_GLOBAL_SEED"] == "4"


def test_slurm_example_matches_its_config():
    script = (ROOT / "experiments" / "slurm" / "submit.sh").read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", script).group(1))
    tasks = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", script).group(1))
    gpus = int(re.search(r"#SBATCH --gpus-per-node=(\d+)", script).group(1))
    assert re.search(r"^srun jointprune fit --config \"\$SETTING\" --config experiments/slurm/cluster.yaml", script, re.M)
    # The CLI parses the combined config (no cluster needed: --print_config stops before any work).
    out = run_cli("fit", "--config", "experiments/imagenet_resnet50.yaml", "--config", "experiments/slurm/cluster.yaml",
                  "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    trainer = yaml.safe_load(out.stdout)["trainer"]
    assert trainer["strategy"] == "ddp" and trainer["num_nodes"] == nodes and trainer["devices"] == tasks == gpus


def test_every_paper_setting_parses(capsys):
    # In-process (the CLI's own `main`, as `jointprune fit` calls it): five subprocesses cost
    # ~50 s of imports on 2 cores; `--print_config` stops before anything is built either way.
    from jointprune.cli import main
    for name in ("cifar10_resnet56", "cifar10_mobilenetv2", "imagenet_resnet50", "imagenet_mobilenetv2", "quickstart"):
        with pytest.raises(SystemExit) as stop:
            main(["fit", "--config", str(ROOT / "experiments" / f"{name}.yaml"), "--print_config"])
        out = capsys.readouterr()
        assert stop.value.code in (0, None), (name, out.err[-2000:])
        printed, written = yaml.safe_load(out.out)["model"], yaml.safe_load(
            (ROOT / "experiments" / f"{name}.yaml").read_text())["model"]
        assert printed["flops_budget"] == written["flops_budget"], name
