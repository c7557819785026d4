"""Closing the loop on the latency budget: measure the chosen sub-network, and shrink it until
its *measured* latency meets the budget, or grow it back while it measures well under.

The latency model sums standalone layer timings; the whole network can run slower or faster than
that sum on CPU (memory traffic between layers, per-op dispatch, widths oneDNN blocks well or
badly), so an allocation the model puts exactly at the budget can measure above it
(README, "Latency budget"). After the agent's last epoch, `verify_latency` therefore times the
incumbent against the dense network (interleaved pairs, `measure_pair`), and while the measured
ratio is above the budget it

1. corrects the model at the operating point just measured: the measured ratio is the model's
   ratio times a factor (measured / predicted; after two measurements, the line through the last
   two (predicted, measured) points), and
2. shrinks the incumbent keeping its shape: one common scale factor on its kept counts, each
   snapped down to an allowed count (`KeepRule.candidates`), the largest scale whose corrected
   prediction meets the budget. Counts only go down, so FLOPs only go down.

then measures again, for at most `rounds` corrections. A measurement whose pairs scatter by more
than NOISE_ALLOWANCE of the budget is taken again (at most REMEASURE more times) and the steadiest
one counts: on the 2-core CPU, with a second run beside it, one such measurement said 0.456 for a
network that measured 0.70 afterwards, and the loop kept that network for a budget of 0.7.

**Growing back.** The model errs both ways, so a measurement can also come out well under the
budget: the agent's pick, or the shrink's last step, leaves capacity unused (ResNet-56 at budget
0.5 measured 0.42-0.45 with the model at 0.50; MobileNetV2, shrunk once, 0.46-0.48). While a met
measurement sits under the budget by more than its noise and GROW_GAP of the budget, and rounds
are left, the same correction aims at the budget from below: one common scale above the current
one (counts may grow past the agent's, up to each group's full width), the largest whose
corrected prediction meets the budget and whose counts `fits` accepts (every other budget, e.g.
FLOPs). When no larger common scale changes a count within the target (coarse allowed counts),
single groups are raised instead (`filled_for_target`). The grown network is measured; if it
meets the budget it is the new incumbent, else the last met one is kept and the loop stops.
`accepted` names the round whose network is returned.

Why a factor, not an offset: the model's misses scale with the network. In
`bench_latency_budget.py` (MobileNetV2 w0.5 and ResNet-56, digits 16x16, batch 64, one thread)
the agent's incumbents measured 0.954 / 0.853 / 0.438 (MobileNetV2) and 0.838 / 0.571 (ResNet-56)
where the model said 0.7 / 0.5 / 0.3 and 0.7 / 0.5: offsets of 0.25 / 0.35 / 0.14 and
0.14 / 0.07 (spread 2.5x within a model), factors of 1.36 / 1.71 / 1.46 and 1.20 / 1.14 (spread
1.26x). An offset taken at 0.5 (0.29 on one MobileNetV2 run) aimed at 0.21 and overshot to the
floor, which then measured 0.33 for a budget of 0.5; the factor would have aimed at 0.32.
 If even the fewest allowed counts measure
above the budget, `floor_sentence` says so.

**Aiming the agent (`aimed_target`).** Shrinking at the end keeps the agent's shape whatever the
shrink costs: near the floor, where fewer channels buy little latency, one 5 % miss took
ResNet-56 at budget 0.3 to scale 0.33 and then to the fewest counts. So after each earlier agent
epoch the run measures its incumbent once and clips the agent's later episodes to the model ratio
that should measure the budget (the same correction over the run's measured incumbents): the
agent, with its reward, chooses among allocations that measure the budget, and the loop at the
end has less to correct (callbacks/latency_verify.py, `correct_aim`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

SCALE_STEPS = 400  # scales tried per correction (one batched model call)
# A measurement within its noise of the budget counts as meeting it, but never by more than this
# share of the budget, so that "met" always means a speed-up of at least 0.95 / budget.
NOISE_ALLOWANCE = 0.05
# Grow a met incumbent back only when it measures under the budget by more than its noise and this
# share of the budget: closer than that, another measurement costs more than it can win.
GROW_GAP = 0.05
# A measurement noisier than NOISE_ALLOWANCE x budget says little (on a loaded CPU pairs of
# timings scatter by 0.2 of the dense latency): measure again, at most this many more times, and
# act on the steadiest (least noisy) of the measurements.
REMEASURE = 2


def steadiest(measure: Callable[[list[int]], dict], counts: list[int], budget: float) -> tuple[dict, int]:
    """`measure(counts)`, repeated while its noise exceeds NOISE_ALLOWANCE x budget (at most
    REMEASURE more times); the least noisy measurement and how many were taken."""
    taken = [measure(counts)]
    while float(taken[-1]["noise"]) > NOISE_ALLOWANCE * budget and len(taken) <= REMEASURE:
        taken.append(measure(counts))
    return min(taken, key=lambda m: float(m["noise"])), len(taken)


def within_budget(ratio: float, noise: float, budget: float) -> bool:
    """Whether a measured latency ratio meets `budget`: at or under it, or over it by no more than
    the measurement's noise (capped at NOISE_ALLOWANCE x budget). The closed loop stops and the
    final report says "met" by this one rule, so the loop never shrinks a network the report
    would accept."""
    return ratio <= budget + min(max(noise, 0.0), NOISE_ALLOWANCE * budget)


def scaled(kept: Sequence[int], scale: float, candidates: Sequence[np.ndarray]) -> list[int]:
    """Each group's count times `scale`, snapped down to the largest allowed count at or below it
    (the fewest allowed when none is; a group's full width is its largest allowed count)."""
    out = []
    for k, cands in zip(kept, candidates):
        i = int(np.searchsorted(cands, scale * k + 1e-9, side="right")) - 1
        out.append(int(cands[max(i, 0)]))
    return out


def shrink(kept: Sequence[int], scale: float, candidates: Sequence[np.ndarray]) -> list[int]:
    """`scaled`, never above the count it started from."""
    return [min(s, int(k)) for s, k in zip(scaled(kept, scale, candidates), kept)]


def corrected_target(budget: float, points: list[tuple[float, float]]) -> float:
    """The model ratio that should measure `budget`, from the (predicted, measured) points so far.

    One point: a factor (measured = factor x predicted). Two or more: the line through the last
    two points when it rises with the prediction (a noisy pair can give a flat or falling line:
    then the factor of the latest point)."""
    p1, m1 = points[-1]
    if len(points) >= 2:
        p0, m0 = points[-2]
        if abs(p1 - p0) > 1e-6:
            slope = (m1 - m0) / (p1 - p0)
            if 0.2 <= slope <= 5.0:
                return p1 + (budget - m1) / slope
    return budget * p1 / m1


def kept_for_target(model, kept: Sequence[int], candidates: Sequence[np.ndarray], target: float,
                    below_scale: float) -> tuple[list[int], float]:
    """The largest scale under `below_scale` whose shrunk counts the model puts at or under
    `target` (a fraction of the dense latency), and those counts; scale 0 (every group at its
    fewest allowed count) when none does. Latency is not monotone in counts: every scale is tried."""
    scales = np.linspace(0.0, 1.0, SCALE_STEPS + 1)
    scales = scales[scales < below_scale - 1e-12]
    batch = np.array([shrink(kept, s, candidates) for s in scales], dtype=np.float64)
    ok = np.flatnonzero(np.asarray(model(batch)) / model.dense <= target)
    s = float(scales[ok[-1]]) if len(ok) else 0.0
    return shrink(kept, s, candidates), s


def grown_for_target(model, kept: Sequence[int], candidates: Sequence[np.ndarray], target: float,
                     above_scale: float, fits: Callable[[list[int]], bool]):
    """The largest scale above `above_scale` (up to every group at its full width) whose scaled
    counts the model puts at or under `target` and `fits` accepts, with those counts; None when no
    such scale changes the counts at `above_scale`."""
    top = max(float(c[-1]) / max(int(k), 1) for k, c in zip(kept, candidates))
    scales = np.linspace(above_scale, max(top, above_scale), SCALE_STEPS + 1)[1:]
    batch = np.array([scaled(kept, s, candidates) for s in scales], dtype=np.float64)
    ok = np.flatnonzero(np.asarray(model(batch)) / model.dense <= target)
    now = scaled(kept, above_scale, candidates)
    for i in ok[::-1]:  # the largest scale first
        counts = [int(c) for c in batch[i]]
        if counts == now:
            return None
        if fits(counts):
            return counts, float(scales[i])
    return None


def filled_for_target(model, current: Sequence[int], shape: Sequence[int], candidates: Sequence[np.ndarray],
                      target: float, fits: Callable[[list[int]], bool],
                      ceiling: Sequence[int] | None = None) -> list[int] | None:
    """`current` with single groups raised to their next allowed count (never above `ceiling`,
    when given) while the model puts the network at or under `target` and `fits` accepts it;
    None when no group can grow.

    Why: growing by one common scale moves every group at once, and with coarse allowed counts
    (multiples of 8 in 16-channel groups: 8 or 16) the next scale that changes any count can
    jump from well under the budget to over it (ResNet-56 at budget 0.7 stopped at 0.62-0.64).
    Each step raises the group that has grown least relative to `shape` (the agent's counts), so
    the filled network stays close to a common scale of the agent's choice. The same coarseness
    makes a common-scale shrink overshoot (an aim correction during the agent's epochs took an
    incumbent the model put at 0.698 down to 0.580 for a target of 0.690, and the alignment then
    emptied the channels the loop gave back at the end), so that shrink is filled back too, with
    its counts before the shrink as the ceiling (`shrunk_for_target`). The loop's own shrink is
    not: it re-measures after each step and grows back what it overshot."""
    counts = [int(c) for c in current]
    changed = False
    while True:
        order = sorted(range(len(counts)), key=lambda g: (counts[g] / max(int(shape[g]), 1), g))
        trials = []
        for g in order:
            cands = candidates[g]
            i = int(np.searchsorted(cands, counts[g], side="right"))
            if i >= len(cands) or (ceiling is not None and int(cands[i]) > int(ceiling[g])):
                continue  # at full width, or at the ceiling
            trial = list(counts)
            trial[g] = int(cands[i])
            trials.append(trial)
        if not trials:
            return counts if changed else None
        # every group's next step in one batched model call (ResNet-50 has ~50 groups)
        ratios = np.asarray(model(np.asarray(trials, dtype=np.float64))) / model.dense
        chosen = next((t for t, r in zip(trials, ratios) if r <= target and fits(t)), None)
        if chosen is None:
            return counts if changed else None
        counts, changed = chosen, True


def shrunk_for_target(model, kept: Sequence[int], candidates: Sequence[np.ndarray], target: float,
                      below_scale: float, fits: Callable[[list[int]], bool] | None = None) -> tuple[list[int], float]:
    """`kept_for_target`, then single groups filled back toward `target`, never above the counts
    at `below_scale` (the network before this shrink), so counts, and FLOPs, only go down."""
    counts, scale = kept_for_target(model, kept, candidates, target, below_scale)
    before = shrink(kept, below_scale, candidates)
    filled = filled_for_target(model, counts, kept, candidates, target, fits or (lambda c: True), ceiling=before)
    return (filled if filled is not None else counts), scale


def verify_latency(model, kept: Sequence[int], candidates: Sequence[np.ndarray], budget: float, rounds: int,
                   measure: Callable[[list[int]], dict], fits: Callable[[list[int]], bool] | None = None) -> dict:
    """Measure `kept`, shrink it until the measured ratio meets `budget`, then grow it back while
    it measures well under (see the module docstring). `measure(kept)` returns {"ratio", "noise"}
    of that sub-network against the dense one; `fits(kept)` says whether counts meet every other
    budget (default: any counts). Returns {"kept", "rounds": [{round, scale, predicted, target,
    measured, noise, grown}], "status", "accepted"} with status "met", "floor" (the fewest allowed
    counts measured above the budget) or "rounds" (still above after `rounds` corrections), and
    `accepted` the index of the round whose network is `kept`."""
    fits = fits or (lambda counts: True)
    current, scale, target = [int(k) for k in kept], 1.0, None
    floor = shrink(kept, 0.0, candidates)
    history: list[dict] = []
    points: list[tuple[float, float]] = []
    best = None  # (round, counts) of the last network that met the budget
    filling = False  # growing group by group (`filled_for_target`) once a common scale cannot
    for r in range(rounds + 1):
        predicted = float(model(np.asarray(current, dtype=np.float64)) / model.dense)
        m, taken = steadiest(measure, current, budget)
        ratio, noise = float(m["ratio"]), float(m["noise"])
        history.append({"round": r, "scale": scale, "predicted": predicted, "target": target,
                        "measured": ratio, "noise": noise, "grown": best is not None, "measurements": taken})
        points.append((predicted, ratio))
        met = within_budget(ratio, noise, budget)
        if best is not None and not met:  # grown too far: the last met network stays
            break
        if met:
            best = (r, current)
            if r == rounds or budget - ratio <= max(noise, GROW_GAP * budget):
                break
            target = corrected_target(budget, points)
            step = None if filling else grown_for_target(model, kept, candidates, target, scale, fits)
            if step is None:
                filled = filled_for_target(model, current, kept, candidates, target, fits)
                if filled is None:
                    break
                current, filling = filled, True
                continue
            current, scale = step
            continue
        if current == floor:
            return {"kept": current, "rounds": history, "status": "floor", "accepted": r}
        if r == rounds:
            break
        target = corrected_target(budget, points)
        current, scale = kept_for_target(model, kept, candidates, target, below_scale=scale)
    if best is None:
        return {"kept": current, "rounds": history, "status": "rounds", "accepted": len(history) - 1}
    return {"kept": best[1], "rounds": history, "status": "met", "accepted": best[0]}


def aimed_target(budget: float, points: list[tuple[float, float]], floor: float) -> float:
    """The model ratio the agent's later episodes should aim at so that they measure `budget`,
    from the (predicted, measured) points of the incumbents measured so far in the run (see
    `corrected_target`), kept between the smallest ratio the keep rules reach (`floor`, a little
    above it so the clipper can still complete an episode) and 1."""
    return float(min(max(corrected_target(budget, points), floor * (1.0 + 1e-6)), 1.0))


def floor_sentence(budget: float, history: list[dict], device: str) -> str:
    last = history[-1]
    return (f"the latency budget cannot be met on {device}: even the fewest channels the keep rules allow measure "
            f"{last['measured']:.3f} of the dense latency (noise +-{last['noise']:.3f}) against a budget of {budget}; "
            "raise the budget or model.pruning.max_ratio.")


def rounds_sentence(budget: float, history: list[dict], device: str) -> str:
    last = history[-1]
    return (f"the latency budget is still missed after {len(history) - 1} correction round(s) on {device}: the "
            f"incumbent measures {last['measured']:.3f} of the dense latency (noise +-{last['noise']:.3f}) against a "
            f"budget of {budget}; raise model.latency.verify_rounds.")
