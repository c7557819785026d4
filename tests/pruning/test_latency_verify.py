"""The closed latency loop on a cost model and a fake device: shrinking keeps the shape, only
lowers counts, and stops when the *measured* ratio meets the budget; a network measured well under
the budget grows back toward it, within the other budgets, and never past a met measurement."""
import numpy as np
import pytest

from jointprune.pruning import KeepRule
from jointprune.pruning.latency_verify import (GROW_GAP, REMEASURE, corrected_target, filled_for_target, floor_sentence,
                                               grown_for_target, kept_for_target, rounds_sentence, shrink, shrunk_for_target,
                                               verify_latency, within_budget)

SIZES = [16, 32, 64, 64]
RULE = KeepRule(max_ratio=0.8)
CANDS = [RULE.candidates(n) for n in SIZES]


class Additive:
    """latency = rest + per-channel cost: a stand-in for the table model."""
    name = "latency"

    def __init__(self, rest=1.0):
        self.rest, self.weights = rest, np.array([0.02, 0.03, 0.05, 0.04])
        self.dense = float(self(np.array(SIZES, dtype=float)))

    def __call__(self, kept):
        k = np.asarray(kept, dtype=float)
        return self.rest + k @ self.weights


def slow_device(model, overhead):
    """A device on which every sub-network runs `overhead` (ms) slower than the model says, the
    dense one too: the ratio is (model + overhead) / (dense + overhead)... plus a fixed bias."""
    calls = []

    def measure(kept):
        calls.append(list(kept))
        ratio = float(model(kept) + overhead) / (model.dense + overhead) + 0.12
        return {"ratio": ratio, "noise": 0.01}
    return measure, calls


def test_shrink_keeps_the_shape_and_snaps_down_to_allowed_counts():
    kept = [12, 20, 40, 64]
    half = shrink(kept, 0.5, CANDS)
    assert half == [6, 10, 20, 32]
    assert shrink(kept, 1.0, CANDS) == kept
    assert shrink(kept, 0.0, CANDS) == [int(c[0]) for c in CANDS]  # the floor
    rounded = [KeepRule(max_ratio=0.8, round_to=8).candidates(n) for n in SIZES]
    assert shrink(kept, 0.7, rounded) == [8, 8, 24, 40]  # 8.4, 14, 28, 44.8 snapped down to multiples of 8
    assert all(a <= b for a, b in zip(shrink(kept, 0.3, rounded), kept))


def test_corrected_target_uses_the_factor_then_the_line_through_two_points():
    assert corrected_target(0.5, [(0.5, 0.625)]) == pytest.approx(0.4)
    # measured = 0.5 + 0.5 x predicted through both points: predicted 0 measures 0.5 at budget 0.5
    assert corrected_target(0.55, [(0.5, 0.75), (0.3, 0.65)]) == pytest.approx(0.1)
    # a falling line (noise) falls back to the latest factor
    assert corrected_target(0.5, [(0.5, 0.6), (0.4, 0.8)]) == pytest.approx(0.25)


def test_kept_for_target_is_the_largest_scale_under_the_target():
    model = Additive()
    kept = [16, 32, 64, 64]
    new, scale = kept_for_target(model, kept, CANDS, 0.6, below_scale=1.0)
    assert model(new) / model.dense <= 0.6 and scale < 1.0
    bigger = shrink(kept, scale + 1 / 400, CANDS)
    assert model(bigger) / model.dense > 0.6 or bigger == new
    floor, s0 = kept_for_target(model, kept, CANDS, 0.01, below_scale=1.0)  # out of reach: the floor
    assert s0 == 0.0 and floor == [int(c[0]) for c in CANDS]


