"""The pruning environment: one episode walks the prunable groups in order, one action each.

State of group l (METHOD.md section 3), every feature scaled to about [0, 1]:
  l / L, in channels, out channels, stride, kernel size (each over the network's maximum),
  the group's own FLOPs, the network's FLOPs with the actions so far and the rest dense, the
  FLOPs of the groups after l (dense), the previous action (all FLOPs over the dense total).
The action is clipped by the BudgetClipper, so every finished episode meets the budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..pruning.budget import BudgetClipper
from ..pruning.flops import FlopsModel
from ..pruning.structure import ChannelStructure

STATE_DIM = 9


@dataclass
class Episode:
    states: torch.Tensor       # [L, STATE_DIM]
    actions: torch.Tensor      # [L] effective (clipped) removal ratios
    next_states: torch.Tensor  # [L, STATE_DIM]
    kept: list[int]            # channels kept per group
    flops: float               # exact FLOPs of the chosen sub-network

    @property
    def dones(self) -> torch.Tensor:
        done = torch.zeros(len(self.kept))
        done[-1] = 1.0
        return done


class PruningEnvironment:
    def __init__(self, structure: ChannelStructure, flops: FlopsModel, clipper: BudgetClipper):
        self.structure, self.flops, self.clipper = structure, flops, clipper
        groups = structure.groups
        self.n = len(groups)
        ins = np.array([g.in_channels for g in groups], dtype=np.float64)
        outs = np.array([g.size for g in groups], dtype=np.float64)
        strides = np.array([g.stride for g in groups], dtype=np.float64)
        kernels = np.array([g.kernel_size for g in groups], dtype=np.float64)
        own = flops.group_flops() / flops.dense
        after = np.concatenate([np.cumsum(own[::-1])[::-1][1:], [0.0]])
        self.static = np.stack([np.arange(self.n) / max(self.n - 1, 1), ins / ins.max(), outs / outs.max(),
                                strides / strides.max(), kernels / kernels.max(), own, after], axis=1)

    def state(self, kept_so_far: list[int], prev_action: float) -> np.ndarray:
        l = len(kept_so_far)
        current = self.flops(np.concatenate([kept_so_far, self.flops.sizes[l:]])) / self.flops.dense
        s = self.static[min(l, self.n - 1)]
        return np.array([s[0], s[1], s[2], s[3], s[4], s[5], current, s[6], prev_action], dtype=np.float32)

    def rollout(self, policy: Callable[[torch.Tensor], float]) -> Episode:
        """Run one episode; `policy(state)` returns the raw removal ratio for that state."""
        kept: list[int] = []
        states, actions = [], []
        prev = 0.0
        for _ in range(self.n):
            s = self.state(kept, prev)
            raw = float(policy(torch.from_numpy(s)))
            k, ratio, _, _ = self.clipper.clip(kept, raw)
            kept.append(k)
            states.append(s)
            actions.append(ratio)
            prev = ratio
        final = self.state(kept[:-1], prev)  # terminal next-state: not used by the target (done=1)
        states_t = torch.from_numpy(np.stack(states))
        next_states = torch.cat([states_t[1:], torch.from_numpy(final)[None]])
        flops = self.clipper.check(kept)  # the hard guarantee, asserted after every episode
        return Episode(states_t, torch.tensor(actions, dtype=torch.float32), next_states, kept, flops)

    def uniform(self, ratio: float) -> list[int]:
        """Kept counts for the same removal ratio in every group, clipped to the budget."""
        kept: list[int] = []
        for _ in range(self.n):
            kept.append(self.clipper.clip(kept, ratio)[0])
        return kept

    def uniform_under_budget(self, steps: int = 30) -> list[int]:
        """The smallest common removal ratio whose (clipped) result fits the budget: the
        uniform baseline. Binary search, since FLOPs fall as the common ratio grows."""
        lo, hi = 0.0, self.clipper.rule.max_ratio
        best = self.uniform(hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            kept = self.uniform(mid)
            if all(k == self.clipper.rule.keep(n, mid) for k, n in zip(kept, self.clipper.sizes)):
                best, hi = kept, mid  # no clipping was needed: the ratio alone meets the budget
            else:
                lo = mid
        return best
