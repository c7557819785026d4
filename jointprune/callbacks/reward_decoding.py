"""RewardDecoding: fit the per-epoch embeddings, the GRU and the reward decoder on the replay
buffer, then run the SAC updates of the same epoch, so the critic sees a z_t that already
explains this epoch's rewards. z of every stored transition is recomputed from its epoch index
with the current GRU (detached). The work itself is jointprune.agent.training.update_phase
(shared with experiments/benchmarks/bench_agent.py)."""
from __future__ import annotations

import time

import lightning as L

from ..agent.training import update_phase
from .sync import broadcast_modules, is_agent_point


class RewardDecoding(L.Callback):
    def on_train_batch_end(self, trainer, pm, outputs, batch, batch_idx) -> None:
        if is_agent_point(trainer, batch_idx):  # right after AgentEpisodes (callbacks/sync.py)
            self.run_epoch(trainer, pm)

    def run_epoch(self, trainer, pm) -> None:
        epoch = trainer.current_epoch
        if not pm.agent_active(epoch) or len(pm.replay) == 0:
            return
        start = time.perf_counter()
        _, actor_opt, critic_opt, env_opt = [o.optimizer for o in pm.optimizers()]
        stats = update_phase(pm.sac, pm.env_repr, pm.decoder, pm.replay, actor_opt, critic_opt, env_opt,
                             pm.agent_opts, pm.env_opts, generator=pm.agent_generator)
        # Every rank ran the same updates on the same data; broadcasting removes any drift.
        broadcast_modules(pm.sac, pm.env_repr, pm.decoder)
        pm.epoch_stats.update({
            "decoder_loss": float(stats.get("decoder_loss", float("nan"))),
            "decoder_loss_first": float(stats.get("decoder_loss_first", float("nan"))),
            "critic_loss": float(stats.get("critic_loss", float("nan"))),
            "agent_seconds": pm.epoch_stats.get("agent_seconds", 0.0) + time.perf_counter() - start,
        })
