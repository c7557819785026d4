"""What every jointprune DataModule shares: the four splits and the seeded reward carve.

The RL agent's reward is the accuracy of a candidate sub-network on a *reward split*. That
split is carved from the training set (never val/test, which must stay untouched for the
final report) and the weights never train on it, so the reward measures generalisation
rather than memorisation. It is evaluated without training augmentation.

Subclasses load their data in ``setup`` and implement ``_dataloader(split)`` for the split
names "train", "reward", "val" and "test"; this class does the splitting and the caching.
"""
from __future__ import annotations

from ..errors import JointPruneError

from numbers import Integral, Real

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

SPLITS = ("train", "reward", "val", "test")


class DataError(JointPruneError):
    """Missing, corrupt or mis-configured data; the message is one sentence naming the
    path or setting and what is expected."""


def check_size(name: str, size: int | float, *, allow_zero: bool = False, of: str = "the training set") -> None:
    """Reject a split size that can never be valid, before any data is read."""
    low = "0 <=" if allow_zero else "1 <="
    ok = (
        isinstance(size, Integral) and not isinstance(size, bool) and size >= (0 if allow_zero else 1)
    ) or (isinstance(size, Real) and not isinstance(size, Integral) and 0 < size < 1)
    if not ok:
        raise DataError(
            f"{name}={size!r} is out of range: give a count ({low} n < size of {of}) "
            f"or a fraction of {of} strictly between 0 and 1."
        )


def resolve_size(size: int | float, total: int) -> int:
    """A count, or a fraction of ``total`` rounded (at least 1 when non-zero), as a count."""
    if isinstance(size, Integral):
        return int(size)
    return max(1, round(size * total))


def split_indices(n: int, *, seed: int, reward_size: int | float, val_size: int | float = 0) -> dict[str, torch.Tensor]:
    """Seeded disjoint split of ``range(n)`` (the training set) into reward / val / train.

    The reward block is taken first from one permutation, so changing ``val_size`` leaves
    the reward images unchanged. Indices are returned sorted (memory-order reads).
    """
    n_reward = resolve_size(reward_size, n)
    n_val = resolve_size(val_size, n) if val_size else 0
    if n_reward + n_val >= n:
        what = f"reward_size={reward_size!r}" + (f" and val_size={val_size!r}" if n_val else "")
        raise DataError(
            f"{what} take{'' if n_val else 's'} {n_reward + n_val} of the {n} training images, "
            f"leaving none to train on: make {'them' if n_val else 'it'} smaller."
        )
    # numpy's Generator gives the same permutation on every platform and torch version,
    # so every DDP rank (and every rerun) carves the same reward split from the same seed.
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    parts = {"reward": perm[:n_reward], "val": perm[n_reward : n_reward + n_val], "train": perm[n_reward + n_val :]}
    return {k: v.sort().values for k, v in parts.items()}


class BaseDataModule(L.LightningDataModule):
    """train / reward / val / test loaders plus ``reward_tensors()``.

    ``num_classes`` and ``input_shape`` (C, H, W) are set by every subclass's ``__init__``
    so a CLI can link them into the model before ``setup`` runs.

    ``val_size`` carves a validation split from the training set too; with 0 (the default
    for datasets that ship a test set) ``val_dataloader`` serves the test set, as is usual
    for CIFAR/ImageNet where the only labelled held-out images are the official test/val.
    """

    num_classes: int
    input_shape: tuple[int, int, int]

    def __init__(
        self,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        reward_size: int | float = 0.1,
        val_size: int | float = 0,
    ) -> None:
        super().__init__()
        check_size("reward_size", reward_size)
        check_size("val_size", val_size, allow_zero=True)
        for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if not isinstance(v, Integral) or v < 1:
                raise DataError(f"{name}={v!r} is out of range: give a positive integer.")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.seed = int(seed)
        self.reward_size = reward_size
        self.val_size = val_size
        self.splits: dict[str, torch.Tensor] | None = None  # indices into the training set
        self._reward_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- subclass hooks -------------------------------------------------------------
    def _dataloader(self, split: str) -> DataLoader:
        raise NotImplementedError

    def _make_splits(self, n_train: int) -> None:
        """Called by subclasses' ``setup`` once the training-set size is known."""
        self.splits = split_indices(n_train, seed=self.seed, reward_size=self.reward_size, val_size=self.val_size)
        self._reward_cache = None

    def _require_setup(self) -> None:
        if self.splits is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are used.")

    # -- public loaders -------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._dataloader("train")

    def reward_dataloader(self) -> DataLoader:
        """Eval-transformed reward split, in fixed order. Not sharded: under DDP the caller splits it."""
        self._require_setup()
        return self._dataloader("reward")

    def val_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._dataloader("val" if len(self.splits["val"]) else "test")

    @property
    def val_is_test(self) -> bool:
        """Whether validation runs on the test split (no val split carved)."""
        self._require_setup()
        return not len(self.splits["val"])

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        return self._dataloader("test")

    def reward_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole reward split as normalised (x, y) tensors, built once and cached.

        The agent scores many sub-networks per epoch on the same images, so decoding and
        normalising them once beats re-running the loader every episode. Memory is
        reward count x C x H x W x 4 bytes (e.g. 5000 CIFAR images: 61 MB).
        """
        if self._reward_cache is None:
            xs, ys = zip(*self.reward_dataloader())
            self._reward_cache = (torch.cat(xs), torch.cat(ys))
        return self._reward_cache

    def reward_split(self, rank: int = 0, world_size: int = 1, limit: int | None = None, start: int = 0):
        """This rank's share of the reward split as (x, y, normalize), sharded *before* decoding.

        x is the dataset's compact form where it has one (uint8 for in-memory data) and
        ``normalize`` maps one batch of it to the network's input on whatever device it sits, so
        every rank holds only 1/world_size of the split, at 1 byte per pixel. ``limit`` keeps the
        first ``limit`` reward images (``model.reward.max_samples``) from position ``start`` on,
        before sharding (``start`` carves a second, disjoint block, e.g. for confirmation).
        """
        self._require_setup()
        total = len(self.splits["reward"])
        end = total if limit is None else min(start + limit, total)
        x, y, normalize = self._reward_compact(list(range(start + rank, end, world_size)))
        return x, y, normalize

    def _reward_compact(self, positions: list[int]):
        """(x, y, normalize) for these positions in the reward split. Default: decode them with
        the reward loader's own transform (float, normalised); subclasses keep uint8."""
        loader = self._dataloader("reward")
        part = DataLoader(Subset(loader.dataset, positions), batch_size=loader.batch_size,
                          collate_fn=loader.collate_fn, num_workers=loader.num_workers)
        xs, ys = zip(*part) if positions else ((torch.empty(0),), (torch.empty(0, dtype=torch.long),))
        return torch.cat(xs), torch.cat(ys), None

    def split_sizes(self) -> dict[str, int]:
        """Image count per split; val is 0 when ``val_dataloader`` serves the test set."""
        self._require_setup()
        sizes = {s: len(idx) for s, idx in self.splits.items()}
        return {**sizes, "test": len(self._dataloader("test").dataset)}
