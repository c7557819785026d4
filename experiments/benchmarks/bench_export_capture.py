"""What sharing the start-of-fit torch.export capture saves at the end of a run.

A run captures the dense network once at the start (models/checks.check_exportable, so that a
forward torch.export cannot capture fails before training). The export at the end used to trace
the pruned network again; it now reuses that capture with the pruned weights
(pruning/capture.py) and only decomposes it to Core ATen. This script times, for the quickstart's
CifarResNet-20 cut to half its channels per group, the start check and the whole export folder
written both ways (interleaved, fresh then shared, per repeat), and prints the medians.

    python experiments/benchmarks/bench_export_capture.py [--repeats 5] [--depth 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jointprune.models import CifarResNet  # noqa: E402
from jointprune.models.checks import check_exportable  # noqa: E402
from jointprune.pruning import (  # noqa: E402
    ChannelStructure, extract_subnetwork, group_importance, save_pruned, top_k_masks)
from jointprune.pruning.capture import DenseCapture  # noqa: E402
from jointprune.pruning.export import load_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shape = (3, 32, 32)
    dense = CifarResNet(depth=args.depth, num_classes=10).eval()
    structure = ChannelStructure(dense, torch.zeros(1, *shape))
    kept = [max(1, g.size // 2) for g in structure.groups]
    small = extract_subnetwork(dense, structure, top_k_masks(group_importance(dense, structure), kept)).eval()
    report = {"dense_flops": 1, "pruned_flops": 1, "flops_budget": 0.5, "dense_params": 1, "pruned_params": 1,
              "groups": []}
    example = torch.zeros(1, *shape)
    times = {"start check (dense capture)": [], "export, fresh capture": [], "export, shared capture": []}
    batches = set()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            start = time.perf_counter()
            capture = DenseCapture.of(check_exportable(dense, shape))
            times["start check (dense capture)"].append(time.perf_counter() - start)
            for label, cap in (("export, fresh capture", None), ("export, shared capture", capture)):
                start = time.perf_counter()
                out = save_pruned(small, Path(tmp) / f"{r}-{cap is None}", report, example, capture=cap)
                times[label].append(time.perf_counter() - start)
                batches.add((label, load_report(out)["batch"]))
    print(f"CifarResNet-{args.depth}, {args.repeats} repeats interleaved; program batch: {sorted(batches)}\n")
    print("| step | median s | min s |")
    print("|---|---|---|")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} |")
    saved = [a - b for a, b in zip(times["export, fresh capture"], times["export, shared capture"])]
    print(f"| saved per run (paired) | {statistics.median(saved):.2f} | |")


if __name__ == "__main__":
    main()