def test_a_slow_device_is_shrunk_until_the_measurement_meets_the_budget():
    model = Additive()
    budget = 0.6
    kept, _ = kept_for_target(model, SIZES, CANDS, budget, below_scale=1.01)  # the model says: exactly fits
    measure, calls = slow_device(model, overhead=0.5)
    result = verify_latency(model, kept, CANDS, budget, rounds=4, measure=measure)
    assert result["status"] == "met"
    rounds = result["rounds"]
    assert rounds[0]["measured"] > budget  # it did miss at first
    kept_round = rounds[result["accepted"]]
    assert within_budget(kept_round["measured"], kept_round["noise"], budget) and len(rounds) >= 2
    new = result["kept"]
    assert all(a <= b for a, b in zip(new, kept))  # counts (hence FLOPs) only go down
    assert model(new) < model(kept)
    # the shape is kept: every group shrunk by about the same factor
    ratios = np.array(new) / np.array(kept)
    assert ratios.max() - ratios.min() < 0.2
    assert calls[0] == list(kept) and calls[result["accepted"]] == new
    # each round's prediction and target are recorded
    assert rounds[0]["target"] is None and all(r["target"] < budget for r in rounds[1:])


def test_a_met_budget_within_the_growth_gap_is_measured_once_and_left_alone():
    model = Additive()
    kept = shrink(SIZES, 0.5, CANDS)
    result = verify_latency(model, kept, CANDS, 0.72, rounds=3,
                            measure=lambda k: {"ratio": 0.7, "noise": 0.01})  # under by 0.02 < 5 % of 0.72
    assert 0.72 - 0.7 < GROW_GAP * 0.72
    assert result["status"] == "met" and result["kept"] == kept and len(result["rounds"]) == 1
    assert result["accepted"] == 0


def fast_device(model, factor):
    """A device on which every sub-network measures `factor` times the model's ratio."""
    calls = []

    def measure(kept):
        calls.append(list(kept))
        return {"ratio": factor * float(model(kept) / model.dense), "noise": 0.005}
    return measure, calls


def test_a_network_measured_well_under_the_budget_grows_back_toward_it():
    model = Additive()
    budget = 0.6
    kept, _ = kept_for_target(model, SIZES, CANDS, budget, below_scale=1.01)  # the model says: exactly fits
    measure, calls = fast_device(model, 0.8)  # ... and the device runs it at 0.8 of that
    result = verify_latency(model, kept, CANDS, budget, rounds=3, measure=measure)
    rounds = result["rounds"]
    assert result["status"] == "met" and rounds[0]["measured"] < budget - GROW_GAP * budget
    assert result["accepted"] >= 1 and rounds[result["accepted"]]["grown"]
    grown = result["kept"]
    assert all(a >= b for a, b in zip(grown, kept)) and model(grown) > model(kept)  # counts only went up
    final = rounds[result["accepted"]]["measured"]
    assert rounds[0]["measured"] < final and within_budget(final, 0.005, budget)  # closer to the budget, within it


def test_growth_stays_within_the_other_budgets():
    model = Additive()
    kept = shrink(SIZES, 0.5, CANDS)
    measure, calls = fast_device(model, 0.5)
    result = verify_latency(model, kept, CANDS, 0.9, rounds=3, measure=measure, fits=lambda k: sum(k) <= sum(kept) + 4)
    assert sum(result["kept"]) <= sum(kept) + 4 and all(sum(c) <= sum(kept) + 4 for c in calls)
    assert sum(result["kept"]) > sum(kept)  # it did grow, as far as the other budget lets it
    # with no room at all under the other budget nothing is grown or measured again
    none = verify_latency(model, kept, CANDS, 0.9, rounds=3, measure=measure, fits=lambda k: list(k) == list(kept))
    assert none["kept"] == kept and len(none["rounds"]) == 1


def test_a_grown_network_that_misses_is_dropped_for_the_last_met_one():
    model = Additive()
    kept = shrink(SIZES, 0.5, CANDS)

    def measure(k):  # the incumbent measures well under 0.8; anything bigger measures over it
        return {"ratio": 0.5 if list(k) == kept else 0.95, "noise": 0.01}
    result = verify_latency(model, kept, CANDS, 0.8, rounds=3, measure=measure)
    assert result["status"] == "met" and result["kept"] == kept and result["accepted"] == 0
    assert len(result["rounds"]) == 2 and result["rounds"][1]["grown"] and result["rounds"][1]["measured"] > 0.8


