"""CIFAR-10 / CIFAR-100 from the official python-pickle archives, held in memory as uint8.

See ``memory.py`` for why augmentation is batched tensor ops and what ``device_resident``
does. The reward split is carved from the 50000 training images.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..utils.safe_unpickle import safe_load
from .base import DataError
from .download import check_files, extract_verified, fetch
from .memory import InMemoryDataModule


def _get(d: dict, key: str):
    # official files are Python-2 pickles (str keys under latin1); files written by
    # Python 3 carry bytes keys (b"data"). Accept both.
    return d[key] if key in d else d[key.encode()]


class _CIFARDataModule(InMemoryDataModule):
    """Shared CIFAR loader; subclasses only name files, keys, checksums and statistics.

    Args:
        root: directory holding (or to receive) the extracted folder, or that folder itself.
        download: let ``prepare_data`` fetch the official archive, check its md5, extract it.
        augment: pad-4 random crop + horizontal flip on training batches (never on reward,
            val or test), as batched tensor ops.
        reward_size, val_size: count or fraction of the 50000 training images; with
            ``val_size=0`` validation runs on the test set.
        device_resident: keep the uint8 set on the Trainer's GPU and augment there (no
            workers, no host-to-device copies); see ``memory.py`` for why.
    """

    title: ClassVar[str]
    folder: ClassVar[str]  # directory inside the archive and under root
    url: ClassVar[str]
    archive_md5: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    meta_file: ClassVar[str]
    files: ClassVar[dict[str, str]]  # every file above -> md5, as torchvision checks them
    label_key: ClassVar[str]
    names_key: ClassVar[str]
    layout: ClassVar[str]  # the expected layout, for error messages
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    classes_count: ClassVar[int]

    def __init__(
        self,
        root: str | Path = "data",
        *,
        download: bool = False,
        augment: bool = True,
        reward_size: int | float = 0.1,
        val_size: int | float = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        device_resident: bool = False,
    ) -> None:
        super().__init__(
            augment=augment, device_resident=device_resident, batch_size=batch_size,
            eval_batch_size=eval_batch_size, num_workers=num_workers, pin_memory=pin_memory,
            seed=seed, reward_size=reward_size, val_size=val_size,
        )
        self.save_hyperparameters()
        root = Path(root).expanduser()
        # accept root pointing at the extracted folder itself as well as at its parent
        self.data_dir = root if root.name == self.folder else root / self.folder
        self.download = download
        self.num_classes = self.classes_count
        self.input_shape = (3, 32, 32)
        self.classes: list[str] | None = None  # class names, read from the meta file in setup
        self.preprocess = {"source": "32x32 RGB, values 0..255, divided by 255 to [0, 1]", "resize": None}

    def prepare_data(self) -> None:
        """Verify the extracted files' md5s; with ``download=True`` fetch and extract if needed.
        Lightning runs this once per node, before ``setup`` on every rank."""
        problem = check_files(self.data_dir, self.files)
        if problem is None:
            return
        if not self.download:
            what = "not found" if problem == "it does not exist" else f"corrupt ({problem})"
            raise DataError(
                f"{self.title} data {what} at {self.data_dir}: expected {self.layout}; "
                "set download=True or point root at it."
            )
        archive = self.data_dir.parent / Path(self.url).name
        fetch(self.url, archive, self.archive_md5)
        extract_verified(archive, self.data_dir, lambda d: check_files(d, self.files))

    def _read(self, name: str) -> dict:
        path = self.data_dir / name
        if not path.is_file():
            raise DataError(
                f"{self.title} data not found at {self.data_dir} ({name} is missing): expected {self.layout}; "
                "set download=True or point root at it."
            )
        try:
            with open(path, "rb") as f:
                # a restricted unpickler: a planted batch file cannot run code
                return safe_load(f, encoding="latin1")
        except Exception as e:  # unpickling can raise almost anything on a damaged file
            raise DataError(f"{self.title} file {path} is unreadable ({type(e).__name__}: {e}): expected {self.layout}.") from e

    def _read_batches(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            d = self._read(name)
            try:
                x, y = np.asarray(_get(d, "data")), np.asarray(_get(d, self.label_key), dtype=np.int64)
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{self.title} file {self.data_dir / name} lacks {e}: expected {self.layout}.") from e
            ok = x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072 and y.shape == (len(x),)
            if not ok or (len(y) and (y.min() < 0 or y.max() >= self.num_classes)):
                raise DataError(
                    f"{self.title} file {self.data_dir / name} has data {x.dtype}{list(x.shape)} and "
                    f"{len(y)} labels: expected uint8 Nx3072 rows (R, G, B planes of 32x32) and N labels "
                    f"in 0..{self.num_classes - 1}."
                )
            xs.append(x)
            ys.append(y)
        x = torch.from_numpy(np.concatenate(xs)).view(-1, 3, 32, 32)
        return x, torch.from_numpy(np.concatenate(ys))

    def _load(self):
        meta = self._read(self.meta_file)
        try:
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, self.names_key)]
        except (KeyError, TypeError) as e:
            raise DataError(f"{self.title} file {self.data_dir / self.meta_file} lacks {e}: expected {self.layout}.") from e
        return (*self._read_batches(self.train_files), *self._read_batches(self.test_files))

    def _mean_std(self, train_x):
        # the usual published per-channel statistics of the full training set
        return self.mean, self.std


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (10 classes, 50000 train / 10000 test images, 32x32 RGB)."""

    title = "CIFAR-10"
    folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    archive_md5 = "c58f30108f718f92721af3b95e74349a"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    files = {  # md5s as torchvision.datasets.CIFAR10 checks them
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    }
    label_key = "labels"
    names_key = "label_names"
    layout = "data_batch_1..5, test_batch and batches.meta (python pickle format)"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    classes_count = 10


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 with its 100 fine labels (50000 train / 10000 test images, 32x32 RGB)."""

    title = "CIFAR-100"
    folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    archive_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    files = {  # md5s as torchvision.datasets.CIFAR100 checks them
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    }
    label_key = "fine_labels"
    names_key = "fine_label_names"
    layout = "train, test and meta (python pickle format)"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    classes_count = 100
