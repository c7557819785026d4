"""How fast is the exact FLOPs model, and the budget clipping built on it?

The agent evaluates FLOPs many times per episode (state features, the clipping bounds of every
group), so they must cost microseconds. For CIFAR ResNet-56 (27 prunable groups by default, 30
with prune_coupled) this times, on one core:

  single     FlopsModel(kept) on one kept-channel vector at a time, in a Python loop
  batched    FlopsModel(K) on a [N, G] batch of vectors (N = 64 and 1024), evals/s
  episode    a full BudgetClipper episode (one clip per group, random actions), clips/s
  upper      the same episodes with the clipper as it was before the lower bound (upper bound
             only, one batched FLOPs call per group), re-implemented here as the baseline
  baseline   what the polynomial replaces: torch-pruning's counter
             (tp.utils.count_ops_and_params) on the dense net (a lower bound: no surgery), and
             extract_subnetwork + counter (what an exact answer costs without the polynomial)

Every row is the median over --runs runs; ratios are against the baselines of the same run.

    python experiments/benchmarks/bench_flops.py [--quick] [--runs 5]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, numpy's BLAS included (set before numpy loads)

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from jointprune.models import create_model  # noqa: E402
from jointprune.pruning import (  # noqa: E402
    BudgetClipper,
    ChannelStructure,
    FlopsModel,
    extract_subnetwork,
    full_masks,
    group_importance,
    top_k_masks,
)


def rate(fn, items_per_call: int, min_time: float) -> float:
    """Items per second of `fn`, called repeatedly for at least `min_time` seconds."""
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls * items_per_call / elapsed


def bench(coupled: bool, runs: int, min_time: float, rng: np.random.Generator) -> list[dict]:
    model = create_model("cifar_resnet56", num_classes=10).eval()
    x1 = torch.randn(1, 3, 32, 32)
    st = ChannelStructure(model, x1, prune_coupled=coupled)
    fm = FlopsModel(st)
    sizes = np.array(st.sizes)
    pool = rng.integers(np.maximum(1, sizes // 5), sizes + 1, size=(4096, len(sizes))).astype(np.float64)
    rows_single = [pool[i] for i in range(len(pool))]
    scores = group_importance(model, st)
    clipper = BudgetClipper(fm, 0.5)
    actions = rng.uniform(0, 0.8, size=(256, len(sizes)))

    def single():
        for k in rows_single[:1000]:
            fm(k)

    def batched64():
        fm(pool[:64])

    def batched1024():
        fm(pool[:1024])

    state = {"i": 0}

    def episode():
        a = actions[state["i"] % len(actions)]
        state["i"] += 1
        kept = []
        for g in range(len(sizes)):
            kept.append(clipper.clip(kept, a[g])[0])
        clipper.check(kept)

    def upper_only():
        # The clipper before the lower bound: cap each group from above only (rest at fewest).
        a = actions[state["i"] % len(actions)]
        state["i"] += 1
        kept = []
        for g in range(len(sizes)):
            cands = clipper.candidates[g]
            trial = np.tile(clipper.fewest, (len(cands), 1))
            trial[:, :g] = kept
            trial[:, g] = cands
            feasible = np.rint(fm(trial)) <= clipper.limit
            most = cands[feasible][-1] if feasible.any() else cands[0]
            kept.append(int(min(max(clipper.rule.keep(int(sizes[g]), a[g]), cands[0]), most)))
        clipper.check(kept)

    def counter_dense():
        tp.utils.count_ops_and_params(model, x1)

    kept_half = [max(1, n // 2) for n in st.sizes]
    masks_half = top_k_masks(scores, kept_half)

    def extract_and_count():
        tp.utils.count_ops_and_params(extract_subnetwork(model, st, masks_half), x1)

    # Sanity: the thing being timed is exact.
    assert fm(kept_half) == tp.utils.count_ops_and_params(extract_subnetwork(model, st, masks_half), x1)[0]
    assert fm(st.sizes) == tp.utils.count_ops_and_params(extract_subnetwork(model, st, full_masks(st)), x1)[0]

    results = {k: [] for k in ("single", "batched64", "batched1024", "episode", "upper", "counter", "extract")}
    for _ in range(runs):  # interleaved, so drift on a shared machine hits every row alike
        results["single"].append(rate(single, 1000, min_time))
        results["batched64"].append(rate(batched64, 64, min_time))
        results["batched1024"].append(rate(batched1024, 1024, min_time))
        results["episode"].append(rate(episode, len(sizes), min_time))
        results["upper"].append(rate(upper_only, len(sizes), min_time))
        results["counter"].append(rate(counter_dense, 1, min_time))
        results["extract"].append(rate(extract_and_count, 1, min_time))
    med = {k: statistics.median(v) for k, v in results.items()}
    spread = {k: (min(v), max(v)) for k, v in results.items()}
    label = f"ResNet-56 ({len(sizes)} groups{', coupled' if coupled else ''})"
    rows = []
    for key, what in (("single", "FlopsModel, one vector per call"),
                      ("batched64", "FlopsModel, batch of 64 vectors"),
                      ("batched1024", "FlopsModel, batch of 1024 vectors"),
                      ("episode", "BudgetClipper.clip, full episodes"),
                      ("upper", "before: upper bound only, full episodes"),
                      ("counter", "baseline: tp counter on the dense net"),
                      ("extract", "baseline: extract_subnetwork + tp counter")):
        unit = "clips/s" if key in ("episode", "upper") else "evals/s"
        rows.append({"model": label, "what": what, "rate": med[key], "lo": spread[key][0], "hi": spread[key][1],
                     "unit": unit, "vs_counter": med[key] / med["counter"], "vs_extract": med[key] / med["extract"],
                     "episodes": med[key] / len(sizes) if key in ("episode", "upper") else None})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per row; the table shows the median")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timed run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 very short runs, default groups only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs, min_time = (5, 0.05) if args.quick else (max(args.runs, 5), args.min_time)
    rng = np.random.default_rng(0)
    rows = []
    for coupled in ((False,) if args.quick else (False, True)):
        rows += bench(coupled, runs, min_time, rng)

    print(f"\n### FlopsModel / BudgetClipper throughput (1 thread, median of {runs} runs, min-max in brackets)\n")
    print("| model | what | rate | range | x tp counter | x extract+count |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        extra = f" ({r['episodes']:,.0f} episodes/s)" if r["episodes"] else ""
        print(f"| {r['model']} | {r['what']} | {r['rate']:,.0f} {r['unit']}{extra} | {r['lo']:,.0f}-{r['hi']:,.0f} "
              f"| {r['vs_counter']:,.1f} | {r['vs_extract']:,.1f} |")
    for label in dict.fromkeys(r["model"] for r in rows):
        eps = {r["what"]: r["rate"] for r in rows if r["model"] == label}
        print(f"\n{label}: clipped episodes with the lower bound run at "
              f"{eps['BudgetClipper.clip, full episodes'] / eps['before: upper bound only, full episodes']:.2f}x "
              "the rate of the upper-bound-only clipper.")
    single = next(r for r in rows if r["what"].startswith("FlopsModel, one"))["rate"]
    print(f"\nTarget: >= 10,000 single-vector evals/s for ResNet-56 on one core: "
          f"{'met' if single >= 10_000 else 'NOT met'} ({single:,.0f}/s).")


if __name__ == "__main__":
    main()
