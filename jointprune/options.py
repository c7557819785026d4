"""Every knob of the method, grouped as in METHOD.md, with its default and where it comes from.

These dataclasses are the `model.*` sections of a config file (LightningCLI reads their fields),
e.g. `model.agent.episodes_per_epoch: 10`. [repro]: unofficial reproduction of the paper;
[ours]: our decision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .errors import JointPruneError


@dataclass
class PruningOptions:
    prune_coupled: bool = False        # also offer residual-coupled groups [ours]
    max_ratio: float = 0.8             # largest fraction of a group removed [repro]
    min_channels: int = 1              # channels always kept per group [ours]
    round_to: int = 1                  # kept counts are multiples of this (8 helps GPUs) [ours]
    importance: Literal["l1", "l2", "bn_scale"] = "l1"  # which channels a count keeps [repro]


@dataclass
class AlignmentOptions:
    weight: float = 1e-4               # lambda, the least pull per group [repro]
    per_channel: bool = False          # group lasso per removed channel; False: one norm per group (the paper's formula)
    squared: bool = False              # sum of squares instead of norms
    include_bn: bool = True            # also pull the removed channels' BN gamma/beta to 0 (else BN undoes the pull) [ours]
    # Raise lambda per group, re-estimated every epoch, so that the pull alone would empty the
    # group's removed slices after this fraction of the optimizer steps left before the cut;
    # None: the constant `weight` (the paper). [ours]
    empty_by: Optional[float] = 0.5
    # True: the penalty's exact proximal step after each SGD step (reaches zero, no oscillation,
    # not slowed by momentum); False: its gradient goes through SGD with the loss's (the paper). [ours]
    proximal: bool = True


@dataclass
class OptimOptions:
    lr: float = 0.1                    # SGD for the CNN [repro]
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    scheduler: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of max_epochs
    gamma: float = 0.1
    # layout of the conv weights (and so of the activations) while training: on CPU channels_last
    # steps up to 30 % faster (experiments/benchmarks/bench_memory_format.py); the export and the
    # latency report use the default layout either way [ours]
    memory_format: Literal["channels_last", "contiguous"] = "channels_last"


@dataclass
class ScheduleOptions:
    """Epochs are counted from 0. A float is a fraction of max_epochs, an int an epoch index."""
    warmup_epochs: int = 1             # dense CE before the agent starts
    agent_until: Union[int, float] = 0.5   # the agent acts at the end of epochs [warmup, agent_until)
    extract_at: Optional[Union[int, float]] = 0.75  # physical pruning at the start of this epoch;
    #                                               None or max_epochs: only at the end of fit


@dataclass
class AgentOptions:
    # "sac": the learned agent (the method). "uniform" / "random": baselines that fix the
    # sub-network at the first joint epoch (same ratio in every group / one random feasible
    # episode) and otherwise run the identical schedule, alignment and extraction.
    policy: Literal["sac", "uniform", "random"] = "sac"
    episodes_per_epoch: int = 10       # P [repro]
    random_epochs: int = 1             # agent epochs with uniform random actions [repro]
    sac_updates: int = 200             # G SAC updates per epoch [repro]
    batch_size: int = 64
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    alpha: float = 0.1                 # fixed entropy weight
    gamma: float = 0.99
    tau: float = 0.005
    hidden: int = 300
    replay_capacity: int = 100_000
    # Rewards standardised before SAC sees them (jointprune/agent/training.py RewardNormalizer):
    # "global" (mean/std of the buffer's episode rewards), "epoch" (per-epoch baseline) or "none".
    reward_normalization: Literal["global", "epoch", "none"] = "global"
    reward_scale_floor: float = 1e-3   # smallest std the rewards are divided by
    # Critic target = return_weight x the episode's observed discounted return + the rest x the
    # soft TD target (the reward arrives only at the episode's end; see SoftActorCritic.update).
    return_weight: float = 0.5
    # "uniform": the search starts from the uniform allocation as the incumbent, so the agent has
    # to find a sub-network that scores better before it replaces that prior; "none": the first
    # episode's sub-network is the first incumbent. [ours]
    initial_incumbent: Literal["uniform", "none"] = "uniform"
    # true: an action of max_ratio / 2 means the uniform ratio under the budget and the rest of
    # the range is warped around it (PruningEnvironment.warp), so exploration and the initial
    # policy start near uniform instead of squeezing the last groups; false: the paper's plain
    # removal ratio. [ours]
    centred_actions: bool = True
    # The random actions (random_epochs, and the `random` baseline) are uniform over this middle
    # fraction of the action range: with centred actions, allocations scattered around uniform
    # rather than anywhere the clipper allows (1.0: the whole range). [ours]
    random_spread: float = 0.5
    # Local search around the incumbent: in every learned agent epoch this fraction of the
    # stochastic episodes (rounded down) asks for the incumbent's allocation with `refine_groups`
    # random groups' kept counts scaled by exp(N(0, refine_sigma^2)); the clipper keeps the episode
    # within budget. The policy's samples rarely land near the best allocation found, so without
    # this the search never refines it (bench_agent.py). 0 turns it off. `refine_move`
    # "transfer": each scaled group trades FLOPs with another random group; "scale": the last
    # groups absorb the change (PruningEnvironment.rollout_near). [ours]
    refine_fraction: float = 0.5
    refine_groups: int = 3
    refine_sigma: float = 0.3
    refine_move: str = "transfer"


@dataclass
class EnvReprOptions:
    enabled: bool = True               # False: z is a constant (the paper's ablation)
    dim: int = 64
    decoder_steps: int = 100           # K [ours]
    lr: float = 1e-3
    batch_size: int = 64


@dataclass
class RewardOptions:
    bn_recalibration: bool = False     # re-estimate BN statistics of a candidate before scoring [ours]
    recalibration_batches: int = 2     # with source "train": training batches to re-estimate on
    # "train": re-estimate on training batches, then score (two passes). "reward": score with
    # the BN statistics of the reward images themselves (AdaBN-style, one pass, half the cost).
    recalibration_source: Literal["train", "reward"] = "train"
    # "top1": a sub-network's top-1 on the reward images (the paper's). "true_prob": the mean
    # probability it gives the true class, on the same 0-1 scale: every image counts by how sure
    # the network is, so 128 images rank sub-networks on the same weights closer to a large
    # sample's top-1 (Spearman +0.81 against +0.68, experiments/benchmarks/study_reward_metric.py).
    # Not the default: over 70 paired runs the finished networks were no better (README). [ours]
    metric: Literal["top1", "true_prob"] = "top1"
    max_samples: Optional[int] = None  # screen episodes on the first this many reward images (speed knob)
    # An episode that beats the incumbent on the screening images replaces it only if it also wins
    # on this many further reward images (disjoint from the screening ones), both re-scored there:
    # the best of many noisy scores is biased upward. None or 0: accept on the screening score. [ours]
    confirm_samples: Optional[int] = None
    # A contender must beat the incumbent by this many standard errors of a top-1 measured on the
    # images it is scored on (sqrt(p(1-p)/n)), on the screening and the confirmation images alike:
    # on a small reward split a lucky score is otherwise enough to replace a better incumbent.
    # 2, not 1: each agent epoch compares 5-10 episodes with the incumbent, and the best of them is
    # kept, so with 1 standard error a contender no better than the incumbent got in during 58-82 %
    # of the epochs (11-21 % with 2); over 50 paired runs the finished networks were 0.13 points
    # better with 2 (README, Results). [ours]
    accept_margin_se: float = 2.0
    # true: that standard error is the paired one of the difference between the contender and the
    # incumbent on the same images (McNemar: only images the two classify differently count), so
    # a near-uniform contender that is truly better can win on a small reward split; false: the
    # standard error of one top-1, sqrt(p(1-p)/n), several times larger for similar networks. [ours]
    paired: bool = True
    batch_size: int = 512


@dataclass
class ExportOptions:
    dirpath: Optional[str] = None      # default: <trainer.default_root_dir>/pruned
    onnx: bool = False
    # an export folder whose test top-1 the final table compares against (e.g. the same config run
    # dense: flops_budget 1.0, agent.policy uniform) [ours]
    baseline: Optional[str] = None
    check_at_start: bool = True        # check before epoch 0 that torch.export captures the dense CNN [ours]
    latency_runs: int = 3              # timed forward passes per network for the report, interleaved [ours]


@dataclass
class ClusterOptions:
    """Multi-process runs (DDP); see jointprune/callbacks/sync.py."""
    sync_timeout_s: float = 1800.0     # the agent's collectives fail with a sentence after this [ours]
    sigterm_grace_s: float = 60.0      # after SIGTERM, a run that has not stopped is ended [ours]


def resolve_epoch(name: str, value, max_epochs: int) -> int:
    """An epoch index from an int, or from a fraction of max_epochs."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JointPruneError(f"{name} must be an epoch index or a fraction of max_epochs, got {value!r}.")
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise JointPruneError(f"{name}={value} is a fraction of max_epochs and must be in [0, 1].")
        return int(round(value * max_epochs))
    if not 0 <= value <= max_epochs:
        raise JointPruneError(f"{name}={value} is beyond max_epochs={max_epochs}; use an epoch in [0, {max_epochs}].")
    return value


