"""DataModule for datasets small enough to hold whole as uint8 tensors (digits, CIFAR).

Why tensors and batched augmentation instead of torchvision's per-image PIL pipeline:
on CPU the per-image path (PIL crop, flip, ToTensor, Normalize, then default_collate
stacking) costs more than a ResNet-20 step on small batches; here a batch is one index op,
one gather for crop+flip and one fused normalise, done in the DataLoader's ``collate_fn`` so
that ``num_workers > 0`` moves it off the training process.

Why augment in ``collate_fn`` and not in Lightning's ``on_after_batch_transfer``: the loaders
then yield ready-to-use batches wherever they are iterated, including by the RL agent
reading ``reward_dataloader()`` outside the Trainer's batch hooks. On GPU the same code runs
on the device when ``device_resident=True``: the whole uint8 set is moved there in ``setup``
(CIFAR-10 is 150 MB) and indexing, crop, flip and normalise are GPU kernels, the way the
fastest CIFAR trainers (airbench) feed a GPU; Lightning's host-to-device copy becomes a
no-op. Workers cannot touch CUDA tensors, so ``device_resident`` always means
``num_workers=0``; on a CPU-only run that is all it changes.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import BatchTransform, Normalize
from .base import BaseDataModule


class TensorSplit(Dataset):
    """(x uint8 N×C×H×W, y int64 N); ``__getitems__`` makes the DataLoader fetch a batch
    with one index op instead of N ``__getitem__`` calls and a stack."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(idx, device=self.x.device)
        return self.x[i], self.y[i], i  # the indices seed the batch's augmentation


class EpochShuffle(Sampler[int]):
    """A random order that is a function of (seed, epoch) alone, not of the global RNG state,
    so a resumed run sees exactly the batches the uninterrupted run would have seen. Lightning
    calls ``set_epoch`` before each epoch; the epoch also reaches the batch augmentation."""

    def __init__(self, n: int, seed: int, transform: BatchTransform) -> None:
        self.n, self.seed, self.transform, self.epoch = n, seed, transform, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.transform.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class InMemoryDataModule(BaseDataModule):
    """Subclasses implement ``_load()`` and ``_mean_std()`` and set ``crop_padding``/``flip``."""

    crop_padding: int = 4  # pad-and-crop shift for training augmentation
    flip: bool = True  # random horizontal flip for training augmentation

    def __init__(self, *, augment: bool = True, device_resident: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.augment = bool(augment)
        self.device_resident = bool(device_resident)
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._normalize: Normalize | None = None

    # -- subclass hooks -------------------------------------------------------------
    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (train_x, train_y, test_x, test_y); x uint8 N×C×H×W, y int64."""
        raise NotImplementedError

    def _mean_std(self, train_x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std in [0, 1] units; ``train_x`` is the weight-training split."""
        raise NotImplementedError

    # -- Lightning ------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._data is not None:  # Lightning calls setup per stage; load once
            return
        train_x, train_y, test_x, test_y = self._load()
        self._make_splits(len(train_y))
        self._normalize = Normalize(*self._mean_std(train_x[self.splits["train"]]))
        device = self._device() if self.device_resident else torch.device("cpu")
        data = {s: (train_x[i], train_y[i]) for s, i in self.splits.items()}
        data["test"] = (test_x, test_y)
        self._data = {s: (x.to(device), y.to(device)) for s, (x, y) in data.items()}

    @property
    def normalization(self) -> dict | None:
        """Per-channel mean/std applied to images scaled to [0, 1] (known after ``setup``);
        the export records it so new images can be preprocessed as in training."""
        if self._normalize is None:
            return None
        return {"mean": list(self._normalize.mean), "std": list(self._normalize.std)}

    def _device(self) -> torch.device:
        """The Trainer's device (this rank's GPU under DDP), else the current GPU, else CPU."""
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def _reward_compact(self, positions: list[int]):
        """The reward images stay uint8 (eval transform = normalise only); normalised per batch."""
        x, y = self._data["reward"]
        i = torch.as_tensor(positions, dtype=torch.long, device=x.device)
        return x[i], y[i], self._normalize

    def _dataloader(self, split: str) -> DataLoader:
        x, y = self._data[split]
        train = split == "train"
        aug = train and self.augment
        workers = 0 if self.device_resident else self.num_workers
        batch = self.batch_size if train else self.eval_batch_size
        transform = BatchTransform(self._normalize, self.crop_padding if aug else 0, self.flip and aug, seed=self.seed)
        return DataLoader(
            TensorSplit(x, y),
            batch_size=batch,
            sampler=EpochShuffle(len(y), self.seed, transform) if train else None,
            # a trailing batch of 1 would crash BatchNorm in train mode; keep it if it is all there is
            drop_last=train and len(y) >= batch,
            collate_fn=transform,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory and not x.is_cuda and torch.cuda.is_available(),
        )
