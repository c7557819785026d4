"""AgentEpisodes: at the end of each joint-phase epoch, run P pruning episodes on the current
weights, score each sub-network on the reward split, store the transitions, and keep the best
sub-network found so far (the incumbent), re-scored on the current weights first because old
rewards were measured on older weights."""
from __future__ import annotations

import time

import lightning as L
import torch

from ..agent.reward import RewardScorer
from ..errors import JointPruneError
from ..pruning import group_importance, top_k_masks
from .sync import all_reduce_sum, broadcast_object, is_agent_point, rank_and_world, shard


class AgentEpisodes(L.Callback):
    def __init__(self):
        self.scorer: RewardScorer | None = None

    def on_train_start(self, trainer, pm) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "reward_tensors"):
            raise JointPruneError("data must be a jointprune DataModule (or provide reward_tensors()) so the "
                                  "agent can score sub-networks on a held-out reward split.")
        if hasattr(dm, "reward_split"):  # this rank's shard, compact (uint8), normalised per batch
            x, y, normalize = dm.reward_split(*rank_and_world(), limit=pm.reward_opts.max_samples)
        else:
            x, y = dm.reward_tensors()
            x, y, normalize = shard(x[:pm.reward_opts.max_samples]), shard(y[:pm.reward_opts.max_samples]), None
        self.scorer = RewardScorer(pm.plan, x.to(pm.device), y.to(pm.device), normalize=normalize,
                                   batch_size=pm.reward_opts.batch_size, all_reduce=all_reduce_sum,
                                   precision=pm.precision_context)

    def on_train_batch_end(self, trainer, pm, outputs, batch, batch_idx) -> None:
        if is_agent_point(trainer, batch_idx):  # why there, not at the epoch end: callbacks/sync.py
            self.run_epoch(trainer, pm)

    def run_epoch(self, trainer, pm) -> None:
        epoch = trainer.current_epoch
        if not pm.agent_active(epoch):
            return
        start = time.perf_counter()
        if pm.agent_opts.policy != "sac":
            self._baseline(pm, start)
            return
        t = pm.agent_epoch(epoch)
        pm.env_repr.begin_epoch(t)
        with torch.no_grad():
            scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
            recal, batch_stats = pm.reward_calibration()
            if pm.incumbent_kept is not None:  # old rewards were earned on older weights
                pm.incumbent_masks = top_k_masks(scores, pm.incumbent_kept)
                pm.incumbent_reward = self.scorer(pm.cnn, pm.incumbent_masks, recal, batch_stats)
            z = pm.env_repr.z(t).detach().cpu()
            random = t < pm.agent_opts.random_epochs
            rewards = []
            for _ in range(pm.agent_opts.episodes_per_epoch):
                episode = self._rollout(pm, z, random)
                masks = top_k_masks(scores, episode.kept)
                reward = self.scorer(pm.cnn, masks, recal, batch_stats)
                rewards.append(reward)
                n = len(episode.kept)
                r = torch.zeros(n)
                r[-1] = reward  # only the finished sub-network is scored
                pm.replay.add(episode.states, episode.actions[:, None], r, episode.next_states, episode.dones,
                              torch.full((n,), t, dtype=torch.long))
                if reward > pm.incumbent_reward:
                    pm.incumbent_kept, pm.incumbent_reward, pm.incumbent_masks = list(episode.kept), reward, masks
        pm.epoch_stats = {
            "reward_mean": sum(rewards) / len(rewards), "reward_best": max(rewards),
            "incumbent_reward": pm.incumbent_reward, "flops_ratio": pm.flops_ratio(),
            "agent_seconds": time.perf_counter() - start, "random_actions": float(random),
        }

    def _baseline(self, pm, start: float) -> None:
        """Uniform or random allocation, chosen once; no learning, same schedule otherwise."""
        if pm.incumbent_kept is None:
            if pm.agent_opts.policy == "uniform":
                pm.incumbent_kept = pm.environment.uniform_under_budget()
            else:
                pm.incumbent_kept = self._rollout(pm, None, True).kept
        scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
        pm.incumbent_masks = top_k_masks(scores, pm.incumbent_kept)
        pm.incumbent_reward = self.scorer(pm.cnn, pm.incumbent_masks, *pm.reward_calibration())
        pm.epoch_stats = {"reward_mean": pm.incumbent_reward, "reward_best": pm.incumbent_reward,
                          "incumbent_reward": pm.incumbent_reward, "flops_ratio": pm.flops_ratio(),
                          "agent_seconds": time.perf_counter() - start, "random_actions": 0.0}

    def _rollout(self, pm, z: torch.Tensor, random: bool):
        """Actions are drawn on rank 0 and broadcast, so every rank scores the same sub-networks."""
        def policy(state):
            if random:
                return float(pm.sac.random_action(1, generator=pm.agent_generator)[0, 0])
            with torch.no_grad():
                dev = next(pm.sac.parameters()).device
                action = pm.sac.act(state.to(dev), z.to(dev), generator=pm.agent_generator)
            return float(action.reshape(-1)[0])
        episode = pm.environment.rollout(policy)
        return broadcast_object(episode)
