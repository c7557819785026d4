"""ImageNet-style folder trees (``root/train/<class>/*.JPEG``, ``root/val/<class>/...``).

Images are decoded per item with PIL, as torchvision's ImageFolder does: at 224x224 the
decode dominates and DataLoader workers (``num_workers``) are the way to scale it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .augment import Normalize
from .base import BaseDataModule, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = "class sub-folders of JPEG/PNG images (torchvision ImageFolder layout)"


class ImageList(Dataset):
    """(path, label) samples decoded with PIL; a bad file names itself instead of a deep trace."""

    def __init__(self, samples: list[tuple[str, int]], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as e:  # includes PIL.UnidentifiedImageError
            raise DataError(f"Image {path} is unreadable ({e}): expected a JPEG or PNG file.") from e
        return self.transform(img), label


def _scan(folder: Path, class_to_idx: dict[str, int] | None = None) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Class mapping and samples of one split; val reuses train's mapping so labels agree."""
    if not folder.is_dir():
        raise DataError(f"ImageNet data not found at {folder}: expected {LAYOUT}.")
    is_val = class_to_idx is not None
    try:
        classes, found = find_classes(folder)
    except FileNotFoundError as e:
        raise DataError(f"ImageNet data at {folder} has no class folders: expected {LAYOUT}.") from e
    if not is_val:
        class_to_idx = found
    elif unknown := sorted(set(classes) - set(class_to_idx)):
        raise DataError(
            f"ImageNet folder {folder} has classes {unknown[:3]} absent from train/: "
            "expected the same class sub-folders as train/."
        )
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    # a val/ subset may lack some classes; every train class must have images
    empty = sorted(set(class_to_idx) - {classes[label] for _, label in samples}) if not is_val else []
    if empty or not samples:
        where = f"class folder {folder / empty[0]}" if empty else folder
        raise DataError(f"ImageNet data at {where} holds no images: expected {LAYOUT}.")
    return class_to_idx, samples


class ImageNetDataModule(BaseDataModule):
    """ImageNet (or any ImageFolder tree with ``train/`` and ``val/``).

    Training: RandomResizedCrop(crop_size) + horizontal flip; eval (val, test, reward):
    Resize(resize_size) + CenterCrop(crop_size); both normalised with ``mean``/``std``.
    ``resize_size`` defaults to crop_size * 256/224 (256 for 224). ImageNet's only labelled
    held-out set is ``val/``, so test_dataloader serves it too, and so does val_dataloader
    unless ``val_size`` carves a validation split from train. ``reward_tensors()`` holds the
    reward split as float32: 0.6 MB per 224x224 image, so keep ``reward_size`` to a few
    thousand images.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        crop_size: int = 224,
        resize_size: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        reward_size: int | float = 0.01,
        val_size: int | float = 0,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
            pin_memory=pin_memory, seed=seed, reward_size=reward_size, val_size=val_size,
        )
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise DataError(f"ImageNet data not found at {train_dir}: expected {LAYOUT}, and the same under val/.")
        try:  # only the folder listing: cheap, so num_classes is known before setup
            self.classes = find_classes(train_dir)[0]
        except FileNotFoundError as e:
            raise DataError(f"ImageNet data at {train_dir} has no class folders: expected {LAYOUT}.") from e
        self.num_classes = len(self.classes)
        self.input_shape = (3, crop_size, crop_size)
        resize_size = resize_size or round(crop_size * 256 / 224)
        # for the export: how a new image becomes an input (torchvision's eval transform)
        self.normalization = {"mean": list(mean), "std": list(std)}
        self.preprocess = {"source": "RGB image, values 0..255, divided by 255 to [0, 1]",
                           "resize": resize_size, "center_crop": crop_size, "interpolation": "bilinear"}
        norm = [T.ToTensor(), T.Normalize(mean, std)]
        self.train_transform = T.Compose([T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip(), *norm])
        self.eval_transform = T.Compose([T.Resize(resize_size), T.CenterCrop(crop_size), *norm])
        # the reward split stays uint8 (4x smaller than float32), normalised per batch on the device
        self.reward_transform = T.Compose([T.Resize(resize_size), T.CenterCrop(crop_size), T.PILToTensor()])
        self.reward_normalize = Normalize(mean, std)
        self._samples: dict[str, list[tuple[str, int]]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._samples is not None:
            return
        class_to_idx, train = _scan(self.root / "train")
        _, test = _scan(self.root / "val", class_to_idx)
        self._make_splits(len(train))
        self._samples = {s: [train[i] for i in idx.tolist()] for s, idx in self.splits.items()}
        self._samples["test"] = test

    def _reward_compact(self, positions: list[int]):
        """Only this rank's reward images are decoded, to uint8 (see BaseDataModule.reward_split)."""
        data = ImageList([self._samples["reward"][i] for i in positions], self.reward_transform)
        loader = DataLoader(data, batch_size=self.eval_batch_size, num_workers=self.num_workers)
        xs, ys = zip(*loader) if positions else ((torch.empty(0, dtype=torch.uint8),), (torch.empty(0, dtype=torch.long),))
        return torch.cat(xs), torch.cat(ys), self.reward_normalize

    def _dataloader(self, split: str) -> DataLoader:
        train = split == "train"
        batch = self.batch_size if train else self.eval_batch_size
        data = ImageList(self._samples[split], self.train_transform if train else self.eval_transform)
        return DataLoader(
            data,
            batch_size=batch,
            shuffle=train,
            drop_last=train and len(data) >= batch,  # no BatchNorm-crashing batch of 1
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )
