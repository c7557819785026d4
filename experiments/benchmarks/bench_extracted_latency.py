"""Do FLOPs saved by extraction turn into CPU latency saved?

For each model and FLOPs budget, one removal ratio r is applied to every prunable group (default
groups, i.e. no residual-coupled channels; ResNet-56 also with prune_coupled=True), r binary-
searched so that the network lands just under the budget, and the kept counts passed through
BudgetClipper (which must leave them unchanged: they are feasible). The channels kept are the l1
top-k; the network is physically extracted. Rows with round_to=8 keep multiples of 8 channels.

Latency: eval mode, torch.no_grad, batch 64, one forward per run, each run timing the dense and
the pruned network back to back (alternating which goes first), after warm-up; median of --runs
runs. speed-up = dense / pruned latency (median of the per-run ratios); FLOPs reduction = dense /
pruned FLOPs (torch-pruning's counter); efficiency = speed-up / FLOPs reduction (goal >= 0.8,
i.e. >= 1.6x at budget 0.5). "dense ms" is the median of the dense timings paired with that row.

    python experiments/benchmarks/bench_extracted_latency.py [--quick] [--runs 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from jointprune.models import create_model  # noqa: E402
from jointprune.pruning import (  # noqa: E402
    BudgetClipper,
    ChannelStructure,
    FlopsModel,
    KeepRule,
    extract_subnetwork,
    group_importance,
    top_k_masks,
)


def uniform_kept(fm: FlopsModel, budget: float, rule: KeepRule) -> tuple[float, list[int]] | None:
    """Smallest common removal ratio whose kept counts fit the budget, clipped by BudgetClipper."""
    sizes = [int(n) for n in fm.sizes]

    def kept(r):
        return [rule.keep(n, r) for n in sizes]

    limit = budget * fm.dense
    if fm(kept(rule.max_ratio)) > limit:
        return None  # not reachable with one common ratio
    lo, hi = 0.0, rule.max_ratio
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fm(kept(mid)) <= limit else (mid, hi)
    clipper = BudgetClipper(fm, budget, rule)
    out = []
    for _ in sizes:
        out.append(clipper.clip(out, hi)[0])
    assert all(o >= k for o, k in zip(out, kept(hi))), "the clipper only adds channels to a feasible uniform choice"
    clipper.check(out)
    return hi, out


def timed(net: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    net(x)
    return time.perf_counter() - start


def latency_pairs(dense: torch.nn.Module, small: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int):
    """Per run, the dense and the pruned net back to back (alternating which goes first), so that
    load from other processes on a shared machine hits both sides of each ratio alike."""
    dense_t, small_t = [], []
    with torch.no_grad():
        for _ in range(warmup):
            dense(x)
            small(x)
        for r in range(runs):
            if r % 2:
                small_t.append(timed(small, x))
                dense_t.append(timed(dense, x))
            else:
                dense_t.append(timed(dense, x))
                small_t.append(timed(small, x))
    return dense_t, small_t


def bench(name: str, size: int, budgets, runs: int, warmup: int, batch: int, coupled: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10 if name.startswith("cifar_") else 1000).eval()
    x1 = torch.randn(1, 3, size, size)
    st = ChannelStructure(model, x1, prune_coupled=coupled)
    fm = FlopsModel(st)
    scores = group_importance(model, st, "l1")
    dense_params = sum(p.numel() for p in model.parameters())
    assert fm.dense == tp.utils.count_ops_and_params(model, x1)[0]
    variants = []
    for round_to in (1, 8):
        rule = KeepRule(round_to=round_to)
        for b in budgets:
            found = uniform_kept(fm, b, rule)
            if found is None:
                variants.append({"budget": b, "round_to": round_to, "net": None})
                continue
            r, kept = found
            small = extract_subnetwork(model, st, top_k_masks(scores, kept)).eval()
            flops, params = tp.utils.count_ops_and_params(small, x1)
            assert flops == fm(kept) <= b * fm.dense
            variants.append({"budget": b, "round_to": round_to, "net": small, "r": r,
                             "flops": flops / fm.dense, "params": params / dense_params})
    x = torch.randn(batch, 3, size, size)
    rows, all_dense = [], []
    label = f"{name}{' (prune_coupled)' if coupled else ''}"
    for v in variants:
        row = {"model": label, "input": f"{size}x{size}", "budget": v["budget"], "round_to": v["round_to"]}
        if v["net"] is None:
            row["infeasible"] = True
        else:
            dense_t, t = latency_pairs(model, v["net"], x, runs, warmup)
            all_dense += dense_t
            speedup = statistics.median(d / p for d, p in zip(dense_t, t))
            row.update(r=v["r"], flops=v["flops"], params=v["params"], dense_ms=1000 * statistics.median(dense_t),
                       pruned_ms=1000 * statistics.median(t), speedup=speedup, reduction=1 / v["flops"],
                       eff=speedup * v["flops"])
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per network (median reported, at least 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--imagenet-size", type=int, default=224, help="input size for mobilenet_v2 (64 if too slow)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small inputs, batch 16, budget 0.5 only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = max(args.runs, 5)
    if args.quick:
        batch, warmup, budgets = 16, 1, (0.5,)
        cases = [("cifar_resnet56", 32, False), ("cifar_mobilenet_v2", 32, False), ("mobilenet_v2", 64, False)]
    else:
        batch, warmup, budgets = args.batch, args.warmup, (0.7, 0.5, 0.3)
        # The prune_coupled ResNet-56 rows also thin the residual streams (and their BN/add/ReLU).
        cases = [("cifar_resnet56", 32, False), ("cifar_resnet56", 32, True), ("cifar_mobilenet_v2", 32, False),
                 ("mobilenet_v2", args.imagenet_size, False)]
    rows = []
    for name, size, coupled in cases:
        rows += bench(name, size, budgets, runs, warmup, batch, coupled)

    print(f"\n### Extracted vs dense CPU latency (eval, no_grad, batch {batch}, {args.threads} thread(s), "
          f"median of {runs} paired runs; uniform ratio r, l1 top-k)\n")
    print("| model | input | budget | round_to | r | FLOPs / dense | params / dense | dense ms | pruned ms "
          "| speed-up | FLOPs reduction | speed-up / FLOPs reduction |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        head = f"| {r['model']} | {r['input']} | {r['budget']} | {r['round_to']} "
        if r.get("infeasible"):
            print(head + "| - | not reachable with one common ratio | | | | | | |")
            continue
        print(head + f"| {r['r']:.3f} | {r['flops']:.3f} | {r['params']:.3f} | {r['dense_ms']:.1f} "
              f"| {r['pruned_ms']:.1f} | {r['speedup']:.2f}x | {r['reduction']:.2f}x | {r['eff']:.2f} |")
    effs = [r["eff"] for r in rows if not r.get("infeasible")]
    print(f"\nGoal: speed-up / FLOPs reduction >= 0.8: met in {sum(e >= 0.8 for e in effs)} of {len(effs)} rows "
          f"(median {statistics.median(effs):.2f}).")


if __name__ == "__main__":
    main()
