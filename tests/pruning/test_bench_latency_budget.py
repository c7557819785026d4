"""experiments/benchmarks/bench_latency_budget.py compares the latency-budgeted network with the
FLOPs budget's top-1 at the same measured latency: interpolated between its two FLOPs-budgeted
points, decided by dominance outside them, and left open where nothing compares."""
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_latency_budget")


def row(lat, acc, flo, flo2):
    return {"lat_ratio": lat, "lat_acc": acc, "flo_ratio": flo[0], "flo_acc": flo[1],
            "flo2_ratio": flo2[0], "flo2_acc": flo2[1]}


def test_between_the_flops_points_the_curve_is_interpolated(bench):
    out = bench.flops_curve_at(row(0.5, 0.85, (0.7, 0.90), (0.4, 0.80)))
    assert out["flo_acc_at_lat"] == pytest.approx(0.80 + 0.10 / 3)
    assert out["verdict"] == "win"
    assert bench.flops_curve_at(row(0.5, 0.83, (0.7, 0.90), (0.4, 0.80)))["verdict"] == "loss"


def test_outside_the_points_only_dominance_decides(bench):
    faster_and_better = bench.flops_curve_at(row(0.3, 0.85, (0.7, 0.90), (0.4, 0.84)))
    assert faster_and_better == {"flo_acc_at_lat": None, "verdict": "win"}
    slower_and_worse = bench.flops_curve_at(row(0.8, 0.85, (0.7, 0.90), (0.4, 0.80)))
    assert slower_and_worse["verdict"] == "loss"
    faster_and_worse = bench.flops_curve_at(row(0.3, 0.70, (0.7, 0.90), (0.4, 0.80)))
    assert faster_and_worse["verdict"] == "open"


def test_outside_the_points_the_nearer_one_decides(bench):
    # the farther FLOPs point (0.8, 0.70) is slower and worse, but the nearer one (0.6, 0.90)
    # is a little slower and far better: not a win
    assert bench.flops_curve_at(row(0.5, 0.80, (0.8, 0.70), (0.6, 0.90)))["verdict"] == "open"


def test_residuals_against_the_flops_line(bench):
    runs = [dict(row(lat, acc, (lat + 0.2, 0.7 + lat), (lat - 0.1, 0.4 + lat)), model="m", budget=b)
            for lat, acc, b in ((0.3, 0.85, 0.3), (0.5, 0.95, 0.5))]
    # FLOPs points lie on top-1 = 0.5 + latency; the latency runs sit 0.05 above and 0.05 below it
    assert bench.residuals(runs, "m") == pytest.approx([0.05, -0.05])
    assert bench.residuals(runs, "other") == []


def test_per_cell_settings_parse_model_budget_and_value(bench):
    assert bench.per_cell(["cifar_resnet56:0.3=4", "cifar_mobilenet_v2:0.5=8"], int) == \
        {("cifar_resnet56", 0.3): 4, ("cifar_mobilenet_v2", 0.5): 8}
    assert bench.per_cell(None, float) == {}


def test_runs_are_paired_with_an_earlier_run_seed_by_seed(bench):
    def run(seed, acc, first, rounds, model="m"):
        loop = [{"measured": first}] + [{"measured": 0.5}] * rounds
        return {"model": model, "budget": 0.5, "seed": seed, "lat_acc": acc, "lat_verify": loop}
    now = [run(0, 0.90, 0.49, 0), run(1, 0.80, 0.52, 1), run(2, 0.70, 0.5, 0), {"model": "m", "budget": 0.3,
                                                                               "seed": 0, "refused": "x"}]
    before = [run(1, 0.78, 0.60, 2), run(0, 0.86, 0.58, 1)]  # seed 2 has no partner: left out
    lines = bench.paired_lines(now, before)
    assert lines[0].startswith("- m, 2 pairs: top-1 now minus before +3.00 [")
    assert "per run +4.0, +2.0" in lines[0]
    assert "before +0.080, +0.100; now -0.010, +0.020" in lines[1]
    assert lines[2].strip() == "closed-loop corrections: before 3 (1, 2); now 1 (0, 1)"


def test_the_cluttered_task_matches_its_input_shape(bench):
    import argparse
    args = argparse.Namespace(task="clutter20", resize=16, batch=16)
    dm = bench.make_data(args)
    assert tuple(dm.input_shape) == bench.input_shape(args) == (3, 20, 20)
    assert bench.input_shape(argparse.Namespace(task="digits", resize=16, batch=16)) == (3, 16, 16)
