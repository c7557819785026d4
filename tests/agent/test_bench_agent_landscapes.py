"""experiments/benchmarks/bench_agent.py builds its landscapes on the real environment: a smoke
check that it still runs against the library (its known optimum is 1 and meets the budget)."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_agent")


@pytest.mark.parametrize("name", ["keep_early", "hidden"])
def test_landscape_optimum_is_one_and_within_budget(bench, name):
    env = bench.build_environment("cifar_resnet20", 0.5, centred=True)
    land = bench.Landscape(name, env)
    assert land(land.target) == pytest.approx(1.0)
    assert land.target_flops <= 0.5 + 1e-9
    uniform = land(env.uniform_under_budget())
    assert 0.0 < uniform < 1.0  # uniform is not the optimum of these landscapes
    best = bench.random_search(env, land, evaluations=5, seed=0, spread=0.5)
    assert 0.0 < best <= 1.0 + 1e-9 and np.isfinite(best)
    # with the agent's local search around the best so far (episodes 5-6 of 10 are neighbours)
    opts = bench.AgentOptions(episodes_per_epoch=5, refine_fraction=0.5, refine_groups=3, refine_sigma=0.3)
    refined = bench.random_search(env, land, evaluations=10, seed=0, spread=0.5, refine=opts)
    assert best <= refined <= 1.0 + 1e-9  # the same first 5 random episodes, then more
