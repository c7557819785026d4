"""How well does the latency model predict measured latency, and what does building it cost?

For each network, the latency model (jointprune/pruning/latency.py) is built from scratch (empty
cache) with the default LatencyOptions and timed; then random sub-networks (every group's kept
count drawn uniformly from the counts the default KeepRule allows, the l1 top-k channels kept)
are physically extracted with our extraction and timed against the dense network back to back,
alternating which goes first (median of --runs pairs), in two passes over all sub-networks.
error = |predicted - measured| / measured on the latency ratio pruned/dense (both sides normalised
by the dense network, so that drift of a shared machine between the table build and the check
cancels), measured being the mean of the two passes; how far the two passes of the same network
differ is printed beside it: no model can be checked more finely than that. A second build then
reads the cache (its time is the "second run" start-up).

--coupled also prunes the residual-coupled groups, and --deep draws each count from the fewest
third of the allowed counts: the hard cuts a low latency budget asks for. Beside the model's error
the table prints the error with what runs between layers held at its dense time (the model before
it scaled those gaps with the channels), on the same timings. --aim A scales each random
allocation (one common scale, snapped to allowed counts) to the largest the model puts at or under
A of the dense latency, as the clipper fills a budget; the table's signed column then says whether
the networks a budget picks measure above or below the model.

The quickstart's build cost against one of its epochs is bench_latency_build.py's measurement
(interleaved rounds, the tables as a run builds them); this script prints it first, unless
--skip-quickstart.

    python experiments/benchmarks/bench_latency_model.py [--subnets 6] [--runs 7] [--threads 1] [--coupled --deep]
        [--aim 0.7 --round-to 8 --size 16 --batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jointprune.models import create_model  # noqa: E402
from jointprune.options import LatencyOptions  # noqa: E402
from jointprune.pruning import ChannelStructure, KeepRule, extract_subnetwork, group_importance, top_k_masks  # noqa: E402
from jointprune.pruning.latency import LatencyModel, measure_pair  # noqa: E402
from jointprune.pruning.latency_verify import grown_for_target, scaled  # noqa: E402

import bench_latency_build  # noqa: E402  (beside this script)

CPU = torch.device("cpu")


def aimed(lm, kept, candidates, aim) -> list[int]:
    """`kept` times the largest common scale whose snapped counts the model puts at or under `aim`
    (the closed loop's search, from every group at its fewest up to its full width)."""
    step = grown_for_target(lm, kept, candidates, aim, 0.0, lambda counts: True)
    return step[0] if step is not None else scaled(kept, 0.0, candidates)


def build(structure, rule, batch, threads, cache_dir, calibrate=False):
    """(latency model, wall seconds to build it, candidate counts per group)."""
    cands = [rule.candidates(n) for n in structure.sizes]
    start = time.perf_counter()
    lm = LatencyModel.measure(structure, cands, CPU, batch, threads,
                              LatencyOptions(cache_dir=cache_dir, calibrate=calibrate))
    return lm, time.perf_counter() - start, cands


def constant_gaps(lm, kept) -> float:
    """The model's prediction with what runs between layers held at its dense time."""
    k = np.atleast_2d(np.asarray(kept, dtype=np.float64))
    return lm(kept) - float(lm.gaps(k, lm.sizes)[0]) + float(lm.gaps.dense.sum())


def bench_model(name, size, batch, threads, subnets, runs, seed=0, calibrate=False, coupled=False, deep=False,
                aim=None, round_to=1):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10 if name.startswith("cifar_") else 1000).eval()
    structure = ChannelStructure(model, torch.zeros(1, 3, size, size), prune_coupled=coupled)
    rule = KeepRule(round_to=round_to)
    with tempfile.TemporaryDirectory() as cache_dir:
        lm, first_s, cands = build(structure, rule, batch, threads, cache_dir)
        _, second_s, _ = build(structure, rule, batch, threads, cache_dir)
        # calibration (whole net at the fewest counts) on top of the same cached tables
        cal = build(structure, rule, batch, threads, cache_dir, calibrate=True)[0] if calibrate else None
    scores = group_importance(model, structure, "l1")
    rng = np.random.default_rng(seed)
    errors, rows, cal_errors, drifts, before, signed = [], [], [], [], [], []
    pools = [c[:max(1, len(c) // 3)] if deep else c for c in cands]
    kept_all = [[int(rng.choice(c)) for c in pools] for _ in range(subnets)]
    if aim is not None:
        kept_all = [aimed(lm, kept, cands, aim) for kept in kept_all]
    smalls = [extract_subnetwork(model, structure, top_k_masks(scores, kept)) for kept in kept_all]
    # Every sub-network is timed in two passes over all of them, minutes apart: how far the same
    # network's measured ratio moves between the passes is the measurement's own repeatability on
    # this machine, the floor under any model's error. The error is against the mean of the two.
    passes = [[measure_pair(model, small, (3, size, size), CPU, batch, threads, warmup=1, repeats=runs)
               for small in smalls] for _ in range(2)]
    for kept, first, second in zip(kept_all, *passes):
        measured = (first["ratio"] + second["ratio"]) / 2
        predicted = lm(kept) / lm.dense
        errors.append(abs(predicted - measured) / measured)
        signed.append(measured - predicted)
        before.append(abs(constant_gaps(lm, kept) / lm.dense - measured) / measured)
        drifts.append(abs(first["ratio"] - second["ratio"]) / measured)
        rows.append((predicted, first["ratio"], second["ratio"], max(first["noise"], second["noise"])))
        if cal is not None:
            cal_errors.append(abs(cal(kept) / cal.dense - measured) / measured)
    print(f"[{name}] built in {first_s:.1f} s, median error {100 * statistics.median(errors):.1f} %", flush=True)
    return {"model": name, "input": f"{size}x{size}", "batch": batch, "groups": len(cands),
            "entries": lm.info["timed_entries"], "first_s": first_s, "second_s": second_s,
            "dense_ms": lm.dense, "median_err": statistics.median(errors), "max_err": max(errors), "rows": rows,
            "median_err_constant_gaps": statistics.median(before), "gap_share": lm.gaps.dense.sum() / lm.dense,
            "median_signed": statistics.median(signed),
            "median_drift": statistics.median(drifts), "max_drift": max(drifts),
            "kept": kept_all, "candidates": cands,
            "cal_err": statistics.median(cal_errors) if cal_errors else None}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnets", type=int, default=6, help="random sub-networks per model")
    parser.add_argument("--runs", type=int, default=7, help="paired timed runs per sub-network (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="batch for ResNet-56 and MobileNetV2 (32x32)")
    parser.add_argument("--imagenet-size", type=int, default=64, help="input side for ResNet-50")
    parser.add_argument("--imagenet-batch", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["cifar_resnet56", "cifar_mobilenet_v2", "tv_resnet50"])
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--quickstart-rounds", type=int, default=3, help="rounds of bench_latency_build's measurement")
    parser.add_argument("--calibrate", action="store_true", help="also the error with LatencyOptions.calibrate")
    parser.add_argument("--coupled", action="store_true", help="also prune the residual-coupled groups")
    parser.add_argument("--deep", action="store_true", help="draw every count from the fewest third of those allowed")
    parser.add_argument("--aim", type=float, help="scale each allocation to this model latency ratio, as a budget would")
    parser.add_argument("--round-to", type=int, default=1, help="KeepRule round_to")
    parser.add_argument("--size", type=int, default=32, help="input side for ResNet-56 and MobileNetV2")
    args = parser.parse_args(argv)
    # the quickstart's build at the process's own thread count, as a quickstart run has it
    qs = None if args.skip_quickstart else bench_latency_build.build_cost(args.quickstart_rounds)
    torch.set_num_threads(args.threads)
    where = {"tv_resnet50": (args.imagenet_size, args.imagenet_batch)}
    results = [bench_model(m, *where.get(m, (args.size, args.batch)), args.threads, args.subnets, args.runs,
                           calibrate=args.calibrate, coupled=args.coupled, deep=args.deep, aim=args.aim,
                           round_to=args.round_to) for m in args.models]

    print(f"\n### Latency model vs measured latency of random extracted sub-networks (CPU, {args.threads} thread(s), "
          f"default LatencyOptions, {args.subnets} sub-networks each{', coupled groups too' if args.coupled else ''}"
          f"{', counts from the fewest third' if args.deep else ''}"
          f"{f', each scaled to a model ratio of {args.aim}' if args.aim else ''}"
          f"{f', round_to {args.round_to}' if args.round_to > 1 else ''}, median of {args.runs} interleaved pairs)\n")
    print("| model | input | batch | groups | table entries timed | build s (empty cache) | build s (cached) "
          "| dense ms | median abs. error | max abs. error | same network, pass 1 vs 2: median / max "
          "| between layers, share of dense | median abs. error with it held constant | measured - model, median |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['input']} | {r['batch']} | {r['groups']} | {r['entries']} | {r['first_s']:.1f} "
              f"| {r['second_s']:.1f} | {r['dense_ms']:.1f} | {100 * r['median_err']:.1f} % | {100 * r['max_err']:.1f} % "
              f"| {100 * r['median_drift']:.1f} % / {100 * r['max_drift']:.1f} % | {100 * r['gap_share']:.1f} % "
              f"| {100 * r['median_err_constant_gaps']:.1f} % | {r['median_signed']:+.3f} |")
    errs = [r["median_err"] for r in results]
    print(f"\nGoal median abs. error < 10 %: met for {sum(e < 0.10 for e in errs)} of {len(errs)} models.")
    if args.calibrate:
        print("with calibrate: true, median abs. error " + ", ".join(
            f"{r['model']} {100 * r['cal_err']:.1f} %" for r in results))
    print("\nper sub-network (predicted ratio / measured ratio in pass 1, pass 2 +- the larger noise):")
    for r in results:
        print(f"  {r['model']}: " + ", ".join(f"{p:.2f}/{a:.2f},{b:.2f}+-{n:.2f}" for p, a, b, n in r["rows"]))
    if qs is not None:
        print("\nquickstart (ResNet-20, batch 64, bench_latency_build.py's measurement):")
        bench_latency_build.print_cost(qs)

if __name__ == "__main__":
    main()
