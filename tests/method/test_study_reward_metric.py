"""experiments/benchmarks/study_reward_metric.py: per small sample, the Spearman correlation of a
reward with the large-sample ranking and the regret of the allocation it would pick."""
import pytest


@pytest.fixture(scope="module")
def study(load_benchmark):
    return load_benchmark("study_reward_metric")


def test_spearman_and_regret_per_sample(study):
    reference = [0.50, 0.40, 0.45, 0.30]  # allocation 0 is the best on the large sample
    # sample 0: top1 ranks exactly like the reference; true_prob picks the worst allocation
    # sample 1: top1 picks allocation 2 (5 points below the best); true_prob ranks exactly
    small = [[{"top1": 0.9, "true_prob": 0.1}, {"top1": 0.2, "true_prob": 0.9}],
             [{"top1": 0.5, "true_prob": 0.2}, {"top1": 0.1, "true_prob": 0.3}],
             [{"top1": 0.7, "true_prob": 0.3}, {"top1": 0.8, "true_prob": 0.6}],
             [{"top1": 0.1, "true_prob": 0.9}, {"top1": 0.0, "true_prob": 0.1}]]
    out = study.summarise({"reference": reference, "small": small})
    assert out["top1"]["rho"][0] == pytest.approx(1.0) and out["top1"]["regret"][0] == pytest.approx(0.0)
    assert out["top1"]["regret"][1] == pytest.approx(5.0)
    assert out["true_prob"]["regret"][0] == pytest.approx(20.0)  # picked the 0.30 allocation
    assert out["true_prob"]["rho"][1] == pytest.approx(1.0) and out["true_prob"]["regret"][1] == pytest.approx(0.0)
    assert out["true_prob"]["rho"][0] < 0
