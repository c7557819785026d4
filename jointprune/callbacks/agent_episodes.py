"""AgentEpisodes: at the end of each joint-phase epoch, run P pruning episodes on the current
weights, score each sub-network on the reward split, store the transitions, and keep the best
sub-network found so far (the incumbent), re-scored on the current weights first because old
rewards were measured on older weights.

The best of many noisy scores is biased upward, so an episode that beats the incumbent on the
screening images (`reward.max_samples`) only replaces it after both are re-scored on the other,
disjoint reward images (`reward.confirm_samples`). "Beats" means by `reward.accept_margin_se`
standard errors of the paired difference on the same images (`reward.paired`). One episode
per epoch follows the policy's mean action (deterministic), and `agent.refine_fraction` of the
others search near the incumbent. At the start of every epoch with masks, lambda is set per
group (`alignment.empty_by`) so that the removed channels are empty by the cut."""
from __future__ import annotations

import math

import time

import lightning as L
import torch

from ..agent.reward import RewardScorer
from ..agent.training import refine_episodes
from ..errors import JointPruneError
from ..pruning import group_importance, top_k_masks
from ..pruning.align import deadline_weights
from . import latency_verify
from .sync import all_reduce_sum, broadcast_object, is_agent_point, rank_and_world, shard


class AgentEpisodes(L.Callback):
    def __init__(self):
        self.scorer: RewardScorer | None = None
        self.confirmer: RewardScorer | None = None
        self.margin_se = 0.0                  # model.reward.accept_margin_se, set at train start
        self.paired = True                    # model.reward.paired
        self.screen_n = self.confirm_n = 0    # reward images behind a screening / confirming score

    def on_train_start(self, trainer, pm) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "reward_tensors"):
            raise JointPruneError("data must be a jointprune DataModule (or provide reward_tensors()) so the "
                                  "agent can score sub-networks on a held-out reward split.")
        a = pm.alignment
        if a.empty_by is not None and (a.squared or not 0 < a.empty_by <= 1):
            raise JointPruneError(f"model.alignment.empty_by={a.empty_by} must be in (0, 1] and needs the unsquared "
                                  "norm (alignment.squared: false); or set empty_by: null for a constant lambda.")
        r = pm.reward_opts
        total = len(dm.splits["reward"]) if hasattr(dm, "reward_split") else len(dm.reward_tensors()[1])
        screen = r.max_samples if r.max_samples is not None else total
        # the first `screen` reward images score every episode; a contender that beats the
        # incumbent there is confirmed on the next `confirm_samples`, disjoint ones
        self.scorer = self._scorer(pm, dm, 0, screen)
        self.screen_n = min(screen, total)
        self.confirmer = None
        if r.confirm_samples is not None and r.confirm_samples > 0 and screen < total:
            self.confirmer = self._scorer(pm, dm, screen, r.confirm_samples)
            self.confirm_n = min(r.confirm_samples, total - screen)
        if r.accept_margin_se < 0:
            raise JointPruneError(f"model.reward.accept_margin_se={r.accept_margin_se} must be >= 0 "
                                  "(standard errors a contender must win by; 0 accepts any improvement).")
        self.margin_se = r.accept_margin_se
        self.paired = r.paired

    @staticmethod
    def _scorer(pm, dm, start: int, count: int) -> RewardScorer:
        """A scorer over reward images [start, start + count): this rank's shard, compact (uint8)
        and normalised per batch on the device where the DataModule offers it."""
        if hasattr(dm, "reward_split"):
            x, y, normalize = dm.reward_split(*rank_and_world(), limit=count, start=start)
        else:
            x, y = dm.reward_tensors()
            x, y, normalize = shard(x[start:start + count]), shard(y[start:start + count]), None
        return RewardScorer(pm.plan, x.to(pm.device), y.to(pm.device), normalize=normalize,
                            batch_size=pm.reward_opts.batch_size, all_reduce=all_reduce_sum,
                            precision=pm.precision_context, metric=pm.reward_opts.metric)

    def on_train_epoch_start(self, trainer, pm) -> None:
        """lambda per group for this epoch: strong enough that the removed slices empty before the cut."""
        masks = pm.current_masks()
        a = pm.alignment
        if masks is None or a.empty_by is None or a.weight <= 0:
            pm.aligner.set_group_weights(None)
            return
        steps = trainer.num_training_batches
        epochs_left = pm.epochs["extract_at"] - trainer.current_epoch
        if not (isinstance(steps, int) or float(steps).is_integer()) or epochs_left < 1:
            pm.aligner.set_group_weights(None)
            return
        opt = pm.optimizers()[0] if isinstance(pm.optimizers(), list) else pm.optimizers()
        lr = opt.param_groups[0]["lr"]
        norms = pm.aligner.group_norms(pm.cnn, masks)
        lam = deadline_weights(norms, base=a.weight, lr=lr, momentum=pm.optim.momentum,
                               steps_left=int(steps) * epochs_left, empty_by=a.empty_by, proximal=a.proximal)
        # Channels already emptied measure ~0 and would get only the floor, and the loss regrows
        # them: while the removed channels stay the same, lambda never goes down.
        last = getattr(pm, "align_floor", None)  # checkpointed by the module, so resume is exact
        if last is not None and all(torch.equal(m.cpu(), o) for m, o in zip(masks, last["masks"])):
            lam = torch.maximum(lam, last["lam"].to(lam.device))
        pm.align_floor = {"masks": [m.detach().cpu() for m in masks], "lam": lam.detach().cpu()}
        pm.aligner.set_group_weights(lam)

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
            self._verify_latency(trainer, pm)
            return
        t = pm.agent_epoch(epoch)
        pm.env_repr.begin_epoch(t)
        with torch.no_grad():
            scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
            recal, batch_stats = pm.reward_calibration()
            screened, incumbent_hits = -float("inf"), None
            if pm.incumbent_kept is None and pm.agent_opts.initial_incumbent == "uniform":
                pm.incumbent_kept = pm.environment.uniform_under_budget()  # the prior to beat
            if pm.incumbent_kept is not None:  # old rewards were earned on older weights
                pm.incumbent_masks = top_k_masks(scores, pm.incumbent_kept)
                screened, incumbent_hits = self.scorer.score(pm.cnn, pm.incumbent_masks, recal, batch_stats)
                pm.incumbent_reward = screened
            z = pm.env_repr.z(t).detach().cpu()
            random = t < pm.agent_opts.random_epochs
            rewards, contenders = [], []
            # the stochastic episodes (the first `refine` of them near the incumbent), then one at
            # the policy's mean (deterministic)
            opts = pm.agent_opts
            refine = refine_episodes(opts, random, pm.incumbent_kept is not None)
            for i in range(opts.episodes_per_epoch + (0 if random else 1)):
                if i < refine:
                    episode = self._near_incumbent(pm)
                else:
                    episode = self._rollout(pm, z, random, deterministic=i == opts.episodes_per_epoch)
                masks = top_k_masks(scores, episode.kept)
                reward, hits = self.scorer.score(pm.cnn, masks, recal, batch_stats)
                rewards.append(reward)
                n = len(episode.kept)
                r = torch.zeros(n)
                r[-1] = reward  # only the finished sub-network is scored
                pm.replay.add(episode.states, episode.actions[:, None], r, episode.next_states, episode.dones,
                              torch.full((n,), t, dtype=torch.long))
                if self._beats(self.scorer, reward, hits, screened, incumbent_hits, self.screen_n):
                    contenders.append((reward, list(episode.kept), masks))
            confirmed = self._accept(pm, contenders, recal, batch_stats)
        pm.epoch_stats = {
            "reward_mean": sum(rewards) / len(rewards), "reward_best": max(rewards),
            "incumbent_reward": pm.incumbent_reward, "flops_ratio": pm.flops_ratio(),
            "agent_seconds": time.perf_counter() - start, "random_actions": float(random),
            "contenders_confirmed": float(confirmed), "refine_episodes": float(refine),
        }
        self._verify_latency(trainer, pm)

    def _beats(self, scorer: RewardScorer, reward: float, hits, base: float, base_hits, n: int) -> bool:
        """Whether a sub-network scoring `reward` (per-image `hits`) beats the incumbent's `base`
        by `margin_se` standard errors: of the paired difference on the same images
        (`reward.paired`, the default), or of one top-1 measured on n images."""
        if base_hits is None or not self.paired:
            return reward > base + self._margin(base, n)
        gain, se = scorer.paired_gain(base_hits, hits)
        return gain > 0 and gain > self.margin_se * se

    def _margin(self, top1: float, n: int) -> float:
        """How much a contender must win by: `margin_se` standard errors of a top-1 of `top1`
        measured on n images (0 without an incumbent or a margin). For a true_prob reward this
        bounds its standard error from above: a mean of values in [0, 1] varies at most as much
        as a top-1 with the same mean."""
        if self.margin_se <= 0 or n <= 0 or not math.isfinite(top1):
            return 0.0
        return self.margin_se * math.sqrt(max(top1 * (1.0 - top1), 0.0) / n)

    def _accept(self, pm, contenders, recal, batch_stats) -> int:
        """Replace the incumbent by the best screened contender only if it also wins on the
        disjoint confirmation images (both re-scored there on the current weights). Returns how
        many contenders were re-scored."""
        if not contenders:
            return 0
        reward, kept, masks = max(contenders, key=lambda c: c[0])
        if self.confirmer is None or pm.incumbent_kept is None:
            pm.incumbent_kept, pm.incumbent_reward, pm.incumbent_masks = kept, reward, masks
            return 0
        incumbent, incumbent_hits = self.confirmer.score(pm.cnn, pm.incumbent_masks, recal, batch_stats)
        challenger, hits = self.confirmer.score(pm.cnn, masks, recal, batch_stats)
        if self._beats(self.confirmer, challenger, hits, incumbent, incumbent_hits, self.confirm_n):
            pm.incumbent_kept, pm.incumbent_reward, pm.incumbent_masks = kept, challenger, masks
        else:
            pm.incumbent_reward = incumbent
        return 1

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

    def _verify_latency(self, trainer, pm) -> None:
        """After an earlier agent epoch, the aim corrected (`_correct_latency_aim`); after the
        agent's last epoch, the incumbent measured on the latency device and shrunk until it meets
        the latency budget, or grown back while it measures well under (callbacks/latency_verify.py).
        The summary line shows either."""
        if latency_verify.correction_due(trainer, pm):
            self._correct_latency_aim(trainer, pm)
        if not latency_verify.due(trainer, pm):
            return
        start = time.perf_counter()
        kept = list(pm.incumbent_kept)
        result = latency_verify.verify_incumbent(trainer, pm)
        self._rescore_if_moved(pm, kept)
        stats = pm.epoch_stats
        last = result["rounds"][result["accepted"]]  # the measurement of the network kept
        stats["latency_measured"], stats["latency_predicted"] = last["measured"], last["predicted"]
        stats["latency_rounds"] = float(len(result["rounds"]) - 1)
        stats["agent_seconds"] += time.perf_counter() - start

    def _correct_latency_aim(self, trainer, pm) -> None:
        """After an earlier agent epoch: the incumbent measured once, and the model ratio later
        episodes are clipped to moved so that they measure the budget (callbacks/latency_verify.py)."""
        start = time.perf_counter()
        kept = list(pm.incumbent_kept)
        out = latency_verify.correct_aim(trainer, pm)
        self._rescore_if_moved(pm, kept)
        stats = pm.epoch_stats
        stats["latency_measured"], stats["latency_predicted"] = out["measured"], out["predicted"]
        stats["latency_target"] = out["target"]
        stats["agent_seconds"] += time.perf_counter() - start

    def _rescore_if_moved(self, pm, kept: list[int]) -> None:
        """An incumbent a latency check moved from `kept` (shrunk or grown): its reward and FLOPs are new."""
        if pm.incumbent_kept != kept:
            with torch.no_grad():
                pm.incumbent_reward = self.scorer(pm.cnn, pm.incumbent_masks, *pm.reward_calibration())
            pm.epoch_stats["incumbent_reward"], pm.epoch_stats["flops_ratio"] = pm.incumbent_reward, pm.flops_ratio()

    def _near_incumbent(self, pm):
        """A neighbour of the incumbent (PruningEnvironment.rollout_near), drawn on rank 0 and
        broadcast like every episode."""
        o = pm.agent_opts
        episode = pm.environment.rollout_near(pm.incumbent_kept, o.refine_groups, o.refine_sigma,
                                               pm.agent_generator, o.refine_move)
        return broadcast_object(episode)

    def _rollout(self, pm, z: torch.Tensor, random: bool, deterministic: bool = False):
        """Actions are drawn on rank 0 and broadcast, so every rank scores the same sub-networks."""
        def policy(state):
            if random:
                return float(pm.sac.random_action(1, generator=pm.agent_generator,
                                                  spread=pm.agent_opts.random_spread)[0, 0])
            with torch.no_grad():
                dev = next(pm.sac.parameters()).device
                action = pm.sac.act(state.to(dev), z.to(dev), deterministic=deterministic,
                                    generator=pm.agent_generator)
            return float(action.reshape(-1)[0])
        episode = pm.environment.rollout(policy)
        return broadcast_object(episode)
