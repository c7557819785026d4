"""Batched tensor augmentation for in-memory uint8 images, on whatever device they live.

Per-image PIL transforms cost tens of microseconds each in Python; for 32x32 images that is
comparable to the CNN step itself on CPU. Doing pad-crop + flip as one gather over the
whole uint8 batch, then one fused normalise, costs a few index ops per *batch*, and runs
unchanged on a GPU when the set is device-resident (the airbench approach).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding: int = 0, flip: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding``, take a random same-size crop per image, mirror half of them.

    Matches torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` in
    distribution. Crop and flip are folded into one gather index, so the batch is read once.
    """
    n, c, h, w = x.shape
    dev = x.device
    if padding:
        x = F.pad(x, (padding,) * 4)  # constant 0 like torchvision's default fill
    width = x.shape[-1]
    g = generator
    rows = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=g) + torch.arange(h, device=dev)
    cols = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=g) + torch.arange(w, device=dev)
    if flip:
        mirror = torch.rand(n, 1, device=dev, generator=g) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)
    # flat index into each padded image plane: (n, h*w), shared by all channels
    idx = (rows[:, :, None] * width + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, -1).gather(2, idx).reshape(n, c, h, w)


class Normalize:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std``, constants cached per device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._consts:
            # fold the /255 into the constants: one sub and one mul per pixel
            m = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1) * 255
            s = 1 / (torch.tensor(self.std, device=x.device).view(1, -1, 1, 1) * 255)
            self._consts[x.device] = (m, s)
        m, s = self._consts[x.device]
        return x.float().sub_(m).mul_(s)

    def __getstate__(self) -> dict:  # DataLoader workers get a fresh cache (no CUDA tensors pickled)
        return {**self.__dict__, "_consts": {}}


class BatchTransform:
    """DataLoader ``collate_fn`` for :class:`TensorSplit` batches: (uint8 x, y) -> (float x, y).

    Module-level class (not a lambda) so it pickles into DataLoader worker processes.
    """

    def __init__(self, normalize: Normalize, padding: int = 0, flip: bool = False, seed: int = 0) -> None:
        self.normalize, self.padding, self.flip, self.seed = normalize, padding, flip, seed
        self.epoch = 0

    def __call__(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, idx = batch if len(batch) == 3 else (*batch, None)
        if self.padding or self.flip:
            # Seeded by (seed, epoch, which images): the same batch gets the same augmentation
            # whichever worker builds it and however the run was interrupted and resumed.
            g = None
            if idx is not None:
                g = torch.Generator(device=x.device)
                g.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_033 + int(idx.sum())) % (1 << 62))
            x = random_crop_flip(x, self.padding, self.flip, generator=g)
        return self.normalize(x), y
