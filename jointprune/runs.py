"""What makes a run resumable and distinct from every other run.

- `resolve_resume`: `--ckpt_path last` finds the run it should continue (the same checkpoints
  folder and, with W&B, the same run id) or stops with a sentence; a fresh start only when the
  user asks for it (`--allow_fresh_start true`).
- `check_resume_settings`: a checkpoint continues only the run it was written by (same budget,
  schedule, pruning options and CNN).
- `run_stamp` / `claim_export`: two runs never write the same export folder.
- `log_run_summary`: the final figures go to the logger's run summary (W&B).
- `apply_run_seed`: `--seed N` sets seed_everything, the agent's seed and the data split's seed.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from .errors import JointPruneError
from .pruning.export import CLAIM

POINTER = "jointprune-last-run-id"   # in the W&B save_dir/project: the id of the last run started there


# ----------------------------------------------------------------------------- seeds
def apply_run_seed(cfg) -> None:
    """`--seed N`: one knob for the sweep, so every random stream of the run moves with it."""
    seed = cfg.get("seed")
    if seed is None:
        return
    cfg["seed_everything"] = seed
    cfg["model"]["seed"] = seed
    data = cfg.get("data")
    if data is not None and data.get("init_args") is not None:
        data["init_args"]["seed"] = seed


# ----------------------------------------------------------------------------- resume
def _wandb(logger):
    from lightning.pytorch.loggers import WandbLogger
    return isinstance(logger, WandbLogger)


def checkpoint_dir(trainer, callback) -> Path:
    """Where ModelCheckpoint will write (its own rule, applied before fit)."""
    if callback.dirpath:
        return Path(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir or trainer.default_root_dir
        version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        return Path(save_dir) / str(logger.name) / version / "checkpoints"
    return Path(trainer.default_root_dir) / "checkpoints"


def resolve_resume(trainer, ckpt_path, allow_fresh: bool):
    """Returns the checkpoint path to pass to fit (None: start afresh)."""
    if ckpt_path != "last":
        return ckpt_path
    callback = trainer.checkpoint_callback
    if callback is None or not callback.save_last:
        raise JointPruneError("--ckpt_path last needs a ModelCheckpoint with save_last: true in trainer.callbacks.")
    logger = trainer.logger
    if logger is not None and _wandb(logger):
        run_id = logger._id or os.environ.get("WANDB_RUN_ID")
        pointer = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / POINTER
        if run_id is None and pointer.exists():
            run_id = pointer.read_text().strip() or None
        if run_id is not None:  # WandbLogger resumes a run by id (resume="allow")
            logger._id = logger._wandb_init["id"] = run_id
    elif logger is not None and hasattr(logger, "_version") and logger._version is None:
        # CSV / TensorBoard: continue the newest version that holds a last checkpoint
        root = Path(logger.root_dir)
        found = sorted((int(p.name.split("_")[1]), p) for p in root.glob("version_*")
                       if p.name.split("_")[1].isdigit() and (p / "checkpoints" / "last.ckpt").exists())
        if found:
            logger._version = found[-1][0]
    folder = checkpoint_dir(trainer, callback) if (logger is None or logger.version is not None) else None
    last = folder / "last.ckpt" if folder is not None else None
    if last is not None and last.exists():
        return str(last)
    where = folder if folder is not None else "the logger's folders (no earlier run recorded there)"
    if allow_fresh:
        print(f"jointprune: no checkpoint in {where}; starting afresh (--allow_fresh_start).", flush=True)
        return None
    raise JointPruneError(f"--ckpt_path last found no checkpoint in {where}; pass --allow_fresh_start true "
                          "to start a new run instead.")


def record_run(trainer) -> None:
    """Rank 0 notes the W&B run id next to the runs, for a later `--ckpt_path last`."""
    logger = trainer.logger
    if trainer.is_global_zero and logger is not None and _wandb(logger):
        folder = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / POINTER).write_text(str(logger.version))


RESUME_KEYS = ("flops_budget", "schedule", "pruning", "input_shape")


def check_requested_settings(requested, effective) -> None:
    """LightningCLI loads an explicit checkpoint's hyper-parameters over the command line's; a
    setting the user asked for that the checkpoint overrode is refused, not silently dropped."""
    for key in RESUME_KEYS:
        want, got = _plain(requested.get(key)), _plain(effective.get(key))
        if want != got:
            raise JointPruneError(
                f"the checkpoint was written with model.{key}={got!r} but this run asks for model.{key}={want!r}; "
                "a resumed run must keep the budget, schedule, pruning options and CNN of the run it continues "
                "(start a new run to change them).")


def _plain(value):
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_resume_settings(saved: dict, current: dict) -> None:
    """Refuse a checkpoint written under other settings, naming the first that differs."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise JointPruneError(
                f"the checkpoint was written with {key}={saved[key]!r} but this run has {key}={value!r}; "
                "a resumed run must keep the budget, schedule, pruning options and CNN of the run it "
                "continues (start a new run to change them).")


# ----------------------------------------------------------------------------- export folder
def new_run_stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def claim_export(dirpath: Path, stamp: str) -> None:
    """Rank 0, at fit start: the export folder belongs to this run (its stamp survives a resume
    in the checkpoint), or the run stops before training with a sentence."""
    dirpath.mkdir(parents=True, exist_ok=True)
    claim = dirpath / CLAIM
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = claim.read_text().strip()
        if owner == stamp:
            return
        raise JointPruneError(
            f"the export folder {dirpath} belongs to another run ({owner or 'unknown'}); give each run its own "
            "model.export.dirpath (e.g. with {version}: the logger's run id, or a unique stamp without a "
            "logger) or remove that folder.") from None
    with os.fdopen(fd, "w") as f:
        f.write(stamp)


def release_export(dirpath: Path, stamp: str) -> None:
    """A run that fails before exporting gives its folder back (and leaves nothing behind)."""
    claim = dirpath / CLAIM
    if claim.exists() and claim.read_text().strip() == stamp and not (dirpath / "pruned.json").exists():
        claim.unlink()
        if not any(dirpath.iterdir()):
            dirpath.rmdir()


# ----------------------------------------------------------------------------- summary
def log_run_summary(trainer, report: dict) -> None:
    """The final figures in the run summary of every logger that has one (W&B)."""
    lat = report.get("latency_ms_batch64_cpu", {})
    summary = {
        "final/test_acc": report["test_acc"], "final/val_acc": report["val_acc"],
        "final/dense_test_acc_at_extraction": report.get("dense_test_acc_at_extraction"),
        "final/flops": report["pruned_flops"], "final/flops_ratio": report["flops_ratio"],
        "final/params": report["pruned_params"],
        "final/params_ratio": report["pruned_params"] / max(report["dense_params"], 1),
        "final/latency_ms_batch64_cpu": lat.get("pruned"), "final/dense_latency_ms_batch64_cpu": lat.get("dense"),
    }
    summary = {k: v for k, v in summary.items() if v is not None}
    for logger in trainer.loggers:
        if _wandb(logger):
            logger.experiment.summary.update(summary)
        elif hasattr(logger, "log_dir") and logger.log_dir:
            path = Path(logger.log_dir) / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2))
