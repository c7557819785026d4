"""A callback the DDP and resume tests add by class_path: each rank records what it holds."""
import json
import os
from pathlib import Path

import lightning as L
import torch


def checksum(module: torch.nn.Module) -> float:
    return float(sum(p.double().sum() for p in module.parameters())) if any(True for _ in module.parameters()) else 0.0


class StateProbe(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_fit_end(self, trainer, pm) -> None:
        state = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "incumbent_kept": pm.incumbent_kept,
            "incumbent_masks": [m.int().tolist() for m in pm.incumbent_masks],
            "sac": checksum(pm.sac), "env_repr": checksum(pm.env_repr), "decoder": checksum(pm.decoder),
            "replay_size": len(pm.replay),
            "history": [{k: v for k, v in h.items() if k not in ("agent_seconds", "agent_time_fraction")}
                        for h in pm.history],
            "cnn_params": sum(p.numel() for p in pm.cnn.parameters()),
            "cnn": checksum(pm.cnn),
        }
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(state))


class KillAt(L.Callback):
    """Kills its own process (SIGKILL, no clean-up) at the start of `epoch`: a real pre-emption."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pm) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), 9)


class StallAt(L.Callback):
    """Makes one rank stall (sleep) at the start of `epoch` or at the end of its last training
    batch (`where`), after touching `flag` so a test knows the stall has begun."""

    def __init__(self, epoch: int, rank: int, seconds: float, where: str = "epoch_start", flag: str = ""):
        self.epoch, self.rank, self.seconds, self.where, self.flag = epoch, rank, seconds, where, flag

    def _stall(self, trainer) -> None:
        if trainer.current_epoch == self.epoch and trainer.global_rank == self.rank:
            if self.flag:
                Path(self.flag).write_text("stalled")
            import time
            time.sleep(self.seconds)

    def on_train_epoch_start(self, trainer, pm) -> None:
        if self.where == "epoch_start":
            self._stall(trainer)

    def on_train_batch_end(self, trainer, pm, outputs, batch, batch_idx) -> None:
        if self.where == "agent_point" and batch_idx + 1 == trainer.num_training_batches:
            self._stall(trainer)
