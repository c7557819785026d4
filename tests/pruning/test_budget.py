"""KeepRule and BudgetClipper: the hard FLOPs budget holds and the clipping is minimal."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jointprune.pruning import BudgetClipper, KeepRule, check_budget

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import make_model, one_sentence, one_thread, random_episode, structure_and_flops  # noqa: E402,F401


@pytest.fixture(scope="module")
def resnet56():
    model = make_model("cifar_resnet56").eval()
    return structure_and_flops(model, torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def resnet20_coupled():
    model = make_model("cifar_resnet20").eval()
    return structure_and_flops(model, torch.randn(1, 3, 32, 32), prune_coupled=True)


BAD_BUDGETS = [0, 0.0, -0.1, 1.5, 1.0000001, float("nan"), float("inf"), True, "0.5", None]


@pytest.mark.parametrize("budget", BAD_BUDGETS, ids=repr)
def test_budget_outside_zero_one_is_one_sentence(budget, resnet56):
    pattern = r"^flops_budget must be a fraction of the dense FLOPs in \(0, 1\], got .+\.$"
    with pytest.raises(ValueError, match=pattern) as exc:
        check_budget(budget)
    assert one_sentence(str(exc.value))
    with pytest.raises(ValueError, match=pattern):
        BudgetClipper(resnet56[1], budget)


def test_valid_budgets_and_setting_name():
    assert check_budget(1) == 1.0 and check_budget(0.5) == 0.5 and check_budget(1e-9) == 1e-9
    with pytest.raises(ValueError, match=r"^model\.flops_budget must be"):
        check_budget(2, name="model.flops_budget")


def test_unreachable_budget_is_one_sentence(resnet56):
    with pytest.raises(ValueError, match=r"flops_budget=0\.05 cannot be met: .*max_ratio=0\.8") as exc:
        BudgetClipper(resnet56[1], 0.05)
    assert one_sentence(str(exc.value))


@pytest.mark.parametrize("kwargs, match", [
    ({"max_ratio": 1.0}, "max_ratio must be in"), ({"max_ratio": -0.1}, "max_ratio must be in"),
    ({"min_channels": 0}, "at least 1"), ({"round_to": 0}, "at least 1"),
])
def test_bad_keep_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KeepRule(**kwargs)


def test_keep_rule_counts():
    r = KeepRule()
    assert r.keep(16, 0.0) == 16 and r.keep(16, 0.5) == 8 and r.keep(16, 0.25) == 12
    assert r.keep(16, 0.8) == r.keep(16, 0.99) == r.keep(16, 5.0) == 4  # 16 - floor(12.8)
    assert r.keep(16, -3.0) == 16
    assert r.keep(10, 0.3) == 7  # 0.3 * 10 must not become 2.9999 -> 8
    assert r.candidates(16).tolist() == list(range(4, 17))
    r8 = KeepRule(round_to=8)
    assert r8.candidates(64).tolist() == [16, 24, 32, 40, 48, 56, 64]
    assert r8.keep(64, 0.6) == 32 and r8.keep(64, 0.55) == 32 and r8.keep(64, 0.1) == 64
    assert r8.candidates(12).tolist() == [8, 12] and r8.candidates(4).tolist() == [4]  # size itself always allowed
    r5 = KeepRule(min_channels=5, max_ratio=0.5)
    assert r5.candidates(8).tolist() == [5, 6, 7, 8] and r5.keep(8, 0.8) == 5
    assert KeepRule(min_channels=40).candidates(16).tolist() == [16]  # never more than the group has


def _feasible(clipper, prefix, k):
    """Brute force: can the net still end under budget if the rest is pruned as hard as allowed?"""
    trial = np.array(list(prefix) + [k] + list(clipper.fewest[len(prefix) + 1:]), dtype=float)
    return np.rint(clipper.flops(trial)) <= clipper.limit


def _run_and_check(clipper, actions):
    kept = []
    for l, a in enumerate(actions):
        size = clipper.sizes[l]
        cands = clipper.candidates[l]
        wanted = clipper.rule.keep(size, a)
        k, eff, lo, hi = clipper.clip(kept, a)
        fewest, most = int(cands[0]), round((1.0 - lo) * size)
        assert clipper.bounds(kept) == (fewest, most)
        assert fewest <= k <= most and k in cands
        assert math.isclose(eff, 1.0 - k / size) and lo - 1e-12 <= eff <= hi + 1e-12
        assert math.isclose(hi, 1.0 - cands[0] / size)
        # The hard bound: whatever comes next, the net can still end under budget ...
        assert _feasible(clipper, kept, k)
        if _feasible(clipper, kept, wanted):
            assert k == wanted  # ... and an action that was already feasible is left alone,
        else:
            # ... otherwise it is clipped as little as possible: the next allowed count is infeasible.
            assert k < wanted and k == most
            bigger = cands[cands > k]
            assert len(bigger) == 0 or not _feasible(clipper, kept, int(bigger[0]))
        kept.append(k)
    value = clipper.check(kept)
    assert value <= clipper.budget * clipper.flops.dense
    return kept


RULES = [KeepRule(), KeepRule(round_to=4), KeepRule(min_channels=6, max_ratio=0.7), KeepRule(round_to=8, min_channels=8)]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"max{r.max_ratio}-min{r.min_channels}-round{r.round_to}")
def test_random_action_sequences_end_under_budget_with_minimal_clipping(rule, resnet56, resnet20_coupled):
    rng = np.random.default_rng(0)
    for st, fm in (resnet56, resnet20_coupled):
        lowest = fm([rule.candidates(n)[0] for n in st.sizes]) / fm.dense
        budgets = [1.0, lowest + 1e-6] + list(rng.uniform(lowest + 0.01, 0.95, size=2))
        for b in budgets:
            clipper = BudgetClipper(fm, float(b), rule)
            n = len(st)
            sequences = [np.zeros(n), np.full(n, rule.max_ratio), np.full(n, 1.0), np.full(n, -0.5),
                         rng.uniform(0, rule.max_ratio, n), rng.uniform(0, 0.3, n), rng.choice([0.0, rule.max_ratio], n)]
            for actions in sequences:
                kept = _run_and_check(clipper, actions)
                for k, size in zip(kept, st.sizes):
                    assert k >= min(rule.min_channels, size) and (k % rule.round_to == 0 or k == size)


def test_no_pruning_wanted_lands_just_under_budget(resnet56):
    # All-zero actions (the agent wants nothing removed): the clipper keeps as much as it can, so
    # the result is maximal: no single group could keep one more allowed count.
    st, fm = resnet56
    for b in (0.3, 0.5, 0.7, 0.95):
        clipper = BudgetClipper(fm, b)
        kept = random_episode(clipper, None, actions=np.zeros(len(st)))
        assert fm(kept) <= b * fm.dense
        for g in range(len(st)):
            bigger = clipper.candidates[g][clipper.candidates[g] > kept[g]]
            if len(bigger):
                grown = list(kept)
                grown[g] = int(bigger[0])
                assert fm(grown) > b * fm.dense
    # Budget 1: nothing is ever clipped and the all-zero episode keeps the dense network.
    clipper = BudgetClipper(fm, 1.0)
    assert random_episode(clipper, None, actions=np.zeros(len(st))) == st.sizes


def test_all_max_actions_give_the_smallest_network(resnet56):
    st, fm = resnet56
    clipper = BudgetClipper(fm, 0.4)
    kept = random_episode(clipper, None, actions=np.full(len(st), 0.8))
    assert kept == [int(c[0]) for c in clipper.candidates]
    assert fm(kept) == fm(clipper.fewest)


def test_check_raises_on_a_broken_budget(resnet56):
    st, fm = resnet56
    clipper = BudgetClipper(fm, 0.5)
    with pytest.raises(AssertionError, match="budget violated"):
        clipper.check(st.sizes)
    assert clipper.check(clipper.fewest) == fm(clipper.fewest)
