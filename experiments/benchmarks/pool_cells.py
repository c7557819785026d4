"""jointprune against one baseline, pooled over every cell of several bench_methods.py stems.

Each cell alone (5 paired seeds) rarely separates a difference of a point from zero. Pooling
asks the question a user asks ("over the settings measured, is jointprune ahead of X?") two
ways: the mean of all paired differences with a 95 % Student-t interval over the pairs (treats
every pair alike, so it is too narrow when cells differ), and the mean of the cells' means with
an interval over cells (the honest one when the cells differ, wide with few cells). Pairs are
checked as in bench_methods.py: same initial weights and batches (hashes) or they are left out
and counted.

    python experiments/benchmarks/pool_cells.py bench_methods_centred bench_methods_vgg6 \
        bench_methods_vgg6_digits [--baseline uniform random tp_magnitude]
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from bench_methods import t_interval
from compare_stems import RESULTS, runs


def paired(stems: list[str], baseline: str, results: Path = RESULTS) -> tuple[dict, int]:
    """{(stem, task, net, budget): [jointprune - baseline, in test top-1 points, per seed]}, and how
    many pairs failed the same-weights-and-batches check."""
    cells, unpaired = defaultdict(list), 0
    for stem in stems:
        base = runs(stem, baseline, results)
        for (task, net, budget, seed), jp in sorted(runs(stem, "jointprune", results).items()):
            other = base.get((task, net, budget, seed))
            if other is None:
                continue
            if (jp.get("init_hash"), jp.get("data_hash")) != (other.get("init_hash"), other.get("data_hash")):
                unpaired += 1
                continue
            cells[(stem, task, net, budget)].append(100 * (jp["test_acc"] - other["test_acc"]))
    return cells, unpaired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stems", nargs="+")
    ap.add_argument("--baseline", nargs="+", default=["uniform", "random", "tp_magnitude"])
    args = ap.parse_args()
    print("| baseline | cells | pairs | per cell: mean Δ (n) | all pairs: mean Δ [95 % CI] "
          "| mean of cell means [95 % CI over cells] | cells ahead / behind (by mean) |")
    print("|---|---|---|---|---|---|---|")
    for baseline in args.baseline:
        cells, unpaired = paired(args.stems, baseline)
        if not cells:
            print(f"| {baseline} | 0 | 0 | | | | |")
            continue
        pairs = [d for ds in cells.values() for d in ds]
        means = [statistics.fmean(ds) for ds in cells.values()]
        m, lo, hi = t_interval(pairs)
        cm, clo, chi = t_interval(means)
        per_cell = ", ".join(f"{task}/{net}/{budget}: {statistics.fmean(ds):+.2f} ({len(ds)})"
                             for (_, task, net, budget), ds in cells.items())
        note = f" ({unpaired} unpaired left out)" if unpaired else ""
        print(f"| {baseline} | {len(cells)} | {len(pairs)}{note} | {per_cell} | {m:+.2f} [{lo:+.2f}, {hi:+.2f}] "
              f"| {cm:+.2f} [{clo:+.2f}, {chi:+.2f}] | {sum(v > 0 for v in means)} / {sum(v < 0 for v in means)} |")


if __name__ == "__main__":
    main()