def test_grown_for_target_can_pass_the_agents_counts_up_to_full_width():
    model = Additive()
    kept = [8, 16, 32, 32]
    counts, scale = grown_for_target(model, kept, CANDS, 1.0, 1.0, fits=lambda k: True)
    assert counts == SIZES and scale >= 2.0  # the whole network fits a target of 1.0
    assert grown_for_target(model, SIZES, CANDS, 1.0, 1.0, fits=lambda k: True) is None  # nothing left to grow


def test_within_the_noise_counts_as_met_but_never_by_more_than_five_percent():
    assert within_budget(0.50, 0.0, 0.5) and within_budget(0.51, 0.02, 0.5)
    assert not within_budget(0.53, 0.02, 0.5)
    # a noisy measurement buys at most 5 % of the budget: a met budget is a speed-up >= 0.95 / budget
    assert within_budget(0.315, 0.2, 0.3) and not within_budget(0.316, 0.2, 0.3)


def test_a_measurement_within_its_noise_of_the_budget_is_not_shrunk():
    """The loop stops by the final report's rule: it does not cut a network the report calls met."""
    model = Additive()
    kept = shrink(SIZES, 0.8, CANDS)
    calls = []

    def measure(k, ratio=0.505, noise=0.01):
        calls.append(list(k))
        return {"ratio": ratio, "noise": noise}
    result = verify_latency(model, kept, CANDS, 0.5, rounds=3, measure=measure)
    assert result["status"] == "met" and result["kept"] == kept and calls == [kept]
    # the same miss with a quieter measurement is shrunk
    result = verify_latency(model, kept, CANDS, 0.5, rounds=3,
                            measure=lambda k: {"ratio": 0.505 * float(model(k) / model(kept)), "noise": 0.001})
    assert len(result["rounds"]) >= 2 and model(result["kept"]) < model(kept)


def test_a_floor_that_misses_says_so():
    model = Additive()
    kept = shrink(SIZES, 0.6, CANDS)
    result = verify_latency(model, kept, CANDS, 0.3, rounds=5, measure=lambda k: {"ratio": 0.8, "noise": 0.02})
    assert result["status"] == "floor" and result["kept"] == [int(c[0]) for c in CANDS]
    sentence = floor_sentence(0.3, result["rounds"], "cpu")
    assert "cannot be met on cpu" in sentence and "0.800 of the dense latency" in sentence
    assert "budget of 0.3" in sentence


def test_out_of_rounds_says_so_and_more_rounds_converge():
    model = Additive()
    kept = shrink(SIZES, 0.9, CANDS)

    def concave(k):  # the device saves less than the model, more so on small networks
        return {"ratio": float(np.sqrt(model(k) / model.dense)), "noise": 0.01}

    short = verify_latency(model, kept, CANDS, 0.7, rounds=1, measure=concave)
    assert short["status"] == "rounds" and len(short["rounds"]) == 2
    assert short["rounds"][-1]["measured"] > 0.7
    assert "still missed after 1 correction round(s)" in rounds_sentence(0.7, short["rounds"], "cpu")
    longer = verify_latency(model, kept, CANDS, 0.7, rounds=4, measure=concave)
    assert longer["status"] == "met" and longer["rounds"][-1]["measured"] <= 0.7


