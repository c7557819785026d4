"""Closing the loop on the latency budget: measure the chosen sub-network, and shrink it until
its *measured* latency meets the budget.

The latency model sums standalone layer timings; the whole network runs slower than that sum on
CPU (memory traffic between layers, per-op dispatch, the adds and reshapes folded into `rest` at
the dense size only), so an allocation the model puts exactly at the budget measures above it
(README, "Latency budget"). After the agent's last epoch, `verify_latency` therefore times the
incumbent against the dense network (interleaved pairs, `measure_pair`), and while the measured
ratio is above the budget it

1. corrects the model at the operating point just measured: the measured ratio is the model's
   ratio times a factor (measured / predicted; after two measurements, the line through the last
   two (predicted, measured) points), and
2. shrinks the incumbent keeping its shape: one common scale factor on its kept counts, each
   snapped down to an allowed count (`KeepRule.candidates`), the largest scale whose corrected
   prediction meets the budget. Counts only go down, so FLOPs only go down.

then measures again, for at most `rounds` corrections.

Why a factor, not an offset: the model's misses scale with the network. In
`bench_latency_budget.py` (MobileNetV2 w0.5 and ResNet-56, digits 16x16, batch 64, one thread)
the agent's incumbents measured 0.954 / 0.853 / 0.438 (MobileNetV2) and 0.838 / 0.571 (ResNet-56)
where the model said 0.7 / 0.5 / 0.3 and 0.7 / 0.5: offsets of 0.25 / 0.35 / 0.14 and
0.14 / 0.07 (spread 2.5x within a model), factors of 1.36 / 1.71 / 1.46 and 1.20 / 1.14 (spread
1.26x). An offset taken at 0.5 (0.29 on one MobileNetV2 run) aimed at 0.21 and overshot to the
floor, which then measured 0.33 for a budget of 0.5; the factor would have aimed at 0.32.
 If even the fewest allowed counts measure
above the budget, `floor_sentence` says so.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

SCALE_STEPS = 400  # scales tried per correction (one batched model call)
# A measurement within its noise of the budget counts as meeting it, but never by more than this
# share of the budget, so that "met" always means a speed-up of at least 0.95 / budget.
NOISE_ALLOWANCE = 0.05


def within_budget(ratio: float, noise: float, budget: float) -> bool:
    """Whether a measured latency ratio meets `budget`: at or under it, or over it by no more than
    the measurement's noise (capped at NOISE_ALLOWANCE x budget). The closed loop stops and the
    final report says "met" by this one rule, so the loop never shrinks a network the report
    would accept."""
    return ratio <= budget + min(max(noise, 0.0), NOISE_ALLOWANCE * budget)


def shrink(kept: Sequence[int], scale: float, candidates: Sequence[np.ndarray]) -> list[int]:
    """Each group's count times `scale`, snapped down to the largest allowed count at or below it
    (the fewest allowed when none is), never above the count it started from."""
    out = []
    for k, cands in zip(kept, candidates):
        i = int(np.searchsorted(cands, scale * k + 1e-9, side="right")) - 1
        out.append(int(min(cands[max(i, 0)], k)))
    return out


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


def verify_latency(model, kept: Sequence[int], candidates: Sequence[np.ndarray], budget: float, rounds: int,
                   measure: Callable[[list[int]], dict]) -> dict:
    """Measure `kept` and shrink it until the measured ratio meets `budget` (see the module
    docstring). `measure(kept)` returns {"ratio", "noise"} of that sub-network against the dense
    one. Returns {"kept", "rounds": [{round, scale, predicted, target, measured, noise}], "status"}
    with status "met", "floor" (the fewest allowed counts measured above the budget) or "rounds"
    (still above after `rounds` corrections)."""
    current, scale, target = [int(k) for k in kept], 1.0, None
    floor = shrink(kept, 0.0, candidates)
    history: list[dict] = []
    points: list[tuple[float, float]] = []
    for r in range(rounds + 1):
        predicted = float(model(np.asarray(current, dtype=np.float64)) / model.dense)
        m = measure(current)
        history.append({"round": r, "scale": scale, "predicted": predicted, "target": target,
                        "measured": float(m["ratio"]), "noise": float(m["noise"])})
        points.append((predicted, float(m["ratio"])))
        if within_budget(float(m["ratio"]), float(m["noise"]), budget):
            return {"kept": current, "rounds": history, "status": "met"}
        if current == floor:
            return {"kept": current, "rounds": history, "status": "floor"}
        if r == rounds:
            break
        target = corrected_target(budget, points)
        current, scale = kept_for_target(model, kept, candidates, target, below_scale=scale)
    return {"kept": current, "rounds": history, "status": "rounds"}


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
