"""Kept-channel rules and hard cost budgets, enforced by clipping each action (as in AMC).

Actions are fractions of a group's channels to remove. They become kept-channel counts through
`KeepRule` (at least `min_channels`, multiples of `round_to` and of the group's `multiple`,
never more removed than `max_ratio`). `BudgetClipper` then clips the count of group l into a
window of allowed counts, from both sides:

* **Upper side (the guarantee).** Every count in the window leaves a completion of the later
  groups under which every cost (FLOPs, and any `extra_costs` such as latency) ends at or under
  its budget. So every finished episode meets every budget, for any action sequence.
* **Lower side (use the budget).** A count is left out of the window when, even with every later
  group kept dense, no cost would reach its budget: such a count would waste budget that no
  later group can take up. If that leaves no count, the window is the largest feasible count.

**One channel-step (what "uses the budget" means exactly).** Let `a` be the last group whose
final count is below its dense size (the last group that could still have kept more). Then
either some cost sits exactly at its budget, or raising group `a` alone to its next allowed count
would push some cost over its budget. With FLOPs alone that reads: budget − F(k) < F(k with
group a one allowed count higher) − F(k), i.e. the episode ends within one allowed count step of
the last adjustable group. With several costs it holds for whichever cost binds first. Proof
sketch: the window keeps the invariant "the prefix has a feasible completion" (upper side) and,
while possible, "keeping the rest dense would reach a budget" (lower side). If group a's count
was picked inside the lower side, the rest was then kept dense, so the final network *is* that
completion: feasible and reaching, hence exactly at a budget. Otherwise a got the largest
feasible count, and its next count is infeasible even with the rest dense, which the rest is.

**Non-monotone costs.** Latency is not monotone in channel counts, so nothing here assumes a
cost grows with channels. Feasibility of a count is checked against a few fixed *reference
completions* of the later groups (every group at its fewest count, every group dense, and a
reference found at construction by coordinate descent on the worst cost-over-budget ratio); a
count is feasible if any reference completes it under every budget. The invariant survives any
choice: if reference r completed the prefix, then r's own count for the next group, completed by
r again, is feasible at the next step. We chose references over an exact dynamic programme
because the cost interface is a black box (`__call__` on kept counts); a DP over the chain of
layers would need every cost to expose its pairwise structure, and it could only widen the window
(more freedom), never change the guarantee. The coordinate descent is exact for FLOPs (the fewest
counts are the minimum) and finds a local minimum for other costs.

A cost model has `name: str`, `dense: float` (the dense network's cost) and `__call__(kept)` on a
kept-count vector [G] (returns a float) or a batch [N, G] (returns an array [N]).
"""
from __future__ import annotations

from ..errors import JointPruneError

import math
from dataclasses import dataclass
from typing import Any, Sequence

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
        """Every kept count this rule allows for a group of `size` channels, ascending.

        A count must be a multiple of `round_to` and of `multiple` (a group coupled to a grouped
        convolution loses the same number of channels in every conv group); `size` itself is
        always allowed."""
        fewest = size - math.floor(self.max_ratio * size + 1e-9)
        fewest = min(size, max(fewest, self.min_channels))
        step = math.lcm(self.round_to, max(int(multiple), 1))
        counts = [k for k in range(fewest, size + 1) if k % step == 0 or k == size]
        return np.asarray(counts, dtype=np.int64)


class CostBudget:
    """One cost model with its budget, a fraction of the dense network's cost."""

    def __init__(self, model: Any, fraction: float):
        self.model, self.fraction = model, float(fraction)
        self.name = str(getattr(model, "name", "flops"))
        self.dense = float(model.dense)
        self.limit = self.fraction * self.dense
        # FLOPs are integers and the float polynomial is exact to well under 0.5: compare the
        # rounded value, so that float noise never rejects an exact fit.
        self._integer = isinstance(model, FlopsModel)

    def value(self, value):
        return np.rint(value) if self._integer else np.asarray(value, dtype=np.float64)

    def fits(self, value):
        return self.value(value) <= self.limit

    def reaches(self, value):
        return self.value(value) >= self.limit


def _check_fraction(fraction: float, name: str) -> float:
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or math.isnan(fraction) \
            or not 0.0 < fraction <= 1.0:
        raise JointPruneError(f"{name}_budget must be a fraction of the dense {name} in (0, 1], got {fraction!r}.")
    return float(fraction)


