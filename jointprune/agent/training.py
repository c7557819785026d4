"""One agent epoch's learning: fit the environment representation, then the SAC updates.

Shared by the RewardDecoding callback and experiments/benchmarks/bench_agent.py, so the
benchmark measures exactly the code a run executes.
"""
from __future__ import annotations

import torch

from .env_repr import EnvironmentRepresentation, RewardDecoder, fit_decoder
from .replay import ReplayBuffer
from .sac import SoftActorCritic


def update_phase(sac: SoftActorCritic, env_repr: EnvironmentRepresentation, decoder: RewardDecoder,
                 replay: ReplayBuffer, actor_opt, critic_opt, env_opt, agent_opts, env_opts,
                 generator: torch.Generator | None = None) -> dict[str, float]:
    """Decoder steps (K) then SAC updates (G) on the replay buffer; returns mean losses."""
    stats: dict[str, float] = {}
    if len(replay) == 0:
        return stats
    if env_opts.enabled and env_opts.decoder_steps > 0:
        stats = fit_decoder(env_repr, decoder, replay, env_opt, env_opts.decoder_steps,
                            batch_size=env_opts.batch_size, generator=generator)
    losses = []
    if len(replay) >= agent_opts.batch_size:
        device = next(sac.parameters()).device
        for _ in range(agent_opts.sac_updates):
            batch = replay.sample(agent_opts.batch_size, generator=generator)
            with torch.no_grad():
                z = env_repr.z_many(batch["epoch"].to(device)).detach()
            out = sac.update(batch, z, z, actor_opt, critic_opt, generator=generator)
            losses.append(float(out["critic_loss"]))
    stats["critic_loss"] = sum(losses) / len(losses) if losses else float("nan")
    return stats
