"""Write files (and whole folders) so that a crash never leaves a half-written one under the
final name, with the permissions the user's umask gives any new file (0644 by default)."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def current_umask() -> int:
    """The process umask (os has no getter: set and restore it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def strict_json_value(obj):
    """`obj` with every NaN/infinity as None (strict JSON has no NaN) and tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return strict_json_value(obj.item())
    return obj


def json_bytes(obj) -> bytes:
    return (json.dumps(strict_json_value(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, json_bytes(obj))


@contextmanager
def atomic_folder(path: str | Path, replaceable: Callable[[Path], bool] = lambda p: True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block ends without error it becomes
    `path` (an earlier folder there is replaced, if `replaceable(path)` allows it), else it is
    removed and `path` is untouched. Readers never see a folder with only some of the files."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and replaceable(path)):
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        for f in tmp.iterdir():
            os.chmod(f, file_mode())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old / path.name, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