class BudgetClipper:
    """Clips kept counts group by group so that the final network meets every cost budget and
    uses the binding one to within one channel-step (see the module docstring)."""

    def __init__(self, flops: FlopsModel, budget: float, rule: KeepRule = KeepRule(), *,
                 extra_costs: Sequence[tuple[Any, float]] = ()):
        self.flops, self.rule = flops, rule
        self.budget = check_budget(budget)
        self.limit = self.budget * flops.dense
        self.sizes = [int(n) for n in flops.sizes]
        groups = getattr(getattr(flops, "structure", None), "groups", None)
        self.multiples = [int(getattr(g, "multiple", 1)) for g in groups] if groups is not None else [1] * len(self.sizes)
        names = [getattr(g, "name", f"#{i}") for i, g in enumerate(groups)] if groups is not None \
            else [f"#{i}" for i in range(len(self.sizes))]
        for name, size in zip(names, self.sizes):
            if rule.min_channels > size:
                raise JointPruneError(
                    f"min_channels={rule.min_channels} cannot be met: group {name} has only {size} channels; "
                    f"set min_channels to at most {min(self.sizes)}.")
        self.candidates = [rule.candidates(n, m) for n, m in zip(self.sizes, self.multiples)]
        self.fewest = np.array([c[0] for c in self.candidates], dtype=np.float64)
        self.dense_counts = np.array(self.sizes, dtype=np.float64)
        self.costs = [CostBudget(flops, self.budget)]
        for model, fraction in extra_costs:
            name = str(getattr(model, "name", "cost"))
            self.costs.append(CostBudget(model, _check_fraction(fraction, name)))
        self.extra_costs = [(c.model, c.fraction) for c in self.costs[1:]]
        self._check_reachable()
        refs = [self.fewest, self.reference, self.dense_counts]
        unique = []
        for r in refs:
            if not any(np.array_equal(r, u) for u in unique):
                unique.append(r)
        # The dense completion is always last: the lower side reads its rows.
        if not np.array_equal(unique[-1], self.dense_counts):
            unique = [u for u in unique if not np.array_equal(u, self.dense_counts)] + [self.dense_counts]
        self._refs = np.stack(unique)
        # Per group, the batch window() evaluates: every (reference completion, candidate) pair.
        # Built once; a step only writes the prefix into a copy.
        self._trials = []
        for l, cands in enumerate(self.candidates):
            trial = np.repeat(self._refs, len(cands), axis=0)
            trial[:, l] = np.tile(cands, len(self._refs))
            self._trials.append(trial)

    # -- construction ---------------------------------------------------------------------------
    def _descend(self, score, start: np.ndarray, sweeps: int = 10) -> np.ndarray:
        """Coordinate descent over the allowed counts: each group in turn takes the count that
        lowers `score` (a function of a batch [N, G]) most, until a sweep changes nothing."""
        best = start.copy()
        current = float(score(best[None])[0])
        for _ in range(sweeps):
            changed = False
            for g, cands in enumerate(self.candidates):
                trial = np.tile(best, (len(cands), 1))
                trial[:, g] = cands
                values = score(trial)
                i = int(np.argmin(values))
                if values[i] < current - 1e-12 * max(abs(current), 1.0):
                    best, current, changed = trial[i].copy(), float(values[i]), True
            if not changed:
                break
        return best

    def _rules(self) -> str:
        r = self.rule
        return f"max_ratio={r.max_ratio}, min_channels={r.min_channels}, round_to={r.round_to}"

    def _check_reachable(self) -> None:
        for c in self.costs:
            smallest = float(c.model(self._descend(lambda k, c=c: np.asarray(c.model(k)), self.fewest)[None])[0])
            if not bool(c.fits(smallest)):
                if c is self.costs[0]:
                    raise JointPruneError(
                        f"flops_budget={self.budget} cannot be met: pruning every group as hard as allowed "
                        f"({self._rules()}) still leaves {smallest / c.dense:.3f} of the dense FLOPs; "
                        "raise the budget or max_ratio.")
                raise JointPruneError(
                    f"{c.name}_budget={c.fraction} cannot be met: the smallest {c.name} found within the keep rules "
                    f"({self._rules()}) is {smallest / c.dense:.3f} of the dense {c.name}; raise the budget or max_ratio.")

        def worst(k):
            return np.max([np.asarray(c.model(k)) / c.limit for c in self.costs], axis=0)

        self.reference = self.fewest.copy() if self._fits_all(self.fewest[None])[0] else self._descend(worst, self.fewest)
        if not self._fits_all(self.reference[None])[0]:
            parts = ", ".join(f"{float(c.model(self.reference)) / c.dense:.3f} of the dense "
                              f"{'FLOPs' if c.name == 'flops' else c.name}" for c in self.costs)
            names = " and ".join(f"{c.name}_budget={c.fraction}" for c in self.costs)
            raise JointPruneError(f"{names} cannot all be met together: the closest network found within the keep "
                                  f"rules ({self._rules()}) has {parts}; raise one of the budgets.")

    def _fits_all(self, batch: np.ndarray) -> np.ndarray:
        ok = np.ones(len(batch), dtype=bool)
        for c in self.costs:
            ok &= c.fits(c.model(batch))
        return ok

    # -- per step -------------------------------------------------------------------------------
    def window(self, kept_so_far: Sequence[int]) -> np.ndarray:
        """Allowed counts of group l = len(kept_so_far), ascending (see the module docstring).

        With costs that grow with channels (FLOPs) this is every allowed count in
        [bounds()[0], bounds()[1]]; with non-monotone costs it may have holes."""
        l = len(kept_so_far)
        cands = self.candidates[l]
        c = len(cands)
        # One batch for every (reference completion, candidate) pair: one call per cost model.
        trial = self._trials[l].copy()
        trial[:, :l] = kept_so_far
        feasible, reach = None, None
        for cost in self.costs:
            values = cost.value(cost.model(trial))
            fits, reaches = values <= cost.limit, values[-c:] >= cost.limit  # dense completion: last rows
            feasible = fits if feasible is None else feasible & fits
            reach = reaches if reach is None else reach | reaches
        feasible = feasible.reshape(-1, c).any(axis=0)
        allowed = feasible & reach
        if allowed.any():
            return cands[allowed]
        if feasible.any():  # even the rest dense reaches no budget: keep the most allowed
            return cands[np.flatnonzero(feasible)[-1:]]
        return cands[:1]  # only for a prefix this clipper did not produce

    def bounds(self, kept_so_far: Sequence[int]) -> tuple[int, int]:
        """(fewest, most) channels group l = len(kept_so_far) may keep: the window's ends."""
        allowed = self.window(kept_so_far)
        return int(allowed[0]), int(allowed[-1])

    def wanted(self, l: int, ratio: float) -> int:
        """The count the action asks for, before clipping: KeepRule.keep, on the candidates
        computed once (this runs once per group of every episode)."""
        if not math.isfinite(ratio):
            self.rule.keep(self.sizes[l], ratio)  # raises the one-sentence error
        size, cands = self.sizes[l], self.candidates[l]
        kept = size - math.floor(min(max(ratio, 0.0), self.rule.max_ratio) * size + 1e-9)
        return int(cands[min(int(np.searchsorted(cands, kept)), len(cands) - 1)])

    def clip(self, kept_so_far: Sequence[int], ratio: float) -> tuple[int, float, float, float]:
        """(kept, effective ratio, ratio lower bound, ratio upper bound) for the next group.

        kept is the window's count nearest to the wanted one (the larger on a tie); the ratio
        bounds are 1 - most/size and 1 - fewest/size."""
        l = len(kept_so_far)
        size = self.sizes[l]
        allowed = self.window(kept_so_far)
        distance = np.abs(allowed - self.wanted(l, ratio))
        kept = int(allowed[np.flatnonzero(distance == distance.min())[-1]])
        return kept, 1.0 - kept / size, 1.0 - int(allowed[-1]) / size, 1.0 - int(allowed[0]) / size

    def cost_values(self, kept) -> dict[str, float]:
        """Every cost of a kept-count vector, by name (FLOPs first)."""
        k = np.asarray(kept, dtype=np.float64)
        return {c.name: float(c.model(k)) for c in self.costs}

    def check(self, kept) -> float:
        """FLOPs of a finished choice; raises if any hard budget were ever broken."""
        k = np.asarray(kept, dtype=np.float64)
        value = self.flops(k)
        if not self.costs[0].fits(value):
            raise AssertionError(f"budget violated: {value:.0f} FLOPs > {self.limit:.0f} allowed")
        for c in self.costs[1:]:
            v = float(c.model(k))
            if not bool(c.fits(v)):
                raise AssertionError(f"{c.name} budget violated: {v:.6g} > {c.limit:.6g} allowed "
                                     f"({c.fraction} of the dense {c.name})")
        return value

    def cost_shares(self, cost_model) -> np.ndarray:
        """Per group, the share of the dense cost that disappears when that group alone goes to
        its fewest allowed count (a state feature). Signed: for a non-monotone cost (latency)
        removing channels can cost more."""
        k = np.tile(self.dense_counts, (len(self.sizes), 1))
        np.fill_diagonal(k, self.fewest)
        return (float(cost_model.dense) - np.asarray(cost_model(k), dtype=np.float64)) / float(cost_model.dense)