@dataclass
class LatencyOptions:
    """How `model.latency_budget` measures latency (README, "Latency budget") [ours]."""
    device: Optional[str] = None       # "cpu", "cuda:0", ...; default: the trainer's device
    batch_size: Optional[int] = None   # images per timed forward; default: the data's batch size
    grid_points: int = 4               # counts timed per group (fewest..dense), interpolated between
    warmup: int = 0                    # untimed calls first (the two-fastest rule already drops a slow cold call)
    repeats: int = 3                   # timed calls per table entry at least; the entry is the mean of
    max_repeats: int = 12              # the two fastest once they agree within 10 % (at most this many)
    network_repeats: int = 2           # hooked forwards (dense and fewest) timing what runs between layers (each piece its fastest; >= 2)
    calibrate: bool = False            # also time the whole net at the fewest counts and rescale the savings
    calibration_repeats: int = 7       # interleaved dense/small pairs for that (median ratio)
    cache_dir: Optional[str] = None    # default: $XDG_CACHE_HOME/jointprune or ~/.cache/jointprune
    cache: bool = True                 # False: measure every time, write nothing
    verify_rounds: int = 3             # after the agent: measure the incumbent, shrink it while it misses, grow it back while well under (0: off)
    verify_repeats: int = 9            # interleaved dense/incumbent pairs per such measurement (median ratio)
    correct_each_epoch: bool = True    # also measure the incumbent after every earlier agent epoch and aim later episodes at the model ratio that measures the budget (needs verify_rounds > 0)
