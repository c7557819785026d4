"""Download and extract archives so that an interruption never leaves anything a later run
would trust: the archive is written under a temporary name and renamed only after its md5
matches; it is extracted into a temporary directory that is renamed into place only after
the extracted files pass their own check. Anything temporary is removed on failure.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets.utils import calculate_md5, check_integrity

from .base import DataError


def check_files(folder: Path, files: dict[str, str | None]) -> str | None:
    """None when every file exists (and matches its md5 where given), else the first problem."""
    if not folder.is_dir():
        return "it does not exist"
    for name, md5 in files.items():
        if not (folder / name).is_file():
            return f"{name} is missing"
        if not check_integrity(folder / name, md5):
            return f"{name} fails its md5 check"
    return None


def fetch(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` unless a file with the right md5 is already there."""
    if check_integrity(dest, md5):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        print(f"Downloading {url} to {dest}", flush=True)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        got = calculate_md5(tmp)
        if got != md5:
            raise DataError(
                f"Download of {url} is corrupt or truncated (md5 {got}, expected {md5}); nothing was kept "
                f"at {dest}, so run again or place a verified copy there."
            )
        os.replace(tmp, dest)  # atomic on one filesystem: dest is either absent or complete
    except (urllib.error.URLError, OSError) as e:
        raise DataError(
            f"Could not download {url} to {dest} ({e}); check the connection or download it by hand to {dest}."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def extract_verified(archive: Path, target: Path, verify: Callable[[Path], str | None]) -> None:
    """Extract ``archive`` (whose top folder is ``target.name``) so that ``target`` appears
    only once ``verify(folder)`` returns None; a previous broken ``target`` is replaced."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                # "data" filter: refuse absolute paths, links out of the tree, device files
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(
                f"Archive {archive} is corrupt or truncated ({e}); delete it and run again with download=True."
            ) from e
        problem = verify(tmp / target.name)
        if problem:
            raise DataError(
                f"Archive {archive} does not hold the expected {target.name}/ folder ({problem}); "
                "delete it and run again with download=True."
            )
        if target.exists():  # a broken earlier copy: move it aside into tmp, deleted below
            os.replace(target, tmp / ".stale")
        os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
