"""Do the pruned widths run fast? (`model.pruning.round_to`)

At a FLOPs budget the agent may keep any count of channels, e.g. 7 of 16 or 23 of 32. oneDNN's
fast convolution paths want channel counts in multiples of its vector width, so a network of odd
widths can step no faster than the dense one although it has half the FLOPs. This bench cuts
each network to half its FLOPs with random feasible allocations (the agent's exploratory
episodes: uniform random centred actions, the clipper on), the same actions under
`round_to` 1, 2, 4 and 8, and times, interleaved with the dense network in one process:
* one training step (forward, cross-entropy, backward, SGD with momentum) in channels_last, the
  layout the library trains in by default;
* inference at batch 64 in the default layout, as the export is deployed.
It prints median ms over rounds and the median of per-round ratios to the dense network
(< 1: faster than dense), averaged over the allocations.

    python experiments/benchmarks/bench_channel_rounding.py [--nets cifar_resnet20 cifar_resnet56
        cifar_mobilenet_v2] [--allocations 3] [--rounds 7] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jointprune.agent.episode import PruningEnvironment  # noqa: E402
from jointprune.models import create_model  # noqa: E402
from jointprune.pruning import BudgetClipper, ChannelStructure, FlopsModel, group_importance, top_k_masks  # noqa: E402
from jointprune.pruning.budget import KeepRule  # noqa: E402
from jointprune.pruning.extract import extract_subnetwork  # noqa: E402
from bench_memory_format import interleaved, stepper  # noqa: E402


def mean(values) -> float:
    return sum(values) / len(values)


ROUNDINGS = (1, 2, 4, 8)


def random_cuts(net, shape, allocations: int, budget: float):
    """For each allocation seed and rounding: (kept counts, FLOPs ratio, the cut network); the same
    random actions for every rounding, so only the rounding differs."""
    st = ChannelStructure(net, torch.zeros(1, *shape), quiet=True)
    fm = FlopsModel(st)
    importance = group_importance(net, st, "l1")
    out = {}
    for a in range(allocations):
        actions = np.random.default_rng(a).uniform(0.0, 0.8, size=len(st.groups))
        for r in ROUNDINGS:
            clipper = BudgetClipper(fm, budget, KeepRule(max_ratio=0.8, round_to=r))
            env = PruningEnvironment(st, fm, clipper, centred=True)
            step = iter(actions)
            episode = env.rollout(lambda state: float(next(step)))
            kept = episode.kept
            out[(a, r)] = (kept, fm(np.asarray(kept, dtype=np.float64)) / fm.dense,
                           extract_subnetwork(net, st, top_k_masks(importance, kept)))
    return out


def train_stepper(net, x, y):
    """One training step of a copy of `net` in channels_last, the layout the library trains in."""
    return stepper(net, "channels_last", x, y)


def infer_stepper(net, x):
    net = copy.deepcopy(net).eval()

    @torch.no_grad()
    def step():
        net(x)
    step()
    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="+", default=["cifar_resnet20", "cifar_resnet56", "cifar_mobilenet_v2"])
    p.add_argument("--allocations", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the process's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"### Pruned to {args.budget} FLOPs by {args.allocations} random allocations, by rounding of the kept "
          f"counts (CPU, {torch.get_num_threads()} threads, batch 64, median of {args.rounds} interleaved rounds)\n")
    print("| network | round_to | FLOPs ratio | groups at odd widths | train step ms (channels_last) | train step / dense "
          "| inference ms | inference / dense |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.nets:
        torch.manual_seed(0)
        shape = (3, 32, 32)
        dense = create_model(name, num_classes=10)
        cuts = random_cuts(dense, shape, args.allocations, args.budget)
        x, y = torch.randn(64, *shape), torch.randint(0, 10, (64,))
        nets = {"dense": dense, **{key: net for key, (_, _, net) in cuts.items()}}
        train = interleaved({k: train_stepper(n, x, y) for k, n in nets.items()}, args.rounds, baseline="dense")
        infer = interleaved({k: infer_stepper(n, x) for k, n in nets.items()}, args.rounds, baseline="dense")
        print(f"| {name} | dense | 1.000 | 0 | {1000 * train['dense'][0]:.0f} | 1.00 | {1000 * infer['dense'][0]:.1f} | 1.00 |")
        for r in ROUNDINGS:
            keys = [(a, r) for a in range(args.allocations)]
            odd = mean([sum(k % 2 for k in cuts[key][0]) for key in keys])  # groups left at an odd width
            print(f"| {name} | {r} | {mean([cuts[k][1] for k in keys]):.3f} | {odd:.1f} "
                  f"| {1000 * mean([train[k][0] for k in keys]):.0f} | {mean([train[k][1] for k in keys]):.2f} "
                  f"| {1000 * mean([infer[k][0] for k in keys]):.1f} | {mean([infer[k][1] for k in keys]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
