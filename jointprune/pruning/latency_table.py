"""Measuring latency on a device, and the on-disk cache of per-layer measurements.

One table entry is the median time of one eval forward call of one layer built standalone at one
shape, keyed like HALP's lookup tables (layer type, batch, input shape with channels and feature
map, output channels, kernel, stride, padding, dilation, groups, bias). Entries live in one JSON
file per (device name, torch version, thread count), so every network measured on a machine
shares them and a second run measures nothing. Writes are atomic (read, merge, replace), so two
runs sharing the cache at worst measure an entry twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ..errors import JointPruneError
from ..utils.allocator import steady_allocator
from ..utils.atomic import atomic_write_json

# 2: a network's timed pieces (dense and fewest) are lists; 3: timed on a steady allocator
# (utils/allocator.py): entries timed before could carry a cold process's page faults
CACHE_FORMAT = 3


def resolve_device(spec: Optional[str], default: torch.device) -> torch.device:
    """`spec` ("cpu", "cuda", "cuda:1", ...) or the trainer's device, checked to be usable here."""
    if spec is None:
        device = torch.device(default)
    else:
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError) as err:
            raise JointPruneError(f"model.latency.device={spec!r} is not a device name; use e.g. 'cpu' or 'cuda:0'.") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise JointPruneError(f"model.latency.device={str(device)!r} is not available on this machine "
                                  f"({count} CUDA device(s)); use 'cpu' or an available GPU.")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise JointPruneError("model.latency.device='mps' is not available on this machine; use 'cpu'.")
    elif device.type != "cpu":
        raise JointPruneError(f"model.latency.device={str(device)!r} is not supported; use 'cpu', 'cuda' or 'mps'.")
    return device


def device_name(device: torch.device) -> str:
    """A name that changes when the hardware does (the cache is only valid on the same chip)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return "cpu " + line.split(":", 1)[1].strip()
        except OSError:
            pass
        return f"cpu {platform.processor() or platform.machine()}"
    return device.type


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of `repeats` calls of `fn` after `warmup` calls (device synchronised), on a
    steady host allocator (utils/allocator.py)."""
    steady_allocator()
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def steady_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, max_repeats: int,
              agree: float = 0.1) -> float:
    """The time of `fn` itself: the mean of the two fastest calls, once they agree within `agree`.

    On a machine shared with other processes a call of a few ms is either run through (its own
    time) or preempted for a whole time slice (its time plus ~10 ms): timings are bimodal and a
    median of a few repeats lands in either mode. Two fast calls that agree are the unloaded mode;
    on an idle device this stops after `repeats` calls, under load it keeps timing (at most
    `max_repeats` calls)."""
    times = time_ms(fn, device, warmup, repeats)
    while True:
        a, b = sorted(times)[:2] if len(times) > 1 else (times[0], times[0])
        if b <= a * (1 + agree) + 1e-3 or len(times) >= max_repeats:
            return (a + b) / 2
        times += time_ms(fn, device, 0, 1)


class pinned_threads:
    """Run a block at exactly `threads` intra-op threads (the count the table is valid for)."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


Entry = Union[float, list]


def _entry(value) -> Entry:
    """A float, or (nested) lists of floats."""
    return [_entry(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jointprune"


class LatencyCache:
    """Table entries (key -> ms, or a list of ms for a network's pieces) of one device, torch
    version and thread count."""

    def __init__(self, cache_dir: Optional[str], device: torch.device, threads: int, enabled: bool = True):
        self.enabled = enabled
        self.meta = {"format": CACHE_FORMAT, "device": device_name(device), "device_type": device.type,
                     "torch": torch.__version__, "threads": int(threads)}
        digest = hashlib.sha1(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.path = self.path / f"latency-{digest}.json"
        self.entries: dict[str, Entry] = self._read() if enabled else {}
        self.new: dict[str, Entry] = {}

    def _read(self) -> dict[str, Entry]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # no cache yet, or an unreadable one: measure again and overwrite
        if data.get("meta") != self.meta or not isinstance(data.get("entries"), dict):
            return {}
        try:
            return {str(k): _entry(v) for k, v in data["entries"].items()}
        except (TypeError, ValueError):
            return {}

    def get(self, key: str) -> Optional[Entry]:
        return self.entries.get(key)

    def put(self, key: str, ms: Entry) -> None:
        self.entries[key] = self.new[key] = _entry(ms)

    def save(self) -> None:
        if not self.enabled or not self.new:
            return
        merged = {**self._read(), **self.new}  # keep what a parallel run added meanwhile
        try:
            atomic_write_json(self.path, {"meta": self.meta, "entries": merged})
        except OSError as err:
            raise JointPruneError(f"cannot write the latency cache {self.path} ({err.strerror}); "
                                  "set model.latency.cache_dir to a writable folder or cache: false.") from err
        self.new = {}
