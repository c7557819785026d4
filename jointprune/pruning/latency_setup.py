"""Building the latency model for a training run: which device, batch size and threads, and the
same model on every rank."""
from __future__ import annotations

import torch

from ..errors import JointPruneError
from .budget import KeepRule
from .latency import LatencyModel, check_batch_size
from .latency_table import resolve_device
from .structure import ChannelStructure


def check_options(opts) -> None:
    for name, low in (("grid_points", 2), ("warmup", 0), ("repeats", 1), ("max_repeats", opts.repeats), ("network_repeats", 2),
                      ("calibration_repeats", 1), ("verify_rounds", 0), ("verify_repeats", 1)):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise JointPruneError(f"model.latency.{name} must be an integer of at least {low}, got {value!r}.")


def run_batch_size(trainer, opts) -> int:
    """model.latency.batch_size, else the data's training batch size."""
    if opts.batch_size is not None:
        return check_batch_size(opts.batch_size)
    batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if batch is None:
        raise JointPruneError("model.latency.batch_size is not set and the data has no batch_size; "
                              "set model.latency.batch_size to the batch the pruned network will serve.")
    return check_batch_size(int(batch))


def build_latency_model(trainer, structure: ChannelStructure, rule: KeepRule, opts, probe=None) -> LatencyModel:
    """Measure on rank 0 and send the numbers to the other ranks: ranks must clip alike, and ranks
    timing the same device at once would disturb each other. `probe`: the FLOPs model's
    `timed_probe` (its surgery, reused)."""
    check_options(opts)
    device = resolve_device(opts.device, trainer.strategy.root_device)
    batch = run_batch_size(trainer, opts)
    candidates = [rule.candidates(n) for n in structure.sizes]
    result: object = None
    if trainer.is_global_zero:
        try:
            result = LatencyModel.measure(structure, candidates, device, batch, torch.get_num_threads(), opts, probe)
        except JointPruneError as err:
            result = str(err)  # every rank raises it, nobody waits forever in the broadcast
    if trainer.world_size > 1:
        result = trainer.strategy.broadcast(result, src=0)
    if isinstance(result, str):
        raise JointPruneError(result)
    info = result.info
    if trainer.is_global_zero:
        print(f"[jointprune] latency model: dense {result.dense:.2f} ms on {info['device_name']} ({info['device']}, "
              f"batch {info['batch_size']}, {info['threads']} thread(s)); built in {info['build_seconds']:.1f} s, "
              f"{info['timed_entries']} new timing(s), cache {info['cache_file']}", flush=True)
    return result
