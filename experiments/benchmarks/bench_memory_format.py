"""Does training in channels_last pay? (`model.optim.memory_format`, default channels_last)

Times one full training step (forward, cross-entropy, backward, SGD with momentum and weight
decay) at batch 64 with the conv weights contiguous (NCHW) against channels_last (NHWC), for the
dense network and for it pruned to half its FLOPs (the uniform allocation over the internal groups,
cut with our extraction), as the two phases of a run train. The two layouts of one network run
interleaved (A, B, A, B, ...) in one process, so load from other processes hits both alike; the
table gives median ms per step and the median of the per-round ratios (< 1: channels_last is
faster).

    python experiments/benchmarks/bench_memory_format.py [--nets cifar_resnet20 cifar_resnet56
        cifar_mobilenet_v2 tv_resnet50] [--rounds 9] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from jointprune.models import create_model  # noqa: E402
from jointprune.agent.episode import PruningEnvironment  # noqa: E402
from jointprune.pruning import BudgetClipper, ChannelStructure, FlopsModel, group_importance, top_k_masks  # noqa: E402
from jointprune.pruning.extract import extract_subnetwork  # noqa: E402
from jointprune.utils.memory_format import to_memory_format  # noqa: E402

SIDE = {"tv_resnet50": 64}  # ImageNet-style networks at a size a 2-core CPU can step


def half_flops(net, shape):
    """The network cut to the library's uniform allocation at half its FLOPs (the uniform
    baseline: one common ratio over the groups, the last ones topped up to the budget)."""
    st = ChannelStructure(net, torch.zeros(1, *shape))
    fm = FlopsModel(st)
    kept = PruningEnvironment(st, fm, BudgetClipper(fm, 0.5)).uniform_under_budget()
    return extract_subnetwork(net, st, top_k_masks(group_importance(net, st, "l1"), kept))


def stepper(net, layout, x, y):
    net = copy.deepcopy(net).train()
    to_memory_format(net, layout)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()  # warm-up: oneDNN picks and caches its kernels
    return step


def interleaved(steppers: dict, rounds: int, baseline: str) -> dict:
    """Per program: median seconds and the median of its per-round ratios to `baseline`, the
    programs run interleaved (order reversed every other round), so load hits all alike."""
    times = {k: [] for k in steppers}
    keys = list(steppers)
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            start = time.perf_counter()
            steppers[k]()
            times[k].append(time.perf_counter() - start)
    return {k: (statistics.median(v), statistics.median(b / a for a, b in zip(times[baseline], v)))
            for k, v in times.items()}


def time_pair(net, shape, rounds: int):
    x, y = torch.randn(64, *shape), torch.randint(0, 10, (64,))
    steps = {layout: stepper(net, layout, x, y) for layout in ("contiguous", "channels_last")}
    timed = interleaved(steps, rounds, baseline="contiguous")
    return 1000 * timed["contiguous"][0], 1000 * timed["channels_last"][0], timed["channels_last"][1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="+", default=["cifar_resnet20", "cifar_resnet56", "cifar_mobilenet_v2", "tv_resnet50"])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the process's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"### Training step, contiguous vs channels_last (CPU, {torch.get_num_threads()} threads, batch 64, "
          f"median of {args.rounds} interleaved rounds)\n")
    print("| network | input | phase | contiguous ms | channels_last ms | channels_last / contiguous |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.nets:
        torch.manual_seed(0)
        side = SIDE.get(name, 32)
        shape = (3, side, side)
        dense = create_model(name, num_classes=10)
        for phase, net in (("dense", dense), ("pruned to 0.5 FLOPs", half_flops(dense, shape))):
            a, b, ratio = time_pair(net, shape, args.rounds)
            print(f"| {name} | {side}x{side} | {phase} | {a:.0f} | {b:.0f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
