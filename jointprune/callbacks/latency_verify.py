"""The closed latency loop of a training run: after the agent's last epoch has picked the
incumbent, and before the alignment empties its removed channels, measure the incumbent on the
latency model's device and shrink it until the measurement meets `model.latency_budget`, or grow
it back while it measures well under, within every other budget (pruning/latency_verify.py).
Rank 0 measures (ranks timing one device at once would disturb each other) and broadcasts the
outcome; every rank then rebuilds the same masks.

After each earlier agent epoch (`latency.correct_each_epoch`), the incumbent is measured once and
the model ratio the clipper allows is moved to the one that should measure the budget
(`correct_aim`): the agent then searches among allocations that measure the budget, instead of
picking one the model misjudges and having the loop shrink it uniformly at the end."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..errors import JointPruneError
from ..pruning import group_importance, top_k_masks
from ..pruning.extract import extract_subnetwork
from ..pruning.latency import measure_pair
from ..pruning.latency_verify import (NOISE_ALLOWANCE, aimed_target, floor_sentence, rounds_sentence, shrunk_for_target,
                                      steadiest, verify_latency)
from .sync import broadcast_object

log = logging.getLogger("jointprune")


def _loop_on(pm) -> bool:
    """A latency budget, its model, the closed loop on (`verify_rounds` > 0) and an incumbent."""
    return (getattr(pm, "latency_model", None) is not None and pm.latency_budget is not None
            and pm.latency_opts.verify_rounds > 0 and pm.incumbent_kept is not None)


def due(trainer, pm) -> bool:
    """On the agent's last epoch, with the loop on (the same answer on every rank: it reads only
    settings and the epoch)."""
    return _loop_on(pm) and trainer.current_epoch == pm.epochs["agent_until"] - 1


def correction_due(trainer, pm) -> bool:
    """After each agent epoch before the last (where the loop itself runs), with
    `latency.correct_each_epoch` and the loop on (the same answer on every rank)."""
    return (_loop_on(pm) and pm.latency_opts.correct_each_epoch
            and trainer.current_epoch < pm.epochs["agent_until"] - 1)


def _measurer(pm, scores):
    """measure(kept): the sub-network of the live CNN with `kept` channels timed against the dense
    one on the latency model's device ({"ratio", "noise", ...})."""
    info = pm.latency_model.info

    def measure(kept):
        small = extract_subnetwork(pm.cnn, pm.structure, top_k_masks(scores, kept))
        return measure_pair(pm.cnn, small, pm.input_shape, torch.device(info["device"]), info["batch_size"],
                            info["threads"], warmup=1, repeats=pm.latency_opts.verify_repeats)
    return measure


def _other_budgets_fit(pm):
    """fits(kept): whether counts meet every budget but the latency one (which the measurement
    decides), e.g. a FLOPs budget set beside it."""
    lm = pm.latency_model

    def fits(kept):
        counts = np.asarray(kept, dtype=np.float64)
        return all(bool(c.fits(c.model(counts))) for c in pm.clipper.costs if c.model is not lm)
    return fits


def _unmeasurable(err: Exception, device: str, when: str) -> str:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (f"the incumbent's latency could not be measured on {device} {when} ({reason}); "
            "set model.latency.verify_rounds: 0 to skip the check.")


