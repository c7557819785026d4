"""Paired difference of one method between two bench_methods.py result sets (stems).

bench_methods.py pairs methods within one stem. To judge a changed setting of one method (a
schedule, an agent option) against the runs of an earlier stem, this pairs the run files of
--method in NEW with those of the same cell and seed in BASE, checks that each pair started from
the same weights and saw the same batches (the hashes bench_methods.py records), and prints per
cell the per-seed top-1 points, the removed mass at the cut, the allocations, and the mean
difference NEW - BASE with a 95 % Student-t interval.

    python experiments/benchmarks/compare_stems.py bench_methods_centred bench_methods_earlycut
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from bench_methods import t_interval

RESULTS = Path(__file__).resolve().parent / "results"


def runs(stem: str, method: str, results: Path = RESULTS) -> dict:
    """{(task, net, budget, seed): run} of `method` in the stem's run files."""
    out = {}
    for path in sorted((results / f"{stem}_runs").glob(f"*-{method}-s*.json")):
        r = json.loads(path.read_text())
        out[(r["task"], r["net"], r["budget"], r["seed"])] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--method", default="jointprune")
    args = ap.parse_args()
    base, new = runs(args.base, args.method), runs(args.new, args.method)
    cells = defaultdict(list)
    for key in sorted(new):
        if key not in base:
            print(f"{key}: no {args.method} run in {args.base}; skipped")
            continue
        a, b = base[key], new[key]
        if (a["init_hash"], a["data_hash"]) != (b["init_hash"], b["data_hash"]):
            raise SystemExit(f"{key}: the two runs did not start from the same weights and batches; not paired")
        cells[key[:3]].append((key[3], a, b))
    print(f"| task | net | budget | seed | {args.base} top-1 % | {args.new} top-1 % | Δ points | removed mass at cut "
          f"| same allocation |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for cell, pairs in cells.items():
        diffs = []
        for seed, a, b in pairs:
            diffs.append(100 * (b["test_acc"] - a["test_acc"]))
            print(f"| {' | '.join(map(str, cell))} | {seed} | {100 * a['test_acc']:.2f} | {100 * b['test_acc']:.2f} "
                  f"| {diffs[-1]:+.2f} | {a.get('removed_mass_at_cut', float('nan')):.3f} / "
                  f"{b.get('removed_mass_at_cut', float('nan')):.3f} | {'yes' if a['kept'] == b['kept'] else 'no'} |")
        summary.append((cell, len(diffs), *t_interval(diffs)))
    print(f"\n| task | net | budget | n | mean Δ ({args.new} - {args.base}) | 95 % CI |")
    print("|---|---|---|---|---|---|")
    for cell, n, m, lo, hi in summary:
        print(f"| {' | '.join(map(str, cell))} | {n} | {m:+.2f} | [{lo:+.2f}, {hi:+.2f}] |")


if __name__ == "__main__":
    main()
