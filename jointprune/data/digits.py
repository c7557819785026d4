"""scikit-learn's 8x8 handwritten digits: ships with scikit-learn, so it is the offline
default for the quickstart and the tests (1797 images, 10 classes, seconds per epoch on CPU)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, check_size, resolve_size
from .memory import InMemoryDataModule


class DigitsDataModule(InMemoryDataModule):
    """Digits with seeded test / val / reward / train splits, kept in memory.

    Args:
        resize: side length after bilinear upsampling (32 lets CIFAR-sized models run
            unchanged); ``None`` keeps 8x8.
        channels: 1, or 3 to repeat the grey plane for RGB models.
        normalize: standardise with the training split's mean/std; else scale to [0, 1].
        augment: random shift (pad-and-crop by side/8 pixels) for training; no flips,
            which would turn some digits into other shapes.
        test_size: count or fraction of all 1797 images held out as the test set.
        val_size, reward_size: count or fraction of the remaining training set.
    """

    flip = False

    def __init__(
        self,
        *,
        resize: int | None = 32,
        channels: int = 3,
        normalize: bool = True,
        augment: bool = True,
        test_size: int | float = 0.2,
        val_size: int | float = 0.1,
        reward_size: int | float = 0.1,
        batch_size: int = 64,
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
        if channels not in (1, 3):
            raise DataError(f"channels={channels!r} is out of range: give 1 (grey) or 3 (grey repeated as RGB).")
        if resize is not None and (not isinstance(resize, int) or resize < 8):
            raise DataError(f"resize={resize!r} is out of range: give an integer side >= 8, or null to keep 8x8.")
        check_size("test_size", test_size, of="all 1797 images")
        self.save_hyperparameters()
        self.resize, self.channels, self.normalize, self.test_size = resize, channels, normalize, test_size
        side = resize or 8
        self.num_classes = 10
        self.classes = [str(d) for d in range(10)]
        # for the export: how a new 8x8 digit (values 0..16, as sklearn gives them) becomes an input
        self.preprocess = {"source": "8x8 grey, values 0..16, divided by 16 to [0, 1]",
                           "resize": resize, "interpolation": "bilinear", "channels": channels}
        self.input_shape = (channels, side, side)
        self.crop_padding = max(1, side // 8)  # 4 px at 32x32, like CIFAR's pad-4 crop
        self.test_indices: torch.Tensor | None = None  # into the 1797 images, set by setup
        self.pool_indices: torch.Tensor | None = None  # the training set the splits index

    def _load(self):
        from sklearn.datasets import load_digits  # local: sklearn import is slow-ish

        digits = load_digits()
        x = torch.from_numpy(digits.images).float()[:, None]  # (1797, 1, 8, 8), values 0..16
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        # store as uint8 0..255 like CIFAR so both share the batched uint8 pipeline
        x = (x * (255 / 16)).round_().clamp_(0, 255).to(torch.uint8)
        x = x.expand(-1, self.channels, -1, -1).contiguous()
        y = torch.from_numpy(digits.target).long()
        # the test carve uses its own seeded stream, separate from the base class's reward carve
        n_test = resolve_size(self.test_size, len(y))
        if n_test >= len(y) - 1:
            raise DataError(f"test_size={self.test_size!r} leaves no training images out of {len(y)}: make it smaller.")
        perm = torch.from_numpy(np.random.default_rng([self.seed, 1]).permutation(len(y)))
        self.test_indices, self.pool_indices = perm[:n_test].sort().values, perm[n_test:].sort().values
        return x[self.pool_indices], y[self.pool_indices], x[self.test_indices], y[self.test_indices]

    def _mean_std(self, train_x):
        if not self.normalize:
            return (0.0,) * self.channels, (1.0,) * self.channels
        x = train_x.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
        return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())
