"""Batched augmentation is exact; the loaders survive Lightning's sampler swap and a Trainer."""
import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.utilities.data import _update_dataloader
from torch import nn

from jointprune.data import DigitsDataModule
from jointprune.data.augment import Normalize, random_crop_flip


def test_crop_flip_outputs_are_crops_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, padding=2, flip=True)
    padded = F.pad(x, (2,) * 4)
    seen_flip = seen_plain = False
    for i in range(len(x)):
        crops = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        plain = any(torch.equal(out[i], c) for c in crops)
        mirrored = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or mirrored
        seen_plain |= plain
        seen_flip |= mirrored
    assert seen_flip and seen_plain
    assert torch.equal(random_crop_flip(x, 0, False), x)


def test_normalize_matches_reference():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalize(mean, std)(x), ref)


def test_loader_survives_lightnings_distributed_sampler_swap():
    dm = DigitsDataModule(batch_size=50)
    dm.setup()
    halves = []
    for rank in (0, 1):  # what Lightning's data connector does on each DDP rank
        loader = dm.train_dataloader()
        sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=rank)
        halves.append(_update_dataloader(loader, sampler))
    ys = [torch.cat([y for _, y in h]) for h in halves]
    n = len(dm.splits["train"])
    assert all(len(y) == (n // 2) // 50 * 50 for y in ys)  # drop_last kept, half each
    for h in halves:  # Lightning's per-epoch set_epoch reaches our sampler through its wrapper
        h.sampler.set_epoch(3)
    assert halves[0].sampler.dataset._sampler.epoch == 3
    x, _ = next(iter(halves[0]))
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_and_test_run_through_the_datamodule(tmp_path):
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=2, limit_test_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, accelerator="cpu",
    )
    dm = DigitsDataModule(batch_size=16)
    trainer.fit(_Tiny(), datamodule=dm)
    trainer.test(_Tiny(), datamodule=dm, verbose=False)
    assert trainer.callback_metrics  # validation ran on the carved val split
