"""ImageNetDataModule on a few real PNG/JPEG files written here, with a tiny crop size."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jointprune.data import DataError, ImageNetDataModule

CLASSES = ["n01", "n02", "n03"]


def write_tree(root: Path, per_class: dict[str, int], val_classes=CLASSES) -> Path:
    rng = np.random.default_rng(0)
    for split, classes, n in (("train", CLASSES, per_class["train"]), ("val", val_classes, per_class["val"])):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                # class k's images are dominated by colour channel k, so labels can be checked
                px = rng.integers(0, 60, (20, 24, 3), dtype=np.uint8)
                px[..., CLASSES.index(c)] = 250
                ext = ".JPEG" if i % 2 else ".png"
                Image.fromarray(px).save(d / f"img{i}{ext}", quality=95)
    return root


def test_loads_folder_tree_with_tiny_crop(tmp_path):
    root = write_tree(tmp_path, {"train": 6, "val": 2})
    dm = ImageNetDataModule(root, crop_size=16, reward_size=4, batch_size=4, seed=0)
    assert dm.num_classes == 3 and dm.input_shape == (3, 16, 16)  # from the listing, before setup
    dm.setup("fit")
    assert dm.split_sizes() == {"reward": 4, "val": 0, "train": 14, "test": 6}
    assert not set(dm.splits["reward"].tolist()) & set(dm.splits["train"].tolist())
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    xt, yt = next(iter(dm.test_dataloader()))
    assert xt.shape[1:] == (3, 16, 16)
    # eval images: the dominant channel is the label
    assert torch.equal(xt.mean((2, 3)).argmax(1), yt)
    rx, ry = dm.reward_tensors()
    assert rx.shape == (4, 3, 16, 16) and torch.equal(rx.mean((2, 3)).argmax(1), ry)
    assert len(list(dm.val_dataloader())) == 2  # val falls back to val/ (6 images, batch 4)


def test_val_labels_follow_train_classes_when_val_lacks_one(tmp_path):
    root = write_tree(tmp_path, {"train": 2, "val": 2}, val_classes=["n02", "n03"])
    dm = ImageNetDataModule(root, crop_size=8, reward_size=1)
    dm.setup()
    ys = torch.cat([y for _, y in dm.test_dataloader()])
    assert sorted(ys.tolist()) == [1, 1, 2, 2]


def test_missing_and_bad_folders_are_one_sentence(tmp_path):
    with pytest.raises(DataError, match=r"ImageNet data not found at .*train: expected class sub-folders"):
        ImageNetDataModule(tmp_path / "nowhere")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class folders"):
        ImageNetDataModule(tmp_path / "empty")
    root = write_tree(tmp_path / "r", {"train": 2, "val": 1})
    (root / "train" / "n04").mkdir()  # a class with no images
    with pytest.raises(DataError, match=r"class folder .*n04 holds no images"):
        ImageNetDataModule(root, reward_size=1).setup()


def test_unreadable_image_names_itself(tmp_path):
    root = write_tree(tmp_path, {"train": 2, "val": 1})
    (root / "val" / "n01" / "img0.png").write_bytes(b"not a png")
    dm = ImageNetDataModule(root, crop_size=8, reward_size=1)
    dm.setup()
    with pytest.raises(DataError, match=r"img0.png is unreadable"):
        list(dm.test_dataloader())


def test_reward_split_is_uint8_sharded_and_matches_the_float_path(tmp_path):
    """Each rank decodes only its share, kept as uint8; normalised per batch it equals the
    eval transform's float images."""
    root = write_tree(tmp_path, {"train": 6, "val": 2})
    dm = ImageNetDataModule(root, crop_size=16, reward_size=5, batch_size=4, seed=0)
    dm.setup("fit")
    whole, labels = dm.reward_tensors()
    shards = [dm.reward_split(rank, 2) for rank in (0, 1)]
    assert [len(s[0]) for s in shards] == [3, 2] and all(s[0].dtype == torch.uint8 for s in shards)
    x0, y0, normalize = shards[0]
    assert torch.equal(y0, labels[0::2])
    assert torch.allclose(normalize(x0), whole[0::2], atol=1e-5)
