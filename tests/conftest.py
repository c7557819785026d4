"""Shared by the tests of the benchmark scripts under experiments/benchmarks/."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


@pytest.fixture(scope="session")
def load_benchmark():
    """load_benchmark("bench_agent") -> the script as a module. Its folder is on sys.path while it
    loads, since the scripts import each other (bench_methods, bench_latency_build) from beside them."""
    def load(name: str):
        sys.path.insert(0, str(BENCHMARKS))
        try:
            spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(BENCHMARKS))
        return module
    return load
