"""Keep the agent identical on every DDP rank (decide on rank 0, broadcast to the others) without
ever interleaving with Lightning's own collectives, and end a run that SIGTERM asks to end.

Where the agent's collectives run, and why there. Lightning syncs epoch-level metrics lazily:
after the last training batch, the first read of `trainer.progress_bar_metrics` /
`callback_metrics` all-gathers every torchmetrics Metric. Code that runs on rank 0 only (the
progress bar's `on_train_epoch_end`, a logger, a user's callback) makes rank 0 enter that
all-gather while the other ranks go on, so any collective of ours placed in an epoch-end or
validation hook can meet it in a different order and deadlock. Inside the batch loop no lazy
sync is pending (step metrics are synced when they are logged, on every rank), so the agent's
work runs at the end of the epoch's *last training batch* (`is_agent_point`), before
validation, checkpointing and the epoch-end hooks, whatever callbacks the user configures.

Its collectives also run on a process group of their own (gloo, with `cluster.sync_timeout_s`),
so a rank stuck elsewhere makes the others fail with a sentence within that time instead of
hanging until the scheduler kills the job.
"""
from __future__ import annotations

import math
import os
import select
import signal
import threading
import warnings
from datetime import timedelta

import lightning as L
import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import JointPruneError

# prune/* and prune_keep/* are broadcast from rank 0, so identical on every rank: no reduction
warnings.filterwarnings("ignore", message=r".*self\.log\('prune(_keep)?/.*sync_dist=True.*")

_GROUP = None        # the agent's process group (None: the default one, or not distributed)
_TIMEOUT_S = None


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_agent_group(timeout_s: float) -> None:
    """Every rank calls this once, at the same point (`ClusterSafety.setup`)."""
    global _GROUP, _TIMEOUT_S
    if not distributed() or _GROUP is not None:
        return
    _GROUP = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    _TIMEOUT_S = timeout_s


def _collective(what: str, fn):
    try:
        return fn()
    except RuntimeError as err:  # gloo raises on its timeout and when a peer has died
        raise JointPruneError(
            f"the agent's {what} across DDP ranks did not complete within model.cluster.sync_timeout_s="
            f"{_TIMEOUT_S} s (another rank is stuck or died: {str(err).splitlines()[0][:160]}).") from None


def broadcast_modules(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every other rank's (in place)."""
    if not distributed():
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            _collective("broadcast", lambda t=tensor: dist.broadcast(t.data, src=0, group=_GROUP))


def broadcast_object(obj):
    if not distributed():
        return obj
    box = [obj]
    _collective("broadcast", lambda: dist.broadcast_object_list(box, src=0, group=_GROUP))
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if distributed():
        tensor = tensor.clone()
        _collective("reduction", lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_GROUP))
    return tensor


def shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's share of a tensor held whole by every rank (strided, so shards balance)."""
    if not distributed():
        return tensor
    return tensor[dist.get_rank()::dist.get_world_size()]


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def is_agent_point(trainer, batch_idx: int) -> bool:
    """True at the end of the epoch's last training batch: the one point where the agent runs."""
    total = trainer.num_training_batches
    return math.isfinite(total) and batch_idx + 1 == int(total)


class ClusterSafety(L.Callback):
    """Creates the agent's process group and replaces Lightning's SIGTERM handler: Lightning's
    broadcasts inside the signal handler (a collective at an arbitrary point) and only stops at
    the next batch boundary, so a rank blocked in a collective never stops. Ours sets the same
    stop flag, forwards the signal to the DDP children, and if the process has not ended
    `sigterm_grace_s` later (blocked in C++), ends it with exit status 143. The wake-up fd lets a
    thread see the signal even while the main thread is blocked inside a collective."""

    def __init__(self, sync_timeout_s: float, sigterm_grace_s: float):
        self.sync_timeout_s, self.sigterm_grace_s = sync_timeout_s, sigterm_grace_s

    def on_exception(self, trainer, pm, exception: BaseException) -> None:
        """Lightning's launcher leaves the other ranks running when rank 0 fails (they would wait
        in the next collective): end them too."""
        launcher = trainer.strategy.launcher
        if getattr(launcher, "procs", None):
            launcher.kill(signal.SIGKILL)

    def setup(self, trainer, pm, stage: str) -> None:
        init_agent_group(self.sync_timeout_s)

    def on_train_start(self, trainer, pm) -> None:
        # after Lightning registered its handlers (Trainer._run, after setup and on_fit_start)
        if threading.current_thread() is threading.main_thread():
            install_sigterm_exit(trainer, self.sigterm_grace_s)


_SIGTERM: dict = {"trainer": None, "grace_s": 60.0, "watching": False}


def install_sigterm_exit(trainer, grace_s: float) -> None:
    """One watcher thread per process (fit may run several times); it acts for the current trainer."""
    _SIGTERM.update(trainer=trainer, grace_s=grace_s)
    if not _SIGTERM["watching"]:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        if previous != -1:  # an event loop (notebook) owns it: keep theirs; the Python handler remains
            signal.set_wakeup_fd(previous)
        else:
            threading.Thread(target=_watch, args=(read_fd,), name="jointprune-sigterm", daemon=True).start()
        _SIGTERM["watching"] = True
    signal.signal(signal.SIGTERM, lambda signum, frame: _stop())  # when the main thread is in Python


def _watch(read_fd: int) -> None:
    while True:  # the C-level handler writes the signal number here even while Python is blocked
        select.select([read_fd], [], [])
        if signal.SIGTERM in os.read(read_fd, 64):
            _stop()


def _stop() -> None:
    trainer = _SIGTERM["trainer"]
    if trainer is None:
        return
    connector = trainer._signal_connector
    if connector.received_sigterm:
        return
    connector.received_sigterm = True  # Lightning stops at the next batch boundary
    launcher = trainer.strategy.launcher
    if launcher is not None and hasattr(launcher, "procs"):
        launcher.kill(signal.SIGTERM)  # the other DDP ranks
    timer = threading.Timer(_SIGTERM["grace_s"], lambda: os._exit(143))
    timer.daemon = True  # a run that stops in time exits without waiting for it
    timer.start()
