"""CIFAR-10/100 on tiny sets written here in the official pickle layout and .tar.gz archive,
read through the same prepare_data/setup path a user hits (download via a file:// URL)."""
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from jointprune.data import CIFAR10DataModule, CIFAR100DataModule, DataError

N_PER_FILE = 12  # images per pickle file

SPECS = {
    CIFAR10DataModule: dict(
        train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
        labels=b"labels", names=b"label_names", classes=10,
    ),
    CIFAR100DataModule: dict(
        train=["train"], test=["test"], meta="meta", labels=b"fine_labels", names=b"fine_label_names", classes=100,
    ),
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_official(cls, root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``root/<folder>/`` exactly as the official python archives lay it out."""
    spec, rng = SPECS[cls], np.random.default_rng(seed)
    folder = root / cls.folder
    folder.mkdir(parents=True)
    written = {}
    for name in spec["train"] + spec["test"]:
        data = rng.integers(0, 256, (N_PER_FILE, 3072), dtype=np.uint8)
        labels = rng.integers(0, spec["classes"], N_PER_FILE).tolist()
        d = {b"batch_label": name.encode(), spec["labels"]: labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(N_PER_FILE)]}
        if cls is CIFAR100DataModule:
            d[b"coarse_labels"] = [0] * N_PER_FILE
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        written[name] = (data, np.array(labels))
    names = {spec["names"]: [f"class{i}".encode() for i in range(spec["classes"])]}
    (folder / spec["meta"]).write_bytes(pickle.dumps(names, protocol=2))
    return written


def pack(cls, root: Path, out: Path) -> Path:
    """.tar.gz holding the folder at the top level, like cifar-10-python.tar.gz."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(root / cls.folder, arcname=cls.folder)
    return out


@pytest.fixture
def official(monkeypatch, tmp_path):
    """Factory: write a tiny set for ``cls`` and point its checksums at it."""

    def make(cls, root=None):
        root = root or tmp_path / "src"
        written = write_official(cls, root)
        monkeypatch.setattr(cls, "files", {n: _md5(root / cls.folder / n) for n in cls.files})
        return root, written

    return make


def _serve(monkeypatch, cls, archive: Path, md5: str | None = None):
    monkeypatch.setattr(cls, "url", archive.as_uri())
    monkeypatch.setattr(cls, "archive_md5", md5 or _md5(archive))


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []


@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_folder_loads_with_official_layout(cls, official):
    root, written = official(cls)
    spec = SPECS[cls]
    dm = cls(root, reward_size=4, batch_size=8, seed=1)
    assert dm.num_classes == spec["classes"] and dm.input_shape == (3, 32, 32)  # before setup
    dm.prepare_data()
    dm.setup("fit")
    n_train = N_PER_FILE * len(spec["train"])
    assert dm.split_sizes() == {"reward": 4, "val": 0, "train": n_train - 4, "test": N_PER_FILE}
    assert dm.classes[:2] == ["class0", "class1"]
    assert not set(dm.splits["reward"].tolist()) & set(dm.splits["train"].tolist())
    # the test set comes back in file order, pixels in the official R,G,B-plane layout
    x, y = next(iter(dm.test_dataloader()))
    data, labels = written[spec["test"][0]]
    ref = torch.from_numpy(data[:8]).view(8, 3, 32, 32).float() / 255
    ref = (ref - torch.tensor(cls.mean).view(1, 3, 1, 1)) / torch.tensor(cls.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, ref)
    assert y.tolist() == labels[:8].tolist()
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 3, 32, 32) and yb.dtype == torch.int64
    rx, ry = dm.reward_tensors()
    assert rx.shape == (4, 3, 32, 32) and ry.shape == (4,)
    # root may also point at the extracted folder itself
    assert cls(root / cls.folder).data_dir == dm.data_dir


@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_download_extracts_and_verifies(cls, official, monkeypatch, tmp_path):
    src, _ = official(cls)
    archive = pack(cls, src, tmp_path / "served.tar.gz")
    _serve(monkeypatch, cls, archive)
    root = tmp_path / "data"
    dm = cls(root, download=True, reward_size=0.25)
    dm.prepare_data()
    assert sorted(p.name for p in (root / cls.folder).iterdir()) == sorted(cls.files)
    assert _leftovers(root) == []  # no .part file, no extraction directory
    dm.setup()
    assert dm.split_sizes()["reward"] == round(0.25 * N_PER_FILE * len(SPECS[cls]["train"]))
    archive.unlink()  # already there and verified: a second run must not download
    cls(root, download=True).prepare_data()
    cls(root, download=False).prepare_data()


@pytest.mark.parametrize("md5_of", ["good", "truncated"])
def test_corrupt_archive_leaves_nothing_behind(md5_of, official, monkeypatch, tmp_path):
    cls = CIFAR10DataModule
    src, _ = official(cls)
    good = pack(cls, src, tmp_path / "good.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    # "good": the download's md5 mismatches; "truncated": md5 matches, extraction fails
    _serve(monkeypatch, cls, bad, _md5(good if md5_of == "good" else bad))
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        cls(root, download=True).prepare_data()
    msg = str(e.value)
    assert "corrupt or truncated" in msg and "\n" not in msg
    assert not (root / cls.folder).exists() and _leftovers(root) == []
    if md5_of == "good":
        assert not (root / "bad.tar.gz").exists()  # an unverified download never gets its name


def test_archive_without_expected_files_is_rejected(official, monkeypatch, tmp_path):
    cls = CIFAR10DataModule
    src, _ = official(cls)
    (src / cls.folder / "data_batch_3").unlink()
    _serve(monkeypatch, cls, pack(cls, src, tmp_path / "a.tar.gz"))
    root = tmp_path / "data"
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        cls(root, download=True).prepare_data()
    assert not (root / cls.folder).exists() and _leftovers(root) == []


def test_broken_folder_is_replaced_on_download(official, monkeypatch, tmp_path):
    cls = CIFAR100DataModule
    src, _ = official(cls)
    _serve(monkeypatch, cls, pack(cls, src, tmp_path / "a.tar.gz"))
    root = tmp_path / "data"
    (root / cls.folder).mkdir(parents=True)
    (root / cls.folder / "train").write_bytes(b"half a file")
    cls(root, download=True).prepare_data()
    assert _md5(root / cls.folder / "train") == cls.files["train"] and _leftovers(root) == []


def test_missing_data_is_one_clear_sentence(tmp_path):
    with pytest.raises(DataError) as e:
        CIFAR10DataModule(tmp_path / "x").prepare_data()
    msg = str(e.value)
    assert msg == (
        f"CIFAR-10 data not found at {tmp_path / 'x' / 'cifar-10-batches-py'}: expected data_batch_1..5, "
        "test_batch and batches.meta (python pickle format); set download=True or point root at it."
    )
    with pytest.raises(DataError, match="CIFAR-100 data not found at .*cifar-100-python"):
        dm = CIFAR100DataModule(tmp_path / "x")
        dm.setup()  # setup without prepare_data names the path too


def test_corrupt_file_is_one_clear_sentence(official):
    root, _ = official(CIFAR10DataModule)
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=r"corrupt \(data_batch_2 fails its md5 check\)"):
        CIFAR10DataModule(root).prepare_data()
    with pytest.raises(DataError, match="data_batch_2 is unreadable"):
        CIFAR10DataModule(root).setup()


def test_wrong_array_shape_is_reported(official):
    root, _ = official(CIFAR10DataModule)
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"expected uint8 Nx3072"):
        CIFAR10DataModule(root).setup()


class _Payload:
    """Unpickling this calls os.system: what a planted batch file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_planted_batch_file_never_runs_code(official, tmp_path):
    root, _ = official(CIFAR10DataModule)
    marker = tmp_path / "owned"
    planted = {b"data": _Payload(marker), b"labels": [0]}
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(planted, protocol=2))
    with pytest.raises(DataError, match="test_batch is unreadable.*refused global"):
        CIFAR10DataModule(root).setup()
    assert not marker.exists()


def test_python3_pickles_of_numpy_arrays_still_load(tmp_path):
    from jointprune.utils.safe_unpickle import safe_load
    data = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2], b"name": b"x"}
    for protocol in (2, 4, 5):
        loaded = safe_load(io.BytesIO(pickle.dumps(data, protocol=protocol)))
        assert np.array_equal(loaded[b"data"], data[b"data"]) and loaded["labels"] == [1, 2]