def test_a_noisy_measurement_is_taken_again_and_the_steadiest_counts():
    """A loaded machine once said 0.456 (pairs scattered by 0.19) for a network that measured 0.70:
    the loop must not act on such a measurement."""
    model = Additive()
    kept = shrink(SIZES, 0.6, CANDS)
    answers = iter([{"ratio": 0.45, "noise": 0.19}, {"ratio": 0.72, "noise": 0.01}])
    calls = []

    def measure(k):
        calls.append(list(k))
        return next(answers, {"ratio": 0.66, "noise": 0.01})

    result = verify_latency(model, kept, CANDS, 0.7, rounds=1, measure=measure)
    first, second = result["rounds"]
    assert first["measured"] == 0.72 and first["measurements"] == 2 and calls[0] == calls[1] == kept
    # it acted on 0.72 (a miss), not on 0.45 (which would have grown the network): it shrank
    assert second["scale"] < 1.0 and not second["grown"] and model(result["kept"]) < model(kept)
    # a measurement that stays noisy is taken at most REMEASURE more times
    always_noisy = verify_latency(model, kept, CANDS, 0.7, rounds=0,
                                  measure=lambda k: {"ratio": 0.6, "noise": 0.3})
    assert always_noisy["rounds"][0]["measurements"] == 1 + REMEASURE


CANDS8 = [KeepRule(max_ratio=0.8, round_to=8).candidates(n) for n in SIZES]  # 16 channels: 8 or 16


def exact_device(model):
    return lambda kept: {"ratio": float(model(kept)) / model.dense, "noise": 0.001}


def test_with_coarse_counts_single_groups_grow_where_a_common_scale_cannot():
    model = Additive()
    kept = [8, 16, 32, 32]  # measures 0.562; the first common scale that changes a count: 0.652
    assert grown_for_target(model, kept, CANDS8, 0.6, 1.0, fits=lambda k: True) is None
    result = verify_latency(model, kept, CANDS8, 0.6, rounds=3, measure=exact_device(model))
    assert result["status"] == "met" and result["accepted"] == 1 and result["rounds"][1]["grown"]
    # the group grown least relative to the agent's counts went first; no other step fits 0.6
    assert result["kept"] == [16, 16, 32, 32]
    assert 0.562 < result["rounds"][1]["measured"] <= 0.6


def test_filled_for_target_is_maximal_and_follows_the_agents_shape():
    model = Additive()
    shape = [8, 16, 32, 32]
    target = 0.75
    filled = filled_for_target(model, shape, shape, CANDS8, target, fits=lambda k: True)
    assert float(model(filled)) / model.dense <= target
    assert all(f >= k and f in list(c) for f, k, c in zip(filled, shape, CANDS8))
    for g, c in enumerate(CANDS8):  # no single further step fits the target
        nxt = [x for x in c if x > filled[g]]
        if nxt:
            trial = list(filled)
            trial[g] = int(nxt[0])
            assert float(model(trial)) / model.dense > target
    # growth relative to the agent's counts stays even: no group more than one step ahead of another
    growth = [f / k for f, k in zip(filled, shape)]
    assert max(growth) <= 2.0 and min(growth) >= 1.0
    # the other budgets bound it, and with no room it says so
    assert filled_for_target(model, shape, shape, CANDS8, target, fits=lambda k: sum(k) <= sum(shape)) is None
    assert filled_for_target(model, SIZES, SIZES, CANDS8, 1.0, fits=lambda k: True) is None


def test_a_coarse_shrink_is_filled_back_under_its_ceiling():
    model = Additive()
    kept = [16, 32, 64, 64]  # the dense counts; the target asks for a little less
    target = 0.95
    coarse, scale = kept_for_target(model, kept, CANDS8, target, below_scale=1.0 + 1e-9)
    filled, same_scale = shrunk_for_target(model, kept, CANDS8, target, below_scale=1.0 + 1e-9)
    assert same_scale == scale
    ratio = lambda k: float(model(k)) / model.dense  # noqa: E731
    assert ratio(coarse) < ratio(filled) <= target  # the common scale overshot; single groups came back
    assert all(c <= f <= k for c, f, k in zip(coarse, filled, kept))  # never above the counts it shrank from
    # other budgets bound the fill: with none to spare it stays the common-scale shrink
    assert shrunk_for_target(model, kept, CANDS8, target, 1.0 + 1e-9, fits=lambda k: sum(k) <= sum(coarse))[0] == coarse
