"""experiments/benchmarks/pool_cells.py pairs jointprune with a baseline by cell and seed across
stems, and leaves out pairs that did not start from the same weights and batches."""
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def pool(load_benchmark):
    return load_benchmark("pool_cells")


def _run(folder: Path, method: str, seed: int, acc: float, budget=0.5, init="w", data="d"):
    folder.mkdir(parents=True, exist_ok=True)
    r = {"task": "clutter20", "net": "r20w8", "budget": budget, "method": method, "seed": seed,
         "test_acc": acc, "init_hash": f"{init}{seed}", "data_hash": f"{data}{seed}"}
    (folder / f"clutter20-r20w8-b{budget}-{method}-s{seed}.json").write_text(json.dumps(r))


def test_pairs_by_cell_and_seed_and_drops_unpaired(pool, tmp_path):
    a, b = tmp_path / "a_runs", tmp_path / "b_runs"
    _run(a, "jointprune", 0, 0.80)
    _run(a, "uniform", 0, 0.79)
    _run(a, "jointprune", 1, 0.70)
    _run(a, "uniform", 1, 0.72)
    _run(a, "jointprune", 2, 0.90)
    _run(a, "uniform", 2, 0.10, init="other")  # another start: not a pair
    _run(b, "jointprune", 0, 0.50, budget=0.3)
    _run(b, "uniform", 0, 0.50, budget=0.3)
    cells, unpaired = pool.paired(["a", "b"], "uniform", results=tmp_path)
    assert unpaired == 1
    assert cells[("a", "clutter20", "r20w8", 0.5)] == pytest.approx([1.0, -2.0])
    assert cells[("b", "clutter20", "r20w8", 0.3)] == pytest.approx([0.0])
    assert pool.paired(["a"], "random", results=tmp_path) == ({}, 0)
