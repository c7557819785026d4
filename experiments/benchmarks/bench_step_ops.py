"""How lean is one training step? Dispatched ops and host synchronisations per step.

Runs `JointPruneModule`'s real training step under a Lightning Trainer (CPU, no logger, no
progress bar) and counts, with a `TorchDispatchMode`, every aten op dispatched between the
start and the end of one training batch (after two warm-up batches), plus the ops that make the
host wait for the device: `aten::_local_scalar_dense` (`.item()`, `bool()`, `int()` of a tensor),
`aten::item`, `aten::is_nonzero`, and copies whose result lives on the CPU while their input
does not (`.cpu()`, `.to("cpu")`; on a CPU-only machine none can occur, so that column only
means something on a GPU). Variants, per model:

- dense: no incumbent sub-network yet (the warm-up epochs);
- masks: an incumbent (budget 0.5) set but the alignment off (`alignment.weight: 0`);
- align: the incumbent and the alignment regulariser (the joint phase's step);
- val masked: one validation batch with the incumbent's masks (masked evaluation).

Op counts do not depend on the batch size, so the inputs are small. The goal (issue 9): the
alignment adds at most 15 % ops and no host sync.

    python experiments/benchmarks/bench_step_ops.py [--models cifar_resnet56 cifar_mobilenet_v2 tv_resnet50]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from jointprune.module import JointPruneModule  # noqa: E402
from jointprune.models import create_model  # noqa: E402
from jointprune.pruning import group_importance, top_k_masks  # noqa: E402

SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero"}
SHAPES = {"cifar_resnet56": (3, 32, 32), "cifar_mobilenet_v2": (3, 32, 32), "tv_resnet50": (3, 64, 64)}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.syncs = Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = f"aten::{func._schema.name.split('::')[-1]}"
        self.ops[name] += 1
        if name in SYNC_OPS:
            self.syncs[name] += 1
        elif name in ("aten::_to_copy", "aten::copy_") and isinstance(out, torch.Tensor) and out.device.type == "cpu":
            src = args[1] if name == "aten::copy_" else args[0]
            if isinstance(src, torch.Tensor) and src.device.type != "cpu":
                self.syncs["device->cpu copy"] += 1
        return out


class CountOneBatch(L.Callback):
    """Counts the ops of training batch `batch` (and of validation batch 0) of epoch 0."""

    def __init__(self, batch: int):
        self.batch, self.train, self.val, self._mode = batch, None, None, None

    def _start(self):
        self._mode = OpCounter()
        self._mode.__enter__()

    def _stop(self):
        self._mode.__exit__(None, None, None)
        return self._mode

    def on_train_batch_start(self, trainer, pm, batch, batch_idx):
        if batch_idx == self.batch:
            self._start()

    def on_train_batch_end(self, trainer, pm, outputs, batch, batch_idx):
        if batch_idx == self.batch:
            self.train = self._stop()

    def on_validation_batch_start(self, trainer, pm, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            self._start()

    def on_validation_batch_end(self, trainer, pm, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            self.val = self._stop()


class RandomData(L.LightningDataModule):
    def __init__(self, shape, classes: int, n: int = 32, batch: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
        self.batch = batch

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch, drop_last=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[:8], self.y[:8]), batch_size=self.batch)

    def reward_tensors(self):
        return self.x[:8], self.y[:8]


def budget_masks(pm, budget: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    kept = []
    for _ in pm.structure.groups:
        kept.append(pm.clipper.clip(kept, float(rng.uniform(0, 0.8)))[0])
    return kept, top_k_masks(group_importance(pm.cnn, pm.structure, "l1"), kept)


def count(name: str, variant: str) -> tuple[OpCounter, OpCounter]:
    shape = SHAPES.get(name, (3, 32, 32))
    torch.manual_seed(0)
    cnn = create_model(name, num_classes=10)
    pm = JointPruneModule(cnn, flops_budget=0.5, input_shape=shape,
                          alignment={"weight": 0.0 if variant == "masks" else 1e-4},
                          schedule={"warmup_epochs": 1, "agent_until": 2, "extract_at": None})
    if variant != "dense":
        pm.incumbent_kept, pm.incumbent_masks = budget_masks(pm)
        pm.last_epoch_done = 5  # the agent does not act in this short run
    counter = CountOneBatch(batch=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, limit_train_batches=4, limit_val_batches=1,
                        default_root_dir=tempfile.mkdtemp(prefix="bench-step-ops-"),
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[counter])

    class Stop(Exception):
        pass

    class StopAfterVal(L.Callback):
        def on_validation_end(self, trainer, pm):
            raise Stop

    trainer.callbacks.append(StopAfterVal())
    try:
        trainer.fit(pm, datamodule=RandomData(shape, 10))
    except Stop:
        pass
    return counter.train, counter.val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print("| model | step | ops | vs dense | host syncs | sync ops |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        dense_ops = None
        results = {v: count(name, v) for v in ("dense", "masks", "align")}
        for variant, (train, val) in results.items():
            ops = sum(train.ops.values())
            dense_ops = dense_ops or ops
            syncs = sum(train.syncs.values())
            print(f"| {name} | {variant} | {ops} | {ops / dense_ops:.3f}x | {syncs} | {dict(train.syncs) or '-'} |")
        val = results["align"][1]
        print(f"| {name} | val masked (batch) | {sum(val.ops.values())} | | {sum(val.syncs.values())} | "
              f"{dict(val.syncs) or '-'} |")


if __name__ == "__main__":
    main()
