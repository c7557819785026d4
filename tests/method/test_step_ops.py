"""The training step never makes the host wait for the device (counted with a TorchDispatchMode
by experiments/benchmarks/bench_step_ops.py, on the module's real step under a Trainer)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_step_ops", ROOT / "experiments" / "benchmarks" / "bench_step_ops.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_training_step_with_masks_and_no_alignment_has_no_host_sync():
    train, val = bench.count("cifar_resnet20", "masks")
    assert sum(train.ops.values()) > 100  # the counter saw the step
    assert dict(train.syncs) == {}
    assert dict(val.syncs) == {}  # masked validation reuses the epoch's masked parameters


def test_training_step_with_alignment_has_no_host_sync():
    train, _ = bench.count("cifar_resnet20", "align")
    assert dict(train.syncs) == {}
