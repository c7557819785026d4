"""The closed latency loop of a training run: after the agent's last epoch has picked the
incumbent, and before the alignment empties its removed channels, measure the incumbent on the
latency model's device and shrink it until the measurement meets `model.latency_budget`, or grow
it back while it measures well under, within every other budget (pruning/latency_verify.py).
Rank 0 measures (ranks timing one device at once would disturb each other) and broadcasts the
outcome; every rank then rebuilds the same masks."""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..errors import JointPruneError
from ..pruning import group_importance, top_k_masks
from ..pruning.extract import extract_subnetwork
from ..pruning.latency import measure_pair
from ..pruning.latency_verify import floor_sentence, rounds_sentence, verify_latency
from .sync import broadcast_object

log = logging.getLogger("jointprune")


def due(trainer, pm) -> bool:
    """On the agent's last epoch, with a latency budget and `verify_rounds` > 0 (the same answer
    on every rank: it reads only settings and the epoch)."""
    return (getattr(pm, "latency_model", None) is not None and pm.latency_budget is not None
            and pm.latency_opts.verify_rounds > 0 and pm.incumbent_kept is not None
            and trainer.current_epoch == pm.epochs["agent_until"] - 1)


def verify_incumbent(trainer, pm) -> dict:
    """Run the loop on rank 0, broadcast it, and move every rank's incumbent (counts and masks) to
    the result. Returns pm.latency_verify: {"status", "rounds", "sentence", "seconds"}."""
    lm, opts = pm.latency_model, pm.latency_opts
    info = lm.info
    device = torch.device(info["device"])
    scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
    candidates = pm.clipper.candidates
    result: object = None
    started = time.perf_counter()
    if trainer.is_global_zero:
        def measure(kept):
            small = extract_subnetwork(pm.cnn, pm.structure, top_k_masks(scores, kept))
            return measure_pair(pm.cnn, small, pm.input_shape, device, info["batch_size"], info["threads"],
                                warmup=1, repeats=opts.verify_repeats)

        def fits(kept):  # every budget but the latency one, which the measurement decides
            counts = np.asarray(kept, dtype=np.float64)
            return all(bool(c.fits(c.model(counts))) for c in pm.clipper.costs if c.model is not lm)

        # measure_pair draws its input from the global generator: rank 0 alone must not move it
        try:
            with torch.random.fork_rng(devices=[]):
                result = verify_latency(lm, pm.incumbent_kept, candidates, pm.latency_budget, opts.verify_rounds,
                                        measure, fits)
        except (RuntimeError, JointPruneError) as err:  # every rank raises it, nobody waits in the broadcast
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            result = (f"the incumbent's latency could not be measured on {device} after the agent ({reason}); "
                      "set model.latency.verify_rounds: 0 to skip the check.")
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
