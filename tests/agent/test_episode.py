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
