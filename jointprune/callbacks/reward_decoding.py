"""RewardDecoding: fit the per-epoch embeddings, the GRU and the reward decoder on the replay
buffer, then run the SAC updates of the same epoch, so the critic sees a z_t that already
explains this epoch's rewards. z of every stored transition is recomputed from its epoch index
with the current GRU (detached)."""
from __future__ import annotations

import time

import lightning as L
import torch

from ..agent import fit_decoder
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
        opts = pm.agent_opts
        _, actor_opt, critic_opt, env_opt = [o.optimizer for o in pm.optimizers()]
        stats = {}
        if pm.env_opts.enabled and pm.env_opts.decoder_steps > 0:
            stats = fit_decoder(pm.env_repr, pm.decoder, pm.replay, env_opt, pm.env_opts.decoder_steps,
                                batch_size=pm.env_opts.batch_size, generator=pm.agent_generator)
        losses = []
        if len(pm.replay) >= opts.batch_size:
            device = next(pm.sac.parameters()).device
            for _ in range(opts.sac_updates):
                batch = pm.replay.sample(opts.batch_size, generator=pm.agent_generator)
                with torch.no_grad():
                    z = pm.env_repr.z_many(batch["epoch"].to(device)).detach()
                out = pm.sac.update(batch, z, z, actor_opt, critic_opt, generator=pm.agent_generator)
                losses.append(float(out["critic_loss"]))
        # Every rank ran the same updates on the same data; broadcasting removes any drift.
        broadcast_modules(pm.sac, pm.env_repr, pm.decoder)
        pm.epoch_stats.update({
            "decoder_loss": float(stats.get("decoder_loss", float("nan"))),
            "decoder_loss_first": float(stats.get("decoder_loss_first", float("nan"))),
            "critic_loss": sum(losses) / len(losses) if losses else float("nan"),
            "agent_seconds": pm.epoch_stats.get("agent_seconds", 0.0) + time.perf_counter() - start,
        })
