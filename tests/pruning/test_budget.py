"""KeepRule and BudgetClipper: every budget holds, the binding one is used to within one
channel-step (see jointprune/pruning/budget.py), and the clipping is minimal."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import torch_pruning as tp

from jointprune.models import list_models
from jointprune.pruning import BudgetClipper, KeepRule, check_budget, extract_subnetwork, group_importance, top_k_masks

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import (  # noqa: E402,F401
    make_model,
    one_sentence,
    one_thread,
    random_episode,
    structure_and_flops,
)


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
    # Grouped-conv multiples: counts are multiples of both round_to and the group's multiple.
    assert KeepRule().candidates(16, multiple=4).tolist() == [4, 8, 12, 16]
    assert KeepRule(round_to=2).candidates(18, multiple=3).tolist() == [6, 12, 18]
    assert KeepRule(round_to=4, max_ratio=0.5).candidates(18, multiple=3).tolist() == [12, 18]  # size always allowed
    assert KeepRule().keep(16, 0.3, multiple=4) == 12 and KeepRule().keep(16, 0.99, multiple=4) == 4
    assert KeepRule(min_channels=5).candidates(16, multiple=4).tolist() == [8, 12, 16]


def _feasible(clipper, prefix, k):
    """Brute force: can the net still end under budget if the rest is pruned as hard as allowed?"""
    trial = np.array(list(prefix) + [k] + list(clipper.fewest[len(prefix) + 1:]), dtype=float)
    return np.rint(clipper.flops(trial)) <= clipper.limit


def _reaches(clipper, prefix, k):
    """Brute force: would keeping every later group dense reach the budget?"""
    trial = np.array(list(prefix) + [k] + clipper.sizes[len(prefix) + 1:], dtype=float)
    return np.rint(clipper.flops(trial)) >= clipper.limit


def assert_uses_budget(clipper, kept):
    """The lower-bound guarantee, exactly as budget.py's docstring states it: raising the last
    group that is not dense by one allowed count would break some budget, unless a cost already
    sits exactly at its budget. With FLOPs alone: limit - F(kept) < F(raised) - F(kept)."""
    k = np.asarray(kept, dtype=float)
    for c in clipper.costs:
        assert c.fits(c.model(k)), f"{c.name} over its budget"
    open_groups = [g for g in range(len(k)) if k[g] < clipper.sizes[g]]
    if not open_groups:
        return
    a = open_groups[-1]
    raised = k.copy()
    raised[a] = clipper.candidates[a][clipper.candidates[a] > k[a]][0]
    at_limit = any(bool(c.reaches(c.model(k))) for c in clipper.costs)
    assert at_limit or not all(bool(c.fits(c.model(raised))) for c in clipper.costs), \
        f"budget not used: group {a} could keep {raised[a]:.0f} instead of {k[a]:.0f}"
    if len(clipper.costs) == 1:
        f, up = clipper.flops(k), clipper.flops(raised)
        assert clipper.limit - f < up - f + 0.5  # 0.5: FLOPs are integers, the limit need not be


def _run_and_check(clipper, actions, brute_force: bool = True):
    kept = []
    for l, a in enumerate(actions):
        size = clipper.sizes[l]
        cands = clipper.candidates[l]
        wanted = clipper.rule.keep(size, a)
        k, eff, lo, hi = clipper.clip(kept, a)
        fewest, most = round((1.0 - hi) * size), round((1.0 - lo) * size)
        assert clipper.bounds(kept) == (fewest, most)
        assert fewest <= k <= most and k in cands
        assert math.isclose(eff, 1.0 - k / size) and lo - 1e-12 <= eff <= hi + 1e-12
        window = cands[(cands >= fewest) & (cands <= most)]
        assert window.tolist() == clipper.window(kept).tolist()
        if brute_force:
            # FLOPs grow with channels, so the window is every allowed count between its ends, and it
            # is exactly the counts that are feasible (upper side) and, with the rest dense, reach
            # the budget (lower side); when none reaches it, only the largest feasible count.
            feasible = [int(c) for c in cands if _feasible(clipper, kept, int(c))]
            both = [c for c in feasible if _reaches(clipper, kept, c)]
            assert window.tolist() == (both if both else feasible[-1:])
        # Minimal clipping: an action inside the window is left alone, otherwise the nearest end.
        assert k == min(max(wanted, fewest), most)
        kept.append(k)
    value = clipper.check(kept)
    assert value <= clipper.budget * clipper.flops.dense
    assert_uses_budget(clipper, kept)
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


def adversarial_sequences(n: int, max_ratio: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    half = n // 2
    return {
        "all0": np.zeros(n), "allmax": np.full(n, max_ratio),
        "alternating": np.where(np.arange(n) % 2 == 0, max_ratio, 0.0),
        "front_heavy": np.r_[np.full(half, max_ratio), np.zeros(n - half)],
        "back_heavy": np.r_[np.zeros(half), np.full(n - half, max_ratio)],
        "random": rng.uniform(0, max_ratio, n), "random_wide": rng.uniform(-0.5, 1.5, n),
    }


# The three largest networks take ~10 s each to trace on 2 shared cores: slow suite.
HEAVY = {"cifar_resnet110", "tv_resnet34", "tv_resnet50"}
ZOO = [pytest.param(m, marks=pytest.mark.slow) if m in HEAVY else m for m in list_models()]
ZOO_BUDGETS = (0.3, 0.5, 0.7)
_built: dict[str, tuple] = {}


def _zoo(name: str):
    if name not in _built:
        model = make_model(name).eval()
        # 32x32 everywhere: ImageNet stems end at 1x1, which the FLOPs polynomial handles alike.
        _built[name] = (model, *structure_and_flops(model, torch.randn(1, 3, 32, 32)))
    return _built[name]


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_uses_the_budget_for_any_action_sequence(name):
    model, st, fm = _zoo(name)
    rng = np.random.default_rng(1)
    reached = 0
    for budget in ZOO_BUDGETS:
        try:
            clipper = BudgetClipper(fm, budget)
        except ValueError as exc:  # not reachable with the keep rules: refused, in one sentence
            assert "cannot be met" in str(exc) and one_sentence(str(exc))
            continue
        reached += 1
        for label, actions in adversarial_sequences(len(st), 0.8, rng).items():
            kept = _run_and_check(clipper, actions, brute_force=False)
            # Within one channel-step, and in practice close to the budget.
            assert fm(kept) / clipper.limit > 0.95, (label, fm(kept) / clipper.limit)
        # The FLOPs the clipper guarantees are torch-pruning's count of the extracted network.
        if budget == 0.5:
            masks = top_k_masks(group_importance(model, st, "l1"), kept)
            small = extract_subnetwork(model, st, masks)
            assert fm(kept) == tp.utils.count_ops_and_params(small, torch.randn(1, 3, 32, 32))[0]
    _REACHED[name] = reached


_REACHED: dict[str, int] = {}


def test_most_zoo_budgets_are_reachable():
    # Runs after the zoo test (file order); the reached (model, budget) pairs are most of them.
    done = {n: r for n, r in _REACHED.items()}
    if not done:
        pytest.skip("the zoo test did not run")
    assert sum(done.values()) >= 0.75 * len(ZOO_BUDGETS) * len(done)


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


def test_all_max_actions_no_longer_undershoot(resnet56):
    # Before the lower bound, all-max actions at budget 0.7 ended at 0.33 of the budget on ResNet-56.
    st, fm = resnet56
    clipper = BudgetClipper(fm, 0.7)
    kept = random_episode(clipper, None, actions=np.full(len(st), 0.8))
    assert fm(kept) / clipper.limit > 0.99
    assert_uses_budget(clipper, kept)
    # The early groups still get what they asked for: the slack is taken up at the end.
    assert kept[0] == clipper.candidates[0][0]


def test_check_raises_on_a_broken_budget(resnet56):
    st, fm = resnet56
    clipper = BudgetClipper(fm, 0.5)
    with pytest.raises(AssertionError, match="budget violated"):
        clipper.check(st.sizes)
    assert clipper.check(clipper.fewest) == fm(clipper.fewest)


# -- generic, non-monotone costs ----------------------------------------------------------------
class ToyLatency:
    """A latency-like cost: per layer terms of one or two neighbouring groups, *not* monotone in
    channels (counts that are not a multiple of 4 pay a misalignment penalty, as on real
    hardware), plus a fixed part that pruning cannot remove."""
    name = "toy_latency"

    def __init__(self, sizes):
        self.sizes = np.asarray(sizes, dtype=float)
        self.dense = float(self(self.sizes))

    def __call__(self, kept):
        k = np.asarray(kept, dtype=float)
        k2 = np.atleast_2d(k)
        pair = (k2[:, 1:] * k2[:, :-1]).sum(1) / 64.0
        single = (3.0 * k2 + 40.0 * (k2 % 4 != 0)).sum(1)
        out = 500.0 + pair + single
        return float(out[0]) if k.ndim == 1 else out


def test_toy_cost_is_not_monotone(resnet20_coupled):
    st, _ = resnet20_coupled
    lat = ToyLatency(st.sizes)
    k = np.array(st.sizes, dtype=float)
    fewer = k.copy()
    fewer[0] -= 1
    assert lat(fewer) > lat(k)  # removing one channel costs more: non-monotone


@pytest.mark.parametrize("flops_budget, lat_budget", [(1.0, 0.6), (1.0, 0.8), (0.5, 0.9), (0.5, 0.6), (0.35, 0.7)])
def test_extra_non_monotone_cost_holds_for_any_action_sequence(flops_budget, lat_budget, resnet20_coupled):
    st, fm = resnet20_coupled
    lat = ToyLatency(st.sizes)
    clipper = BudgetClipper(fm, flops_budget, extra_costs=[(lat, lat_budget)])
    assert [c.name for c in clipper.costs] == ["flops", "toy_latency"]
    assert clipper.extra_costs == [(lat, lat_budget)]
    rng = np.random.default_rng(2)
    ratios = []
    for _ in range(3):
        for actions in adversarial_sequences(len(st), 0.8, rng).values():
            kept = []
            for a in actions:
                k, eff, lo, hi = clipper.clip(kept, a)
                window = clipper.window(kept)
                assert k in window and set(window) <= set(clipper.candidates[len(kept)].tolist())
                assert (1 - hi) * st.sizes[len(kept)] == window[0] and (1 - lo) * st.sizes[len(kept)] == window[-1]
                kept.append(k)
            clipper.check(kept)
            assert lat(kept) <= lat_budget * lat.dense and fm(kept) <= flops_budget * fm.dense
            assert_uses_budget(clipper, kept)
            ratios.append(max(lat(kept) / (lat_budget * lat.dense), fm(kept) / (flops_budget * fm.dense)))
    # Whichever cost binds ends close to its budget.
    assert np.median(ratios) > 0.9


def test_check_names_the_broken_extra_cost(resnet20_coupled):
    st, fm = resnet20_coupled
    lat = ToyLatency(st.sizes)
    clipper = BudgetClipper(fm, 1.0, extra_costs=[(lat, 0.7)])
    with pytest.raises(AssertionError, match=r"^toy_latency budget violated"):
        clipper.check(st.sizes)
    values = clipper.cost_values(st.sizes)
    assert list(values) == ["flops", "toy_latency"]
    assert values["flops"] == pytest.approx(fm.dense) and values["toy_latency"] == pytest.approx(lat.dense)


def test_unreachable_extra_budget_gives_the_smallest_fraction(resnet20_coupled):
    st, fm = resnet20_coupled
    lat = ToyLatency(st.sizes)
    with pytest.raises(ValueError, match=r"^toy_latency_budget=0\.05 cannot be met: .* is 0\.\d{3} of the dense "
                                         r"toy_latency; raise the budget or max_ratio\.$") as exc:
        BudgetClipper(fm, 1.0, extra_costs=[(lat, 0.05)])
    assert one_sentence(str(exc.value))
    smallest = float(str(exc.value).split(" is ")[1].split()[0])
    BudgetClipper(fm, 1.0, extra_costs=[(lat, smallest + 0.002)])  # just above it: accepted
    with pytest.raises(ValueError, match=r"^toy_latency_budget must be a fraction of the dense toy_latency in \(0, 1\]"):
        BudgetClipper(fm, 1.0, extra_costs=[(lat, 1.5)])


def test_budgets_that_conflict_are_one_sentence(resnet20_coupled):
    # Each alone is reachable, not both: the FLOPs minimum pays the toy latency's misalignment.
    st, fm = resnet20_coupled
    lat = ToyLatency(st.sizes)
    BudgetClipper(fm, 0.056)
    BudgetClipper(fm, 1.0, extra_costs=[(lat, 0.45)])
    with pytest.raises(ValueError, match=r"^flops_budget=0\.056 and toy_latency_budget=0\.45 cannot all be met together: "
                                         r"the closest network found .* has 0\.\d+ of the dense FLOPs, 0\.\d+ of the "
                                         r"dense toy_latency; raise one of the budgets\.$") as exc:
        BudgetClipper(fm, 0.056, extra_costs=[(lat, 0.45)])
    assert one_sentence(str(exc.value))


def test_cost_shares(resnet20_coupled):
    st, fm = resnet20_coupled
    clipper = BudgetClipper(fm, 0.5)
    shares = clipper.cost_shares(fm)
    for g in range(len(st)):
        k = np.array(st.sizes, dtype=float)
        k[g] = clipper.fewest[g]
        assert math.isclose(shares[g], 1 - fm(k) / fm.dense)
    assert (shares > 0).all()


# -- grouped-conv multiples and bad rules --------------------------------------------------------
class FakeFlops:
    """A FlopsModel stand-in: a chain of layers whose cost is in x out of neighbouring groups."""
    name = "flops"

    def __init__(self, sizes, multiples):
        self.sizes = np.asarray(sizes, dtype=float)
        self.structure = SimpleNamespace(groups=[SimpleNamespace(name=f"g{i}", size=s, multiple=m)
                                                 for i, (s, m) in enumerate(zip(sizes, multiples))])
        self.dense = float(self(self.sizes))

    def __call__(self, kept):
        k = np.atleast_2d(np.asarray(kept, dtype=float))
        chain = np.c_[np.full(len(k), 3.0), k, np.full(len(k), 10.0)]
        out = (chain[:, 1:] * chain[:, :-1]).sum(1)
        return float(out[0]) if np.ndim(kept) == 1 else out


def test_grouped_conv_multiples_are_kept():
    fake = FakeFlops([32, 48, 24, 64], [1, 4, 3, 8])
    rng = np.random.default_rng(3)
    for rule in (KeepRule(), KeepRule(round_to=2)):
        for budget in (0.3, 0.5, 0.8):
            clipper = BudgetClipper(fake, budget, rule)
            for actions in adversarial_sequences(4, 0.8, rng).values():
                kept = random_episode(clipper, None, actions=actions)
                for k, n, m in zip(kept, fake.sizes, [1, 4, 3, 8]):
                    step = math.lcm(m, rule.round_to)
                    assert k % step == 0 or k == n
                clipper.check(kept)
                assert_uses_budget(clipper, kept)


def test_min_channels_above_a_group_is_one_sentence():
    fake = FakeFlops([32, 12, 24], [1, 1, 1])
    with pytest.raises(ValueError, match=r"^min_channels=16 cannot be met: group g1 has only 12 channels; "
                                         r"set min_channels to at most 12\.$") as exc:
        BudgetClipper(fake, 0.5, KeepRule(min_channels=16))
    assert one_sentence(str(exc.value))
