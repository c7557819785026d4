"""DigitsDataModule: seeded, disjoint splits; shapes; augmentation only where it belongs."""
import pytest
import torch

from jointprune.data import DataError, DigitsDataModule


def _dm(**kw):
    dm = DigitsDataModule(**kw)
    dm.setup("fit")
    return dm


def test_attributes_known_before_setup():
    dm = DigitsDataModule()
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32)
    assert DigitsDataModule(resize=None, channels=1).input_shape == (1, 8, 8)


def test_splits_disjoint_and_cover_training_set():
    dm = _dm(seed=3)
    s = {k: set(v.tolist()) for k, v in dm.splits.items()}
    assert not (s["reward"] & s["train"]) and not (s["reward"] & s["val"]) and not (s["val"] & s["train"])
    assert s["reward"] | s["val"] | s["train"] == set(range(len(dm.pool_indices)))
    # the test images are outside the pool everything else is carved from
    assert not set(dm.test_indices.tolist()) & set(dm.pool_indices.tolist())
    assert len(dm.test_indices) + len(dm.pool_indices) == 1797


def test_split_is_deterministic_by_seed():
    a, b, c = _dm(seed=1), _dm(seed=1), _dm(seed=2)
    for k in ("train", "reward", "val"):
        assert torch.equal(a.splits[k], b.splits[k])
    assert torch.equal(a.test_indices, b.test_indices)
    assert not torch.equal(a.splits["reward"], c.splits["reward"])
    # changing val_size leaves the reward images where they were
    assert torch.equal(_dm(seed=1, val_size=50).splits["reward"], a.splits["reward"])


@pytest.mark.parametrize(
    "reward_size, expected", [(100, 100), (0.25, round(0.25 * 1438)), (1, 1)]
)
def test_reward_size_count_and_fraction(reward_size, expected):
    dm = _dm(reward_size=reward_size, test_size=359, val_size=0)
    sizes = dm.split_sizes()
    assert sizes["reward"] == expected and sizes["test"] == 359
    assert sizes["train"] == 1438 - expected and sizes["val"] == 0
    x, y = dm.reward_tensors()
    assert x.shape == (expected, 3, 32, 32) and y.shape == (expected,)


def test_batches_shapes_and_normalisation():
    dm = _dm(batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) <= set(range(10))
    rx, _ = dm.reward_tensors()
    assert abs(rx.mean().item()) < 0.2 and 0.8 < rx.std().item() < 1.2  # standardised
    xv, _ = next(iter(dm.val_dataloader()))
    xt, _ = next(iter(dm.test_dataloader()))
    assert xv.shape[1:] == xt.shape[1:] == (3, 32, 32)
    x1, _ = next(iter(_dm(resize=None, channels=1, normalize=False).test_dataloader()))
    assert x1.shape[1:] == (1, 8, 8) and 0 <= x1.min() and x1.max() <= 1


def test_train_is_augmented_reward_is_not():
    plain, aug = _dm(augment=False), _dm(augment=True)
    xp, yp = next(iter(plain.train_dataloader()))  # same seed: same sampler order
    xa, ya = next(iter(aug.train_dataloader()))
    assert torch.equal(yp, ya) and not torch.equal(xp, xa)  # same images, shifted copies
    rx, _ = aug.reward_tensors()
    assert torch.equal(rx, plain.reward_tensors()[0])
    assert torch.equal(rx, torch.cat([x for x, _ in aug.reward_dataloader()]))  # fixed order


@pytest.mark.parametrize("bad", [0, -5, 1.0, 1.5, 0.0, True, 5000])
def test_reward_size_out_of_range_is_one_sentence(bad):
    with pytest.raises(DataError) as e:
        _dm(reward_size=bad)
    msg = str(e.value)
    assert "reward_size" in msg and "\n" not in msg and msg.endswith(".")


def test_bad_options_are_one_sentence():
    for kw in ({"channels": 2}, {"resize": 4}, {"test_size": 1.0}, {"batch_size": 0}):
        with pytest.raises(DataError, match=next(iter(kw))):
            DigitsDataModule(**kw)


def test_device_resident_on_cpu_means_no_workers():
    dm = _dm(device_resident=True, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.num_workers == 0
    x, _ = next(iter(loader))
    assert x.device.type == "cpu"


def test_reward_split_is_uint8_sharded_and_limited():
    from jointprune.data import DigitsDataModule
    dm = DigitsDataModule(reward_size=64, seed=0)
    dm.setup("fit")
    whole, labels = dm.reward_tensors()
    x, y, normalize = dm.reward_split(1, 2, limit=10)  # rank 1 of 2, first 10 reward images
    assert x.dtype == torch.uint8 and len(x) == 5
    assert torch.equal(y, labels[:10][1::2]) and torch.allclose(normalize(x), whole[:10][1::2])


def test_reward_split_blocks_are_disjoint():
    from jointprune.data import DigitsDataModule
    dm = DigitsDataModule(reward_size=64, seed=0)
    dm.setup("fit")
    _, labels = dm.reward_tensors()
    _, y, _ = dm.reward_split(0, 2, start=10, limit=6)  # positions 10, 12, 14
    assert torch.equal(y, labels[10:16][0::2])


def test_val_is_test_only_without_a_val_split():
    plain, carved = DigitsDataModule(resize=None, val_size=0), DigitsDataModule(resize=None, val_size=100)
    plain.setup("fit")
    carved.setup("fit")
    assert plain.val_is_test and not carved.val_is_test
    assert len(carved.val_dataloader().dataset) == 100
