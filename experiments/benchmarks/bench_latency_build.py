"""What the latency tables cost at the start of the quickstart, against one of its training epochs.

Per round, interleaved: the FLOPs model (built in every run; its surgery also feeds the latency
model), the latency tables with an empty cache, the same tables read back from that cache, and one
plain training epoch of the same network on the quickstart's data (ResNet-20, digits at 32x32,
batch 64, SGD). Prints each round and the medians; the goal (issue 11) is a build under 10 % of an
epoch. Threads: the process's default (set OMP_NUM_THREADS to change it).

    python experiments/benchmarks/bench_latency_build.py --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from jointprune.data import DigitsDataModule
from jointprune.models import CifarResNet
from jointprune.options import LatencyOptions
from jointprune.pruning import ChannelStructure, FlopsModel, KeepRule
from jointprune.pruning.latency import LatencyModel


def build(cache_dir: str) -> tuple[float, float, int]:
    """(FLOPs model seconds, latency tables seconds, entries timed) as a run builds them."""
    model = CifarResNet(depth=20, num_classes=10).eval()
    structure = ChannelStructure(model, torch.zeros(1, 3, 32, 32), quiet=True)
    start = time.perf_counter()
    flops = FlopsModel(structure)
    flops_s = time.perf_counter() - start
    rule = KeepRule()
    candidates = [rule.candidates(n) for n in structure.sizes]
    tables = LatencyModel.measure(structure, candidates, torch.device("cpu"), 64, torch.get_num_threads(),
                                  LatencyOptions(cache_dir=cache_dir), probe=flops.timed_probe)
    return flops_s, tables.info["build_seconds"], tables.info["timed_entries"]


def train_epoch(dm: DigitsDataModule) -> float:
    net = CifarResNet(depth=20, num_classes=10).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    start = time.perf_counter()
    for x, y in dm.train_dataloader():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def build_cost(rounds: int) -> dict:
    """Medians over `rounds` interleaved rounds (tables with an empty cache, read back, one epoch),
    each round printed as it ends. bench_latency_model.py reports the same figure through this."""
    dm = DigitsDataModule(batch_size=64, reward_size=64)  # the quickstart's data
    dm.setup("fit")
    rows = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as cache_dir:
            flops_s, empty_s, entries = build(cache_dir)
            _, cached_s, _ = build(cache_dir)  # the same tables, read back from the cache
        epoch_s = train_epoch(dm)
        rows.append((flops_s, empty_s, cached_s, epoch_s))
        print(f"round {r}: FLOPs model {flops_s:.2f} s | tables {empty_s:.2f} s empty cache ({entries} entries timed), "
              f"{cached_s:.2f} s cached | training epoch {epoch_s:.2f} s", flush=True)
    med = [statistics.median(col) for col in zip(*rows)]
    return dict(zip(("flops_s", "tables_s", "cached_s", "epoch_s"), med), rounds=rounds, threads=torch.get_num_threads())


def print_cost(cost: dict) -> None:
    print(f"\n| threads | FLOPs model s | tables s (empty cache) | tables s (cached) | epoch s | tables / epoch |")
    print("|---|---|---|---|---|---|")
    share = cost["tables_s"] / cost["epoch_s"]
    print(f"| {cost['threads']} | {cost['flops_s']:.2f} | {cost['tables_s']:.2f} | {cost['cached_s']:.2f} | "
          f"{cost['epoch_s']:.2f} | {share:.1%} (cached {cost['cached_s'] / cost['epoch_s']:.1%}) |")
    print(f"goal (issue 11) tables under 10 % of an epoch: {'met' if share < 0.10 else 'MISSED'} "
          f"(median of {cost['rounds']} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_cost(build_cost(args.rounds))


if __name__ == "__main__":
    main()
