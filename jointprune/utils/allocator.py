"""Timing on a steady host allocator.

With glibc's default malloc, how fast a CPU forward runs depends on what the process did before.
Activations above the mmap threshold (128 KiB at start, raised as large blocks are freed) are
mapped and unmapped on every call, and the freed top of the heap is given back to the system, so
each forward pays page faults for memory it had a moment ago. MobileNetV2 (width 0.5, 16x16,
batch 64, one thread) took 50-58 ms per forward in a fresh process, 40 calls on end, and 20 ms in
a process that had trained a few steps; the network cut to its fewest channels took 6-7 ms in
both. The same pair measured 0.13 or 0.33 of the dense latency depending on the process's
history, and the latency tables, built at the start of a run, disagreed with the measurements
taken after training (model 0.19, measured 0.34).

So every latency measurement first puts the allocator in the state a long-running process
reaches (and that jemalloc or tcmalloc give from the start): blocks up to 32 MiB (glibc's largest
allowed threshold on 64-bit) come from the heap, and up to 1 GiB of freed heap stays with the
process. The setting is process-wide and left on: a training step, already warm after a few
steps, runs at the same speed either way (ResNet-20, batch 64). Elsewhere than glibc nothing
changes. Measured in this state a cut saves less than in a cold process, whose page faults grow
with the activations, so a budget met here is also met there.
"""
from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_state: str | None = None


def steady_allocator() -> str:
    """Put glibc's malloc in its steady state (once per process); returns what was done, for the
    run's report: "glibc: mmap threshold 32 MiB, trim threshold 1 GiB" or why nothing changed."""
    global _state
    if _state is None:
        _state = _configure()
    return _state


def _configure() -> str:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"unchanged ({platform.system()} {platform.libc_ver()[0] or 'without glibc'})"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "unchanged (mallopt not found)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "unchanged (mallopt refused the thresholds)"
    return f"glibc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 30} GiB"
