"""Kept-channel rules and the hard FLOPs budget, enforced by clipping each action (as in AMC).

Actions are fractions of a group's channels to remove. They become kept-channel counts through
`KeepRule` (at least `min_channels`, multiples of `round_to`, never more removed than
`max_ratio`), and `BudgetClipper` clips the count of group l so that, whatever the later groups
do within their own limits, the network can still end at or under the budget. The bounds come
from the exact FLOPs polynomial evaluated over every allowed count of group l at once.
"""
from __future__ import annotations

from ..errors import JointPruneError

import math
from dataclasses import dataclass

import numpy as np

from .flops import FlopsModel, check_budget


@dataclass(frozen=True)
class KeepRule:
    max_ratio: float = 0.8
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self):
        if not 0.0 <= self.max_ratio < 1.0:
            raise JointPruneError(f"max_ratio must be in [0, 1), got {self.max_ratio!r}.")
        if self.min_channels < 1 or self.round_to < 1:
            raise JointPruneError(f"min_channels and round_to must be at least 1, got {self.min_channels} and {self.round_to}.")

    def keep(self, size: int, ratio: float, multiple: int = 1) -> int:
        """Channels kept when `ratio` of `size` is removed, after rounding up to the rule."""
        if not math.isfinite(ratio):
            raise JointPruneError(f"the agent proposed a non-finite pruning ratio ({ratio}); the actor has diverged, "
                                  "lower model.agent.actor_lr.")
        kept = size - math.floor(min(max(ratio, 0.0), self.max_ratio) * size + 1e-9)
        cands = self.candidates(size, multiple)
        return int(cands[min(np.searchsorted(cands, kept), len(cands) - 1)])

    def candidates(self, size: int, multiple: int = 1) -> np.ndarray:
        """Every kept count this rule allows for a group of `size` channels, ascending."""
        fewest = size - math.floor(self.max_ratio * size + 1e-9)
        fewest = min(size, max(fewest, self.min_channels))
        counts = [k for k in range(fewest, size + 1) if k % self.round_to == 0 or k == size]
        if multiple > 1:  # TEMP until the clip helper's version: grouped-conv segments
            counts = [k for k in range(multiple, size + 1, multiple) if k >= fewest or k == size] or [size]
        return np.asarray(counts, dtype=np.int64)


class BudgetClipper:
    """Clips kept counts group by group so that the final network meets `budget` x dense FLOPs."""

    def __init__(self, flops: FlopsModel, budget: float, rule: KeepRule = KeepRule()):
        self.flops, self.rule = flops, rule
        self.budget = check_budget(budget)
        self.limit = self.budget * flops.dense
        self.sizes = [int(n) for n in flops.sizes]
        self.multiples = [getattr(g, "multiple", 1) for g in flops.structure.groups]
        self.candidates = [rule.candidates(n, m) for n, m in zip(self.sizes, self.multiples)]
        self.fewest = np.array([c[0] for c in self.candidates], dtype=np.float64)
        smallest = self.flops(self.fewest)
        if not self._fits(smallest):
            raise JointPruneError(
                f"flops_budget={budget} cannot be met: pruning every group as hard as allowed "
                f"(max_ratio={rule.max_ratio}, min_channels={rule.min_channels}, round_to={rule.round_to}) "
                f"still leaves {smallest / flops.dense:.3f} of the dense FLOPs; raise the budget or max_ratio.")

    def _fits(self, value) -> np.ndarray | bool:
        # FLOPs are integers; the float polynomial is exact to well under 0.5.
        return np.rint(value) <= self.limit

    def bounds(self, kept_so_far: list[int]) -> tuple[int, int]:
        """[fewest, most] channels group l = len(kept_so_far) may keep and stay feasible."""
        l = len(kept_so_far)
        cands = self.candidates[l]
        trial = np.tile(self.fewest, (len(cands), 1))
        trial[:, :l] = kept_so_far
        trial[:, l] = cands
        feasible = self._fits(self.flops(trial))
        # Feasibility is monotone in the count (FLOPs only grow with channels), and the fewest
        # count is always feasible when the prefix came from this clipper.
        most = cands[feasible][-1] if feasible.any() else cands[0]
        return int(cands[0]), int(most)

    def clip(self, kept_so_far: list[int], ratio: float) -> tuple[int, float, float, float]:
        """(kept, effective ratio, ratio lower bound, ratio upper bound) for the next group."""
        l = len(kept_so_far)
        size = self.sizes[l]
        fewest, most = self.bounds(kept_so_far)
        kept = min(max(self.rule.keep(size, ratio, self.multiples[l]), fewest), most)
        return kept, 1.0 - kept / size, 1.0 - most / size, 1.0 - fewest / size

    def check(self, kept) -> float:
        """FLOPs of a finished choice; raises if the hard budget were ever broken."""
        value = self.flops(np.asarray(kept, dtype=np.float64))
        if not self._fits(value):
            raise AssertionError(f"budget violated: {value:.0f} FLOPs > {self.limit:.0f} allowed")
        return value
