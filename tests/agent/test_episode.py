"""PruningEnvironment: the 12-feature state (FLOPs and a second cost such as latency), rollouts
that meet every budget and use it, and the uniform baseline."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from jointprune.agent.episode import STATE_DIM, Episode, PruningEnvironment
from jointprune.models import create_model
from jointprune.pruning import BudgetClipper, ChannelStructure, FlopsModel, KeepRule


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def resnet20():
    model = create_model("cifar_resnet20", num_classes=5).eval()
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32), prune_coupled=True)
    return st, FlopsModel(st)


class ToyLatency:
    """Latency-like and non-monotone: neighbouring groups interact, and counts that are not a
    multiple of 4 pay a misalignment penalty."""
    name = "latency"

    def __init__(self, sizes):
        self.dense = float(self(np.asarray(sizes, dtype=float)))

    def __call__(self, kept):
        k = np.atleast_2d(np.asarray(kept, dtype=float))
        out = 300.0 + (k[:, 1:] * k[:, :-1]).sum(1) / 64.0 + (3.0 * k + 40.0 * (k % 4 != 0)).sum(1)
        return float(out[0]) if np.ndim(kept) == 1 else out


def _episode_policy(actions):
    it = iter(actions)
    return lambda state: next(it)


def test_state_without_a_latency_budget(resnet20):
    st, fm = resnet20
    env = PruningEnvironment(st, fm, BudgetClipper(fm, 0.5))
    assert STATE_DIM == 12
    ep = env.rollout(_episode_policy(np.full(len(st), 0.8)))
    assert ep.states.shape == ep.next_states.shape == (len(st), STATE_DIM)
    own = fm.group_flops() / fm.dense
    for l in range(len(st)):
        s = ep.states[l].double().numpy()
        now = np.r_[ep.kept[:l], st.sizes[l:]]
        assert s[0] == pytest.approx(l / (len(st) - 1))
        assert s[5] == pytest.approx(own[l], rel=1e-5) and s[7] == pytest.approx(own[l + 1:].sum(), rel=1e-5, abs=1e-7)
        assert s[6] == pytest.approx(fm(now) / fm.dense, rel=1e-5)
        assert s[8] == pytest.approx(0.0 if l == 0 else float(ep.actions[l - 1]), abs=1e-6)
        assert (s[9:] == 0).all()  # no second cost: zeros
    assert ep.extra_costs == []


def test_state_and_rollout_with_a_latency_budget(resnet20):
    st, fm = resnet20
    lat = ToyLatency(st.sizes)
    clipper = BudgetClipper(fm, 0.8, extra_costs=[(lat, 0.6)])
    env = PruningEnvironment(st, fm, clipper)
    shares = clipper.cost_shares(lat)
    rng = np.random.default_rng(0)
    for actions in (np.zeros(len(st)), np.full(len(st), 0.8), rng.uniform(0, 0.8, len(st))):
        ep = env.rollout(_episode_policy(actions))
        assert lat(ep.kept) <= 0.6 * lat.dense and fm(ep.kept) <= 0.8 * fm.dense
        assert ep.extra_costs == [pytest.approx(lat(ep.kept) / lat.dense)]
        for l in range(len(st)):
            s = ep.states[l].double().numpy()
            now = np.r_[ep.kept[:l], st.sizes[l:]]
            assert s[9] == pytest.approx(shares[l], rel=1e-5, abs=1e-7)
            assert s[10] == pytest.approx(lat(now) / lat.dense, rel=1e-5)
            assert s[11] == pytest.approx(shares[l + 1:].sum(), rel=1e-5, abs=1e-6)
    # Removing a group's channels to its fewest count saves latency here, despite the penalty.
    assert (shares > 0).any()


def test_all_max_actions_use_the_budget(resnet20):
    st, fm = resnet20
    env = PruningEnvironment(st, fm, BudgetClipper(fm, 0.7))
    ep = env.rollout(lambda state: 0.8)
    assert 0.97 * 0.7 * fm.dense < ep.flops <= 0.7 * fm.dense
    assert ep.actions.shape == (len(st),) and ep.dones.tolist() == [0.0] * (len(st) - 1) + [1.0]


def test_episode_holds_only_plain_tensors_and_lists(resnet20):
    # broadcast_object pickles the episode: plain tensors, lists and floats only.
    st, fm = resnet20
    ep = PruningEnvironment(st, fm, BudgetClipper(fm, 0.5, extra_costs=[(ToyLatency(st.sizes), 0.9)])).rollout(
        lambda state: 0.3)
    for f in dataclasses.fields(Episode):
        value = getattr(ep, f.name)
        assert isinstance(value, (torch.Tensor, list, float)), f.name
        if isinstance(value, list):
            assert all(isinstance(v, (int, float)) for v in value), f.name


@pytest.mark.parametrize("rule", [KeepRule(), KeepRule(round_to=4)], ids=["round1", "round4"])
def test_uniform_under_budget_uses_the_budget(rule, resnet20):
    st, fm = resnet20
    for budget in (0.3, 0.5, 0.7):
        clipper = BudgetClipper(fm, budget, rule)
        env = PruningEnvironment(st, fm, clipper)
        kept = env.uniform_under_budget()
        assert fm(kept) <= budget * fm.dense
        assert fm(kept) > 0.97 * budget * fm.dense
        # The uniform counts (smallest common ratio that fits, by brute force) are where it
        # starts; the clipper's lower side only adds channels to use up the rounding slack.
        uniform = next(u for u in ([rule.keep(n, r) for n in st.sizes] for r in np.linspace(0, 0.8, 801))
                       if fm(u) <= budget * fm.dense)
        assert all(k >= u for k, u in zip(kept, uniform)) and kept[0] == uniform[0]
    lat = ToyLatency(st.sizes)
    env = PruningEnvironment(st, fm, BudgetClipper(fm, 1.0, rule, extra_costs=[(lat, 0.7)]))
    kept = env.uniform_under_budget()
    assert lat(kept) <= 0.7 * lat.dense


# ---------------------------------------------------------------- centred actions
@pytest.fixture(scope="module")
def resnet20_internal():
    """The default structure (residual-coupled groups dense): every internal group must lose
    more than half its channels at budget 0.5, far from the middle of the action range."""
    model = create_model("cifar_resnet20", num_classes=5).eval()
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32))
    return st, FlopsModel(st)


def test_warp_is_a_monotone_bijection_that_sends_the_middle_to_the_centre(resnet20_internal):
    st, fm = resnet20_internal
    env = PruningEnvironment(st, fm, BudgetClipper(fm, 0.5), centred=True)
    top = env.clipper.rule.max_ratio
    for centre in (0.0, 0.2, 0.56, top):
        assert env.warp(0.0, centre) == 0.0 and env.warp(top, centre) == pytest.approx(top)
        if 0.0 < centre < top:
            assert env.warp(top / 2, centre) == pytest.approx(centre)
        grid = np.linspace(0.0, top, 41)
        warped = [env.warp(a, centre) for a in grid]
        assert all(b >= a - 1e-12 for a, b in zip(warped, warped[1:]))
        if 0.0 < centre < top:
            assert all(env.unwarp(env.warp(a, centre), centre) == pytest.approx(a) for a in grid)
    assert env.warp(0.3, None) == 0.3 == env.unwarp(0.3, None)  # plain actions: the identity


@pytest.mark.parametrize("budget", [0.5, 0.7])
def test_the_middle_action_is_the_uniform_allocation(resnet20_internal, budget):
    st, fm = resnet20_internal
    env = PruningEnvironment(st, fm, BudgetClipper(fm, budget), centred=True)
    top = env.clipper.rule.max_ratio
    ep = env.rollout(lambda s: top / 2)
    centre = env.uniform_ratio()
    removed = 1.0 - np.asarray(ep.kept) / np.asarray(st.sizes)
    # every group within two channels of the uniform ratio (rounding, re-centred as it goes),
    # bar the last, which takes up what the rounding left
    step = 1.0 / np.asarray(st.sizes)
    assert np.all(np.abs(removed[:-1] - centre) <= 2 * step[:-1] + 1e-9), (removed, centre)
    assert budget * 0.97 <= ep.flops / fm.dense <= budget
    plain = PruningEnvironment(st, fm, BudgetClipper(fm, budget)).rollout(lambda s: top / 2)
    assert plain.kept != ep.kept  # the plain action top / 2 is not budget-neutral here


def test_centred_random_episodes_squeeze_the_last_groups_less(resnet20_internal):
    """The reason for centring: with plain actions, random episodes leave the last groups at
    their fewest channels; centred on the remaining groups' uniform ratio, far less often."""
    st, fm = resnet20_internal
    floor = [int(c[0]) for c in BudgetClipper(fm, 0.5).candidates]

    def squeezed(centred: bool, spread: float) -> float:
        env = PruningEnvironment(st, fm, BudgetClipper(fm, 0.5), centred=centred)
        g = torch.Generator().manual_seed(0)
        top = env.clipper.rule.max_ratio
        hits = 0
        for _ in range(60):
            ep = env.rollout(lambda s: float((0.5 + (torch.rand(1, generator=g) - 0.5) * spread) * top))
            hits += sum(k == f for k, f in zip(ep.kept[-3:], floor[-3:]))
        return hits / (60 * 3)

    plain, centred = squeezed(False, 1.0), squeezed(True, 0.5)
    assert plain > 0.5 and centred < plain / 2, (plain, centred)


