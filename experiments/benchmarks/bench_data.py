"""How much does the CIFAR DataModule cost on top of the training step itself?

Writes a synthetic CIFAR-10 set in the official pickle layout to a temp dir, loads it through
CIFAR10DataModule (prepare_data + setup, as a user would), then times one training epoch of a
ResNet-20 fed (a) by ``train_dataloader()`` and (b) by a hand-written loop over the same
uint8 tensors already in memory, with the same augmentation and the same number of steps.
The paths take turns step by step, so load from other processes hits all alike; the table
reports medians over runs, and a run's ratio compares the paths within that run.

    python experiments/benchmarks/bench_data.py [--images 5000] [--runs 3] [--batch-size 128] [--threads N]
"""
from __future__ import annotations

import argparse
import hashlib
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from jointprune.data import CIFAR10DataModule
from jointprune.data.augment import random_crop_flip


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, str]:
    """Official layout: 5 train batches + test_batch + batches.meta. Returns name -> md5."""
    rng, folder = np.random.default_rng(seed), root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    chunks = np.array_split(np.arange(n_train), 5)
    files = {f"data_batch_{i + 1}": len(c) for i, c in enumerate(chunks)} | {"test_batch": n_test}
    for name, n in files.items():
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def make_model() -> nn.Module:
    try:
        from jointprune.models import create_model

        return create_model("cifar_resnet20", num_classes=10)
    except ImportError:  # stand-in while jointprune.models is not there: a few conv-BN-ReLU blocks
        def block(i, o, s):
            return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        layers = block(3, 16, 1) + block(16, 16, 1) + block(16, 32, 2) + block(32, 32, 1) + block(32, 64, 2)
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def interleaved_epoch(model, opt, feeds: dict, steps: int) -> dict[str, float]:
    """Seconds each feed spends over ``steps`` SGD steps (``model=None``: fetching only).

    The feeds take turns step by step, so a busy machine slows all of them alike and the
    ratio stays meaningful even when the absolute numbers do not.
    """
    spent = dict.fromkeys(feeds, 0.0)
    its = {}
    for name, make in feeds.items():
        t = time.perf_counter()
        its[name] = iter(make())  # starting an epoch (sampler permutation etc.) is part of the cost
        spent[name] += time.perf_counter() - t
    for _ in range(steps):
        for name, it in its.items():
            t = time.perf_counter()
            x, y = next(it)
            if model is not None:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            spent[name] += time.perf_counter() - t
    return spent


def in_memory_batches(x, y, batch_size, normalize, padding=4):
    """Baseline: slice an in-memory uint8 tensor directly, same augmentation, no DataLoader."""
    perm = torch.randperm(len(y))
    for i in range(0, len(y) - batch_size + 1, batch_size):
        idx = perm[i : i + batch_size]
        yield normalize(random_crop_flip(x[idx], padding, flip=True)), y[idx]


class PILSet(Dataset):
    """For reference: the usual torchvision per-image path (PIL crop/flip, ToTensor, Normalize)."""

    def __init__(self, x, y, mean, std):
        self.x, self.y = x.permute(0, 2, 3, 1).numpy(), y
        self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.tf(Image.fromarray(self.x[i])), self.y[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000, help="training images in the synthetic set")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        md5s = write_cifar10(Path(tmp), args.images, 1000)
        # the synthetic files' checksums stand in for the official ones
        synthetic = type("SyntheticCIFAR10", (CIFAR10DataModule,), {"files": md5s})
        dm = synthetic(tmp, batch_size=args.batch_size)
        dm.prepare_data()
        dm.setup("fit")
    loader = dm.train_dataloader()
    steps = len(loader)
    x, y = dm._data["train"]
    model = make_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pil = DataLoader(PILSet(x, y, dm.mean, dm.std), batch_size=args.batch_size, shuffle=True, drop_last=True)
    feeds = {
        "DataModule train_dataloader()": lambda: loader,
        "in-memory tensors, same augmentation": lambda: in_memory_batches(x, y, args.batch_size, dm._normalize),
        "torchvision per-image PIL transforms (reference)": lambda: pil,
    }
    interleaved_epoch(model, opt, feeds, 2)  # warm-up: allocator, kernels, first-call costs
    runs = [interleaved_epoch(model, opt, feeds, steps) for _ in range(args.runs)]
    alone = [interleaved_epoch(None, None, feeds, steps) for _ in range(args.runs)]

    base = "in-memory tensors, same augmentation"
    n = steps * args.batch_size
    print(f"\nResNet-20 training epoch on {n} synthetic CIFAR images ({steps} steps x {args.batch_size}), "
          f"{torch.get_num_threads()} CPU threads, median of {args.runs} interleaved runs\n")
    print("| path | training images/s | ratio to in-memory | data path alone, images/s |")
    print("|---|---:|---:|---:|")
    for name in feeds:
        rate = statistics.median(n / r[name] for r in runs)
        ratio = statistics.median(r[base] / r[name] for r in runs)
        fetch = statistics.median(n / r[name] for r in alone)
        print(f"| {name} | {rate:.0f} | {ratio:.3f} | {fetch:.0f} |")


if __name__ == "__main__":
    main()
