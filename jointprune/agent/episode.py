"""The pruning environment: one episode walks the prunable groups in order, one action each.

State of group l (METHOD.md section 3), every feature scaled to about [0, 1], STATE_DIM = 12:
  0-4  l / L, in channels, out channels, stride, kernel size (each over the network's maximum),
  5    the group's own FLOPs (all of it removed),
  6    the network's FLOPs with the actions so far and the rest dense,
  7    the FLOPs of the groups after l (dense),
  8    the previous action,
  9    the group's own share of the second budgeted cost (latency, issue 11): what disappears
       when the group goes to its fewest allowed count (signed: latency is not monotone),
  10   that cost with the actions so far and the rest dense,
  11   that cost's shares of the groups after l,
(every cost over its dense total). The second cost is the clipper's first extra cost. Without
one, features 9-11 are zeros: an absent cost uses none of any budget, and a constant zero input
leaves the learnt function exactly as with the 9 FLOPs-only features (its weights multiply 0),
whereas repeating the FLOPs features would give them a second, redundant set of weights. Keeping
STATE_DIM fixed lets the agent, replay buffer and decoder be built the same way for every run.
The action is clipped by the BudgetClipper, so every finished episode meets every budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..pruning.budget import BudgetClipper
from ..pruning.flops import FlopsModel
from ..pruning.structure import ChannelStructure

STATE_DIM = 12


@dataclass
class Episode:
    states: torch.Tensor       # [L, STATE_DIM]
    actions: torch.Tensor      # [L] effective (clipped) removal ratios
    next_states: torch.Tensor  # [L, STATE_DIM]
    kept: list[int]            # channels kept per group
    flops: float               # exact FLOPs of the chosen sub-network
    # The clipper's extra costs (latency, ...) of the chosen sub-network, each over its dense
    # value, in the clipper's order (plain floats, so broadcast_object can send the episode).
    extra_costs: list[float] = field(default_factory=list)

    @property
    def dones(self) -> torch.Tensor:
        done = torch.zeros(len(self.kept))
        done[-1] = 1.0
        return done


class PruningEnvironment:
    """`centred`: the agent's action a in [0, max_ratio] is mapped onto the removal ratio by the
    monotone piecewise-linear warp that sends the middle of the range, max_ratio / 2, to the
    uniform ratio of the groups still to come under the budget left (and 0 and max_ratio to
    themselves), see `warp`; the replay stores the action in the agent's space. [ours]

    Why: with the paper's plain action (a = the removal ratio) most of the action space is not
    budget-neutral. On ResNet-20 (w8) at FLOPs budget 0.5 every internal group must lose ~56 %
    of its channels; uniform random actions average 40 %, so the early groups keep too much and
    the clipper squeezes the last groups to their fewest channels (7 of 32 in two of three random
    episodes); at budget 0.3 three very different action sequences all ended at the same
    allocation. Exploration, and the initial policy whose mean is the middle of the range, then
    never visit allocations near uniform, the natural prior. Centring on the *remaining* groups'
    uniform ratio (not one ratio for the whole episode) corrects as it goes: if the early groups
    kept more, the middle action now removes more from the rest. A constant action of
    max_ratio / 2 is the uniform allocation, random actions scatter around it, and every
    allocation stays reachable."""

    def __init__(self, structure: ChannelStructure, flops: FlopsModel, clipper: BudgetClipper,
                 centred: bool = False):
        self.structure, self.flops, self.clipper = structure, flops, clipper
        self.centred = centred
        self._ratio_grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # grid size -> (ratios, counts)
        groups = structure.groups
        self.n = len(groups)
        ins = np.array([g.in_channels for g in groups], dtype=np.float64)
        outs = np.array([g.size for g in groups], dtype=np.float64)
        strides = np.array([g.stride for g in groups], dtype=np.float64)
        kernels = np.array([g.kernel_size for g in groups], dtype=np.float64)
        own = flops.group_flops() / flops.dense
        # The cost models come from the clipper: the second cost's features are the first extra
        # cost's (the latency budget), or zeros without one (see the module docstring).
        self.second_cost = clipper.extra_costs[0][0] if clipper.extra_costs else None
        if self.second_cost is not None:
            own2 = clipper.cost_shares(self.second_cost)
        else:
            own2 = np.zeros(self.n)
        self.static = np.stack([np.arange(self.n) / max(self.n - 1, 1), ins / ins.max(), outs / outs.max(),
                                strides / strides.max(), kernels / kernels.max(), own, _after(own),
                                own2, _after(own2)], axis=1)
        self._sizes = np.asarray(flops.sizes, dtype=np.float64)

    def state(self, kept_so_far: list[int], prev_action: float) -> np.ndarray:
        l = len(kept_so_far)
        now = np.concatenate([np.asarray(kept_so_far, dtype=np.float64), self._sizes[l:]])
        current = self.flops(now) / self.flops.dense
        current2 = 0.0 if self.second_cost is None else float(self.second_cost(now)) / float(self.second_cost.dense)
        s = self.static[min(l, self.n - 1)]
        return np.array([s[0], s[1], s[2], s[3], s[4], s[5], current, s[6], prev_action, s[7], current2, s[8]],
                        dtype=np.float32)

    def rollout(self, policy: Callable[[torch.Tensor], float]) -> Episode:
        """Run one episode; `policy(state)` returns the agent's action for that state."""
        return self._walk(lambda state, centre: self.warp(float(policy(torch.from_numpy(state))), centre))

    def rollout_near(self, kept: Sequence[int], groups: int, sigma: float,
                     generator: torch.Generator | None = None, move: str = "transfer") -> Episode:
        """An episode that asks for a neighbour of the allocation `kept` (the agent's local search
        around the incumbent): `groups` random groups' counts scaled by exp(N(0, sigma^2)).
        move "transfer": each scaled group trades FLOPs with another random group, which takes the
        most channels that keep the FLOPs at most the incumbent's, so the neighbour moves
        capacity between two chosen groups. "scale": the other groups stay as they are, and the
        clipper gives or takes the difference at the end of the walk (the last groups absorb
        it). Either way the clipper keeps the episode within every budget, and sigma 0 gives
        `kept` back exactly when it meets them. The replay stores the action that yields each
        step's ratio, as for the policy's episodes."""
        wanted = np.asarray(kept, dtype=np.float64).copy()
        order = torch.randperm(self.n, generator=generator).numpy()
        noise = sigma * torch.randn(min(groups, self.n), generator=generator, dtype=torch.float64).numpy()
        if move == "transfer" and self.n > 1:
            ceiling = self.flops(wanted)
            for t, eps in enumerate(noise):
                i, j = order[(2 * t) % self.n], order[(2 * t + 1) % self.n]
                wanted[i] = np.clip(np.rint(wanted[i] * np.exp(eps)), 1, self._sizes[i])
                wanted[j] = self._most_that_fit(wanted, j, ceiling)
        else:
            wanted[order[:len(noise)]] *= np.exp(noise)
            wanted = np.minimum(wanted, self._sizes)
        ratios = 1.0 - wanted / self._sizes
        return self._walk(lambda state, centre, step=iter(ratios): float(next(step)))

    def _most_that_fit(self, kept: np.ndarray, group: int, ceiling: float) -> float:
        """The most channels of `group` (at least 1) with the others at `kept` and FLOPs <= ceiling."""
        counts = np.arange(1, self._sizes[group] + 1)
        trial = np.tile(kept, (len(counts), 1))
        trial[:, group] = counts
        fits = np.flatnonzero(self.flops(trial) <= ceiling * (1 + 1e-9))
        return float(counts[fits[-1]]) if len(fits) else 1.0

    def _walk(self, ratio_for: Callable[[np.ndarray, float | None], float]) -> Episode:
        """One episode: at each group, `ratio_for(state, centre)` gives the removal ratio asked for,
        the clipper turns it into a count, and the action that yields the clipped ratio is recorded."""
        kept: list[int] = []
        states, actions = [], []
        prev = 0.0
        for _ in range(self.n):
            s = self.state(kept, prev)
            centre = self.uniform_ratio(kept) if self.centred else None
            k, ratio, _, _ = self.clipper.clip(kept, ratio_for(s, centre))
            kept.append(k)
            states.append(s)
            actions.append(self.unwarp(ratio, centre))  # the action that yields the clipped ratio
            prev = ratio
        final = self.state(kept[:-1], prev)  # terminal next-state: not used by the target (done=1)
        states_t = torch.from_numpy(np.stack(states))
        next_states = torch.cat([states_t[1:], torch.from_numpy(final)[None]])
        flops = self.clipper.check(kept)  # the hard guarantees, asserted after every episode
        extra = [float(c.model(np.asarray(kept, dtype=np.float64))) / c.dense for c in self.clipper.costs[1:]]
        return Episode(states_t, torch.tensor(actions, dtype=torch.float32), next_states, kept, flops, extra)

    def warp(self, action: float, centre: float | None) -> float:
        """The removal ratio an action asks for: the action itself (centre None), or the action
        warped so that max_ratio / 2 gives `centre`."""
        if centre is None:
            return action
        top = self.clipper.rule.max_ratio
        half, a = top / 2, min(max(action, 0.0), top)
        return centre * a / half if a <= half else centre + (top - centre) * (a - half) / half

    def unwarp(self, ratio: float, centre: float | None) -> float:
        """The inverse of `warp`: the action that asks for `ratio`."""
        if centre is None:
            return ratio
        top = self.clipper.rule.max_ratio
        half, r = top / 2, min(max(ratio, 0.0), top)
        if r <= centre:
            return half * r / centre if centre > 0 else half
        return half + half * (r - centre) / (top - centre) if top > centre else top

    def uniform_ratio(self, kept_so_far: list[int] = (), grid: int = 400) -> float:
        """The smallest common removal ratio of the groups after `kept_so_far` with which the whole
        network fits every budget (max_ratio if none does)."""
        return self._uniform_counts(grid, kept_so_far)[0]

    def uniform(self, ratio: float) -> list[int]:
        """Kept counts for the same removal ratio in every group, clipped to the budget."""
        kept: list[int] = []
        for _ in range(self.n):
            kept.append(self.clipper.clip(kept, ratio)[0])
        return kept

    def uniform_under_budget(self, grid: int = 2000) -> list[int]:
        """The uniform baseline: the smallest common removal ratio whose counts fit every budget,
        then passed through the clipper, whose lower side lets the last groups take up what the
        rounding left (so the budget is used as fully as the rules allow).

        The ratio is searched on a fine grid in one batched evaluation per cost rather than by
        bisection: a latency cost need not fall as the common ratio grows."""
        clipper = self.clipper
        ratio, uniform = self._uniform_counts(grid)
        if uniform is None:  # no common ratio fits: the clipper alone decides, from the hardest ratio
            return self.uniform(clipper.rule.max_ratio)
        kept: list[int] = []
        for l in range(self.n):
            kept.append(clipper.clip(kept, 1.0 - uniform[l] / clipper.sizes[l])[0])
        clipper.check(kept)
        return kept

    def _uniform_counts(self, grid: int = 2000, prefix=()):
        """(ratio, counts) of the smallest common removal ratio of the groups after `prefix` (kept
        counts of the first groups, fixed) that fits every budget, or (max_ratio, None)."""
        clipper = self.clipper
        ratios, common = self._ratio_grid(grid)
        counts = common.copy()
        counts[:, :len(prefix)] = np.asarray(prefix, dtype=np.float64)
        fits = np.ones(len(ratios), dtype=bool)
        for cost in clipper.costs:
            fits &= cost.fits(cost.model(counts))
        if not fits.any():
            return float(clipper.rule.max_ratio), None
        first = int(np.flatnonzero(fits)[0])
        return float(ratios[first]), counts[first]

    def _ratio_grid(self, grid: int) -> tuple[np.ndarray, np.ndarray]:
        """`grid` + 1 common removal ratios and every group's kept count at each (KeepRule.keep for
        every ratio at once: the raw count rounded up to the next allowed one). Built once per grid
        size: centred rollouts ask for it at every step."""
        if grid not in self._ratio_grids:
            clipper = self.clipper
            ratios = np.linspace(0.0, clipper.rule.max_ratio, grid + 1)
            counts = np.empty((len(ratios), self.n))
            for g, (size, cands) in enumerate(zip(clipper.sizes, clipper.candidates)):
                raw = size - np.floor(ratios * size + 1e-9)
                counts[:, g] = cands[np.minimum(np.searchsorted(cands, raw), len(cands) - 1)]
            self._ratio_grids[grid] = ratios, counts
        return self._ratio_grids[grid]


def _after(own: np.ndarray) -> np.ndarray:
    """Sum of the shares of the groups after each group."""
    return np.concatenate([np.cumsum(own[::-1])[::-1][1:], [0.0]])
