"""ClutteredDigitsDataModule: deterministic generation, sizes as asked, held-out glyphs and
reward split, and a tiny fit through the CLI."""
import json

import numpy as np
import pytest
import torch

from jointprune.data import ClutteredDigitsDataModule, DataError
from jointprune.data.cluttered import render

SMALL = dict(train_size=300, test_size=120, batch_size=32)


def _dm(**kw):
    dm = ClutteredDigitsDataModule(**{**SMALL, **kw})
    dm.setup("fit")
    return dm


def test_attributes_known_before_setup():
    dm = ClutteredDigitsDataModule()
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32)
    assert ClutteredDigitsDataModule(canvas=24, max_side=20, channels=1).input_shape == (1, 24, 24)


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = _dm(seed=4), _dm(seed=4), _dm(seed=5)
    for split in ("train", "reward", "test"):
        assert torch.equal(a._data[split][0], b._data[split][0]) and torch.equal(a._data[split][1], b._data[split][1])
    assert not torch.equal(a._data["test"][0], c._data["test"][0])
    # the test images do not depend on how many training images are asked for
    assert torch.equal(_dm(seed=4, train_size=500)._data["test"][0], a._data["test"][0])


def test_sizes_shapes_dtypes_and_balanced_labels():
    dm = _dm(reward_size=50, val_size=20)
    assert dm.split_sizes() == {"train": 230, "reward": 50, "val": 20, "test": 120}
    x, y = dm._data["test"]
    assert x.dtype == torch.uint8 and x.shape == (120, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated as RGB
    assert torch.bincount(y, minlength=10).tolist() == [12] * 10
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 3, 32, 32) and xb.dtype == torch.float32 and set(yb.tolist()) <= set(range(10))
    rx, _ = dm.reward_tensors()
    assert abs(rx.mean().item()) < 0.2 and 0.8 < rx.std().item() < 1.2  # standardised by the train split


def test_splits_disjoint_and_test_glyphs_held_out():
    dm = _dm(seed=2)
    s = {k: set(v.tolist()) for k, v in dm.splits.items()}
    assert not (s["reward"] & s["train"]) and not (s["val"] & s["train"]) and not (s["reward"] & s["val"])
    assert s["reward"] | s["val"] | s["train"] == set(range(300))
    te, tr = set(dm.test_glyph_indices.tolist()), set(dm.train_glyph_indices.tolist())
    assert not te & tr and len(te | tr) == 1797 and len(te) == round(0.3 * 1797)


def test_render_places_whole_digit_and_clutter_is_separate():
    glyphs = torch.zeros(10, 1, 8, 8)
    glyphs[:, :, 2:6, 2:6] = 1.0  # a solid square per class
    labels = torch.arange(10)
    rng = np.random.default_rng(0)
    x, y = render(glyphs, labels, 50, rng, canvas=32, min_side=16, max_side=16, clutter=0, clutter_side=8)
    assert x.shape == (50, 32, 32) and x.dtype == np.uint8 and sorted(set(y.tolist())) == list(range(10))
    ink = (x > 0).reshape(50, -1).sum(1)
    assert (ink == ink[0]).all() and ink[0] > 0  # the whole digit lands on the canvas, never clipped
    xc, _ = render(glyphs, labels, 50, np.random.default_rng(0), canvas=32, min_side=16, max_side=16,
                   clutter=4, clutter_side=8)
    assert ((xc > 0).reshape(50, -1).sum(1) >= ink).all() and (xc != x).any()


def test_generation_is_fast():
    import time
    start = time.perf_counter()
    _dm(train_size=5000, test_size=100)
    assert time.perf_counter() - start < 20  # ~1.5 s on one loaded core; generous for shared CI


@pytest.mark.parametrize("kw, name", [
    ({"train_size": 1}, "train_size"), ({"test_size": 0}, "test_size"), ({"test_glyphs": 1.5}, "test_glyphs"),
    ({"canvas": 4}, "canvas"), ({"min_side": 30, "max_side": 20}, "min_side"), ({"clutter": -1}, "clutter"),
    ({"clutter_side": 0}, "clutter_side"), ({"channels": 2}, "channels"), ({"reward_size": 0}, "reward_size"),
])
def test_bad_options_are_one_sentence(kw, name):
    with pytest.raises(DataError, match=name) as e:
        ClutteredDigitsDataModule(**kw)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_reward_split_too_large_is_refused():
    with pytest.raises(DataError, match="reward_size"):
        _dm(reward_size=300)


@pytest.mark.slow  # ~30-90 s: the CLI path itself is covered by tests/method; this checks the data through it
def test_tiny_fit_through_the_cli(tmp_path, monkeypatch):
    from jointprune.cli import main

    monkeypatch.setattr("sys.argv", ["jointprune"])  # pytest's own arguments are not the CLI's
    export = tmp_path / "export"
    main([
        "fit", "--config", "experiments/quickstart.yaml",
        "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks=[]",
        "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--model.cnn.init_args.width=4", "--model.schedule.warmup_epochs=0",
        "--model.agent.episodes_per_epoch=2", "--model.agent.sac_updates=2", "--model.env_repr.decoder_steps=2",
        f"--model.export.dirpath={export}",
        "--data=jointprune.data.ClutteredDigitsDataModule", "--data.train_size=160", "--data.test_size=40",
        "--data.reward_size=32", "--data.batch_size=32", "--data.canvas=16", "--data.min_side=8", "--data.max_side=12",
        "--data.clutter_side=4",
    ])
    report = json.loads((export / "pruned.json").read_text())
    assert report["pruned_flops"] <= 0.5 * report["dense_flops"] and 0 <= report["test_acc"] <= 1