@pytest.mark.parametrize("move", ["transfer", "scale"])
def test_a_neighbour_of_the_incumbent_changes_a_few_groups_and_meets_the_budget(resnet20_internal, move):
    """rollout_near, the agent's local search: sigma 0 gives the allocation back exactly; with
    noise, the asked-for groups move, the clipper keeps every episode within budget, and the
    recorded actions lie in the agent's action range (the replay learns from them as from the
    policy's own episodes)."""
    st, fm = resnet20_internal
    env = PruningEnvironment(st, fm, BudgetClipper(fm, 0.5), centred=True)
    incumbent = env.uniform_under_budget()
    g = torch.Generator().manual_seed(0)
    assert env.rollout_near(incumbent, 3, 0.0, g, move).kept == incumbent
    changed = []
    for _ in range(20):
        ep = env.rollout_near(incumbent, 2, 0.5, g, move)
        assert ep.flops <= fm.dense * 0.5 + 1e-6
        changed.append(sum(a != b for a, b in zip(ep.kept, incumbent)))
        assert 0.0 <= float(ep.actions.min()) and float(ep.actions.max()) <= env.clipper.rule.max_ratio + 1e-6
    # a neighbour, not a new draw: the asked-for groups (two per trade) and the last ones the clipper fills
    assert 0 < np.median(changed) <= {"transfer": 5, "scale": 4}[move] and max(changed) < len(incumbent), changed
    again = env.rollout_near(incumbent, 2, 0.5, torch.Generator().manual_seed(0), move)
    first = env.rollout_near(incumbent, 2, 0.5, torch.Generator().manual_seed(0), move)
    assert again.kept == first.kept  # drawn from the generator only (resume and DDP ranks agree)


def test_a_transfer_moves_capacity_between_two_groups_at_the_incumbents_flops(resnet20_internal):
    """move "transfer": one scaled group and its partner change, the partner taking the most
    channels that keep the FLOPs at most the incumbent's, so the rest of the allocation stays as
    it was (but for the last group, where the clipper spends what the trade left of the budget),
    unlike "scale", where the last groups absorb the whole change."""
    st, fm = resnet20_internal
    env = PruningEnvironment(st, fm, BudgetClipper(fm, 0.5), centred=True)
    incumbent = env.uniform_under_budget()
    last = len(incumbent) - 1
    g = torch.Generator().manual_seed(1)
    traded = 0
    for _ in range(30):
        ep = env.rollout_near(incumbent, 1, 0.4, g, "transfer")
        assert ep.flops <= fm.dense * 0.5 + 1e-6
        diff = [i for i, (a, b) in enumerate(zip(ep.kept, incumbent)) if a != b and i != last]
        assert len(diff) <= 2, diff  # a trade is between two groups
        if len(diff) == 2:
            traded += 1
            i, j = diff
            assert (ep.kept[i] - incumbent[i]) * (ep.kept[j] - incumbent[j]) < 0  # one gains what the other gives
    assert traded >= 10, traded
