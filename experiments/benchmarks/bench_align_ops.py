"""Dispatched ops and host synchronisations of one training step: dense vs with the alignment.

Counted with a TorchDispatchMode (every aten op that reaches the dispatcher); a sync is
`_local_scalar_dense` / `is_nonzero` / `item` (what `.item()`, `bool()` and `if tensor` call) or a
copy to the CPU. The alignment is measured three ways: `add_grad_` (its gradient after backward, used in
training with `alignment.proximal: false`), `prox_` (the default: the penalty's proximal step after
SGD's) and the differentiable penalty through autograd (only under fp16 loss scaling).

    python experiments/benchmarks/bench_align_ops.py [--models cifar_resnet56 cifar_mobilenet_v2]
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from jointprune.models import create_model
from jointprune.pruning import AlignmentRegularizer, ChannelStructure

SYNC_OPS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.item")


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = "aten." + str(func.overloadpacket).split(".")[-1] if hasattr(func, "overloadpacket") else str(func)
        self.ops[name] += 1
        if name in SYNC_OPS:
            self.syncs += 1
        if name in ("aten._to_copy", "aten.copy_"):
            src = args[1] if name == "aten.copy_" else args[0]
            dst_dev = args[0].device if name == "aten.copy_" else kwargs.get("device")
            if dst_dev is not None and torch.device(dst_dev).type == "cpu" and src.device.type != "cpu":
                self.syncs += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def random_masks(structure, keep: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    masks = []
    for n in structure.sizes:
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.randperm(n, generator=g)[:max(1, int(round(keep * n)))]] = True
        masks.append(m)
    return masks


def step_counts(model, reg, masks, x, y, mode: str) -> OpCounter:
    """One SGD step (forward, CE, backward, optimizer) with the alignment applied as `mode`."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):  # warm: momentum buffers exist, the alignment's index tensors are built
        counter = OpCounter()
        with counter:
            loss = F.cross_entropy(model(x), y)
            if mode == "autograd":
                loss = loss + reg(model, masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mode == "lean":
                reg.add_grad_(model, masks)
            opt.step()
            if mode == "prox":
                reg.prox_(model, masks, lr=0.1)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["cifar_resnet56", "cifar_mobilenet_v2"])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model | form | dense step ops | + proximal step (default) | ratio | syncs | + gradient (add_grad_) | "
          "ratio | syncs | + through autograd | ratio | syncs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = create_model(name, num_classes=10)
        x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
        structure = ChannelStructure(model, x[:1])
        masks = random_masks(structure)
        for form in ("per_group", "per_channel"):
            reg = AlignmentRegularizer(structure, per_channel=form == "per_channel", include_bn=True, weight=1e-3)
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            dense = step_counts(model, reg, masks, x, y, "dense")
            cells = []
            for mode in ("prox", "lean", "autograd"):
                c = step_counts(model, reg, masks, x, y, mode)
                cells += [str(c.total - dense.total), f"{(c.total - dense.total) / dense.total:.3f}",
                          str(c.syncs - dense.syncs)]
            print(f"| {name} | {form} | {dense.total} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
