"""One agent epoch's learning: fit the environment representation, then the SAC updates.

Shared by the RewardDecoding callback and experiments/benchmarks/bench_agent.py, so the
benchmark measures exactly the code a run executes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import JointPruneError
from .env_repr import EnvironmentRepresentation, RewardDecoder, fit_decoder
from .replay import ReplayBuffer
from .sac import SoftActorCritic


class RewardNormalizer:
    """Rewards as the agent sees them: (reward - baseline) / scale, from the buffer's episodes.

    Rewards are accuracies: their spread between sub-networks is a few hundredths, far below the
    fixed entropy weight's scale (alpha = 0.1 on log-densities of order 1 per step, summed over
    the episode's L steps), so unscaled the entropy term dominates and the policy stays near
    uniform noise. Standardising makes alpha mean the same on every task. AMC subtracts a moving
    baseline; here the baseline is the mean finished-episode reward, over the whole buffer
    ("global") or per agent epoch ("epoch": removes the drift of accuracy as the CNN trains, but
    also the policy's own improvement), and scale the standard deviation around it.
    mode "none" leaves rewards as they are.
    """

    def __init__(self, replay: ReplayBuffer, mode: str = "global", min_scale: float = 1e-3):
        if mode not in ("global", "epoch", "none"):
            raise ValueError(f"reward normalisation must be 'global', 'epoch' or 'none', got {mode!r}.")
        self.mode = mode
        term = replay.terminal_indices()
        if mode == "none" or term.numel() == 0:
            self.baseline, self.scale, self.mode = torch.zeros(1), 1.0, "none"
            return
        r, e = replay.reward[term].double(), replay.epoch[term]
        if mode == "global":
            self.baseline = r.mean().reshape(1)
            dev = r - self.baseline
        else:
            n = int(e.max()) + 1
            count = torch.bincount(e, minlength=n).double()
            self.baseline = torch.bincount(e, weights=r, minlength=n) / count.clamp(min=1)
            dev = r - self.baseline[e]
        self.scale = max(float(dev.pow(2).mean().sqrt()), float(min_scale))
        self.baseline = self.baseline.float()

    def _base(self, epoch: Tensor) -> Tensor:
        b = self.baseline.to(epoch.device)
        return b[0].expand(epoch.shape) if self.mode != "epoch" else b[epoch.clamp(max=len(b) - 1)]

    def __call__(self, batch: dict, gamma: float) -> dict:
        """The batch with normalised "reward" and the observed discounted "return" (NaN if unknown)."""
        base = self._base(batch["epoch"])
        out = dict(batch)
        out["reward"] = (batch["reward"] - batch["done"] * base) / self.scale
        to_go = batch["to_go"]
        ret = gamma ** to_go.clamp(min=0).float() * (batch["final_reward"] - base) / self.scale
        out["return"] = torch.where(to_go >= 0, ret, torch.full_like(ret, float("nan")))
        return out


def check_agent_options(opts) -> None:
    """Reject agent settings the update phase cannot use, before training starts."""
    if opts.reward_normalization not in ("global", "epoch", "none"):
        raise JointPruneError(f"model.agent.reward_normalization must be 'global', 'epoch' or 'none', "
                              f"got {opts.reward_normalization!r}.")
    if not opts.reward_scale_floor > 0:
        raise JointPruneError(f"model.agent.reward_scale_floor must be positive, got {opts.reward_scale_floor}.")
    if not 0.0 <= opts.return_weight <= 1.0:
        raise JointPruneError(f"model.agent.return_weight must be in [0, 1], got {opts.return_weight}.")
    if isinstance(opts.refine_fraction, bool) or not 0.0 <= opts.refine_fraction <= 1.0:
        raise JointPruneError(f"model.agent.refine_fraction must be in [0, 1] (the share of each learned epoch's "
                              f"episodes that search near the incumbent), got {opts.refine_fraction!r}.")
    if isinstance(opts.refine_groups, bool) or not isinstance(opts.refine_groups, int) or opts.refine_groups < 1:
        raise JointPruneError(f"model.agent.refine_groups must be an integer >= 1 (groups changed per refining "
                              f"episode), got {opts.refine_groups!r}.")
    if isinstance(opts.refine_sigma, bool) or not opts.refine_sigma >= 0:
        raise JointPruneError(f"model.agent.refine_sigma must be >= 0 (the spread of the log kept counts), "
                              f"got {opts.refine_sigma!r}.")
    if opts.refine_move not in ("transfer", "scale"):
        raise JointPruneError(f"model.agent.refine_move must be 'transfer' (a scaled group trades FLOPs with another) "
                              f"or 'scale' (the last groups absorb the change), got {opts.refine_move!r}.")
    if isinstance(opts.random_spread, bool) or not 0.0 < opts.random_spread <= 1.0:
        raise JointPruneError(f"model.agent.random_spread must be in (0, 1] (the middle fraction of the action "
                              f"range random actions are drawn from), got {opts.random_spread!r}.")


def refine_episodes(opts, random: bool, has_incumbent: bool) -> int:
    """How many of an agent epoch's episodes search near the incumbent (`agent.refine_fraction`,
    rounded down): none in a random epoch or before there is an incumbent. Shared by the
    AgentEpisodes callback and experiments/benchmarks/bench_agent.py."""
    if random or not has_incumbent:
        return 0
    return int(opts.episodes_per_epoch * opts.refine_fraction)


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
        normalize = RewardNormalizer(replay, agent_opts.reward_normalization, agent_opts.reward_scale_floor)
        device = next(sac.parameters()).device
        for _ in range(agent_opts.sac_updates):
            batch = normalize(replay.sample(agent_opts.batch_size, generator=generator), sac.gamma)
            with torch.no_grad():
                z = env_repr.z_many(batch["epoch"].to(device)).detach()
            out = sac.update(batch, z, z, actor_opt, critic_opt, generator=generator)
            losses.append(float(out["critic_loss"]))
    stats["critic_loss"] = sum(losses) / len(losses) if losses else float("nan")
    return stats
