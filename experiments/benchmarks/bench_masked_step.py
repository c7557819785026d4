"""What does training through channel masks cost? (masked vs unmasked SGD step)

During the joint phase every training step runs the CNN through `MaskPlan.forward` (masked
parameters passed with torch.func.functional_call) instead of a plain `model(x)`. This times a
full training step (forward + cross-entropy + backward + SGD step with momentum and weight decay)
at batch 64 on 32x32 inputs for CIFAR ResNet-56 and ResNet-20, with masks for a random
BudgetClipper episode at budget 0.5 (l1 top-k) against the same step unmasked. Both variants
run interleaved on the same model, so drift on a shared machine hits both alike; the table gives
the median images/s and the median of the per-run ratios. It also times
`MaskPlan.masked_parameters` alone (forward and backward of the mask products).

    python experiments/benchmarks/bench_masked_step.py [--quick] [--runs 5] [--steps 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from jointprune.models import create_model  # noqa: E402
from jointprune.pruning import (  # noqa: E402
    BudgetClipper,
    ChannelStructure,
    FlopsModel,
    MaskPlan,
    group_importance,
    top_k_masks,
)


def budget_masks(model, st, budget: float, seed: int = 0):
    clipper = BudgetClipper(FlopsModel(st), budget)
    rng = np.random.default_rng(seed)
    kept = []
    for _ in st.groups:
        kept.append(clipper.clip(kept, float(rng.uniform(0, 0.8)))[0])
    return top_k_masks(group_importance(model, st, "l1"), kept), clipper.check(kept) / clipper.flops.dense


def time_steps(model, opt, forward, x, y, steps: int) -> float:
    """Images per second over `steps` full training steps."""
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - start)


def time_mask_products(plan, model, masks, reps: int = 50) -> float:
    """Milliseconds for masked_parameters (+ backward through the products), alone."""
    params = [p for p in model.parameters()]
    start = time.perf_counter()
    for _ in range(reps):
        out = plan.masked_parameters(model, masks)
        torch.autograd.grad(sum(v.sum() for v in out.values()), params, allow_unused=True)
    return 1000 * (time.perf_counter() - start) / reps


def bench(name: str, runs: int, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).train()
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32))
    plan = MaskPlan(st)
    masks, flops_frac = budget_masks(model, st, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    plain = model
    masked = lambda inp: plan.forward(model, inp, masks)  # noqa: E731
    # Warm-up both paths (allocator, autograd graph caches).
    time_steps(model, opt, plain, x, y, 2)
    time_steps(model, opt, masked, x, y, 2)
    plain_rates, masked_rates, ratios = [], [], []
    for r in range(runs):
        order = [(plain, plain_rates), (masked, masked_rates)]
        if r % 2:  # alternate which variant goes first
            order.reverse()
        for fwd, sink in order:
            sink.append(time_steps(model, opt, fwd, x, y, steps))
        ratios.append(masked_rates[-1] / plain_rates[-1])
    return {"model": name, "groups": len(st), "flops": flops_frac,
            "plain": statistics.median(plain_rates), "masked": statistics.median(masked_rates),
            "ratio": statistics.median(ratios), "ratio_lo": min(ratios), "ratio_hi": max(ratios),
            "mask_ms": time_mask_products(plan, model, masks),
            "step_ms": 1000 * batch / statistics.median(plain_rates)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="interleaved runs (median reported, at least 5)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-20 only, 5 runs of 2 steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = 5 if args.quick else max(args.runs, 5)
    steps = 2 if args.quick else args.steps
    names = ["cifar_resnet20"] if args.quick else ["cifar_resnet56", "cifar_resnet20"]
    rows = [bench(n, runs, steps, args.batch) for n in names]

    print(f"\n### Training step, masked (budget 0.5) vs unmasked (batch {args.batch}, 32x32, "
          f"{args.threads} thread(s), median of {runs} interleaved runs x {steps} steps)\n")
    print("| model | groups | masked FLOPs / dense | unmasked img/s | masked img/s | masked / unmasked (min-max) "
          "| masked_parameters fwd+bwd | share of an unmasked step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['groups']} | {r['flops']:.3f} | {r['plain']:.1f} | {r['masked']:.1f} "
              f"| {r['ratio']:.3f} ({r['ratio_lo']:.3f}-{r['ratio_hi']:.3f}) | {r['mask_ms']:.2f} ms "
              f"| {100 * r['mask_ms'] / r['step_ms']:.2f} % |")
    worst = min(r["ratio"] for r in rows)
    print(f"\nTarget: masked / unmasked >= 0.95: {'met' if worst >= 0.95 else 'NOT met'} (worst {worst:.3f}).")


if __name__ == "__main__":
    main()