def correct_aim(trainer, pm) -> dict:
    """Measure the incumbent (rank 0, broadcast) and aim the clipper at the model ratio that should
    measure the budget, from every incumbent measured so far (`aimed_target`); an incumbent the
    new aim does not allow is shrunk to it, keeping its shape. A measurement noisier than
    NOISE_ALLOWANCE x budget moves nothing. Returns {"predicted", "measured", "noise", "target"}."""
    lm, budget = pm.latency_model, pm.latency_budget
    scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
    kept = [int(k) for k in pm.incumbent_kept]
    result: object = None
    if trainer.is_global_zero:
        try:
            with torch.random.fork_rng(devices=[]):  # rank 0 alone must not move the global generator
                m, _ = steadiest(_measurer(pm, scores), kept, budget)
            result = {"predicted": float(lm(np.asarray(kept, dtype=np.float64)) / lm.dense),
                      "measured": float(m["ratio"]), "noise": float(m["noise"])}
        except (RuntimeError, JointPruneError) as err:  # every rank raises it, nobody waits in the broadcast
            result = _unmeasurable(err, lm.info["device"], "during the agent's epochs")
    result = broadcast_object(result)
    if isinstance(result, str):
        raise JointPruneError(result)
    target = pm.latency_target if pm.latency_target is not None else budget
    if result["noise"] <= NOISE_ALLOWANCE * budget:
        pm.latency_points = list(pm.latency_points) + [(result["predicted"], result["measured"])]
        floor = float(lm(pm.clipper.fewest) / lm.dense)  # every group at its fewest allowed count
        target = aimed_target(budget, pm.latency_points, floor)
        pm.aim_latency(target)
        if result["predicted"] > target:  # shrunk, then filled back single groups at a time to the aim
            pm.incumbent_kept, _ = shrunk_for_target(lm, kept, pm.clipper.candidates, target, below_scale=1.0 + 1e-9,
                                                     fits=_other_budgets_fit(pm))
            pm.incumbent_masks = top_k_masks(scores, pm.incumbent_kept)
    return dict(result, target=target)


def verify_incumbent(trainer, pm) -> dict:
    """Run the loop on rank 0, broadcast it, and move every rank's incumbent (counts and masks) to
    the result. Returns pm.latency_verify: {"status", "rounds", "sentence", "seconds"}."""
    lm, opts = pm.latency_model, pm.latency_opts
    info = lm.info
    scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
    candidates = pm.clipper.candidates
    result: object = None
    started = time.perf_counter()
    if trainer.is_global_zero:
        measure, fits = _measurer(pm, scores), _other_budgets_fit(pm)
        # measure_pair draws its input from the global generator: rank 0 alone must not move it
        try:
            with torch.random.fork_rng(devices=[]):
                result = verify_latency(lm, pm.incumbent_kept, candidates, pm.latency_budget, opts.verify_rounds,
                                        measure, fits)
        except (RuntimeError, JointPruneError) as err:  # every rank raises it, nobody waits in the broadcast
            result = _unmeasurable(err, info["device"], "after the agent")
    result = broadcast_object(result)
    if isinstance(result, str):
        raise JointPruneError(result)
    sentence = None
    if result["status"] == "floor":
        sentence = floor_sentence(pm.latency_budget, result["rounds"], info["device"])
    elif result["status"] == "rounds":
        sentence = rounds_sentence(pm.latency_budget, result["rounds"], info["device"])
    pm.incumbent_kept = list(result["kept"])
    pm.incumbent_masks = top_k_masks(scores, pm.incumbent_kept)
    pm.latency_verify = {"status": result["status"], "rounds": result["rounds"], "accepted": result["accepted"],
                         "sentence": sentence, "seconds": time.perf_counter() - started}
    if trainer.is_global_zero:
        for r in result["rounds"]:
            target = "" if r["target"] is None else f", model target {r['target']:.3f}"
            kept = " (kept)" if r["round"] == result["accepted"] and len(result["rounds"]) > 1 else ""
            print(f"[jointprune] latency check {r['round']}{kept}: {'grown' if r['grown'] else 'incumbent'} at scale "
                  f"{r['scale']:.3f} measures "
                  f"{r['measured']:.3f} +-{r['noise']:.3f} of the dense latency (model {r['predicted']:.3f}{target}; "
                  f"budget {pm.latency_budget})", flush=True)
        if sentence:
            log.warning(sentence)
            print(f"[jointprune] WARNING: {sentence}", flush=True)
    return pm.latency_verify
