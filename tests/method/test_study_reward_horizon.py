"""experiments/benchmarks/study_reward_horizon.py: per seed, how well each score read at the agent's
decision ranks the finished networks, the regret of picking by it, and the training noise."""
import pytest


@pytest.fixture(scope="module")
def study(load_benchmark):
    return load_benchmark("study_reward_horizon")


def rows(finals, reward, tuned):
    return [{"kept": [i], "flops": 0.5, "reward128": r, "tuned20": t, "final": f}
            for i, (f, r, t) in enumerate(zip(finals, reward, tuned))]


def test_spearman_and_regret_against_the_finished_top1(study):
    finals = [0.80, 0.82, 0.79, 0.81]           # allocation 1 finishes best
    reward = [0.50, 0.60, 0.40, 0.55]           # ranks exactly like the finished top-1
    tuned = [0.70, 0.20, 0.90, 0.10]            # picks allocation 2, 3 points below the best
    out = study.summarise({"rows": rows(finals, reward, tuned)})
    assert set(out) == {"reward128", "tuned20"}  # the allocation's own fields are not scores
    assert out["reward128"]["rho"] == pytest.approx(1.0) and out["reward128"]["regret"] == pytest.approx(0.0)
    assert out["tuned20"]["regret"] == pytest.approx(3.0) and out["tuned20"]["rho"] < 0


def test_training_noise_is_the_spread_of_uniforms_finishes(study):
    res = {"rows": rows([0.80, 0.9], [0, 0], [0, 0]), "uniform_perturbed": [0.81, 0.79, 0.80]}
    assert study.noise_std(res) == "0.82 (n=4)"  # std of 80, 81, 79, 80 points
    assert study.noise_std({"rows": res["rows"]}) == "—"  # no perturbed finishes: nothing to say
