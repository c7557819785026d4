import math

import numpy as np
import pytest
import torch

from jointprune.agent import EnvironmentRepresentation, ReplayBuffer, RewardDecoder, SoftActorCritic
from jointprune.agent.episode import STATE_DIM, PruningEnvironment
from jointprune.agent.training import RewardNormalizer, update_phase
from jointprune.models import create_model
from jointprune.options import AgentOptions, EnvReprOptions
from jointprune.pruning import BudgetClipper, ChannelStructure, FlopsModel, KeepRule


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _add_episode(buf, rewards_at_end, epoch, length=3, sd=2):
    r = torch.zeros(length)
    r[-1] = rewards_at_end
    done = torch.zeros(length)
    done[-1] = 1.0
    buf.add(torch.rand(length, sd), torch.rand(length, 1), r, torch.rand(length, sd), done, epoch)


def test_normalizer_standardises_terminal_rewards_and_builds_returns():
    buf = ReplayBuffer(100, state_dim=2)
    for i, r in enumerate([0.6, 0.8, 0.7, 0.9]):
        _add_episode(buf, r, epoch=i // 2)
    norm = RewardNormalizer(buf, "global")
    assert norm.scale == pytest.approx(np.std([0.6, 0.8, 0.7, 0.9]), rel=1e-5)
    b = norm(buf.all(), gamma=0.5)
    term = b["done"] > 0.5
    torch.testing.assert_close(b["reward"][term], (torch.tensor([0.6, 0.8, 0.7, 0.9]) - 0.75) / norm.scale)
    assert torch.all(b["reward"][~term] == 0)
    # The first step of the first episode: two steps before its end, gamma**2 * normalised reward.
    assert b["return"][0].item() == pytest.approx(0.25 * (0.6 - 0.75) / norm.scale, rel=1e-5)
    assert b["return"][2].item() == pytest.approx(b["reward"][2].item(), rel=1e-6)
    # Per-epoch baselines remove each epoch's own mean.
    per_epoch = RewardNormalizer(buf, "epoch")(buf.all(), gamma=1.0)
    torch.testing.assert_close(per_epoch["reward"][term] * RewardNormalizer(buf, "epoch").scale,
                               torch.tensor([-0.1, 0.1, -0.1, 0.1]), atol=1e-5, rtol=0)
    # "none": untouched rewards.
    torch.testing.assert_close(RewardNormalizer(buf, "none")(buf.all(), 1.0)["reward"], buf.all()["reward"])


def test_return_target_is_the_mix_of_observed_return_and_td():
    torch.manual_seed(0)
    sac = SoftActorCritic(2, 2, hidden=(8, 8), return_weight=1.0, tau=1.0)
    actor_opt, critic_opt = sac.default_optimizers(critic_lr=1e-2)
    n = 32
    batch = {"state": torch.zeros(n, 2), "action": torch.full((n, 1), 0.4), "reward": torch.zeros(n),
             "next_state": torch.zeros(n, 2), "done": torch.zeros(n), "return": torch.full((n,), 3.0)}
    z = torch.zeros(n, 2)
    for _ in range(400):
        sac.update(batch, z, z, actor_opt, critic_opt)
    x = torch.cat([batch["state"], z, batch["action"]], -1)[:1]
    # Non-terminal zero rewards: a pure TD target would chase its own bootstrap; the observed
    # return pins Q to 3.
    assert sac.q1(x).item() == pytest.approx(3.0, abs=0.1)
    with pytest.raises(Exception, match="return_weight"):
        SoftActorCritic(2, 2, return_weight=1.5)


def _tiny_environment():
    model = create_model("cifar_resnet20")
    structure = ChannelStructure(model, torch.zeros(1, 3, 32, 32))
    flops = FlopsModel(structure)
    return PruningEnvironment(structure, flops, BudgetClipper(flops, 0.5, KeepRule()))


def test_sac_beats_random_search_with_the_same_evaluations():
    """Tiny landscape on the real ResNet-20 environment: the reward saturates at a hidden
    allocation that keeps the first stage whole and prunes the later ones as hard as allowed
    (optimum 1 by construction: no allocation scores more than the target's own channels)."""
    env = _tiny_environment()
    sizes = np.asarray(env.clipper.sizes, dtype=np.float64)
    fewest = np.asarray([env.clipper.rule.candidates(int(n))[0] for n in sizes], dtype=np.float64)
    target = np.where(np.arange(len(sizes)) < 3, sizes, fewest)  # first stage (nearly) whole, the rest minimal
    target[2] = 12
    assert env.flops(target) <= env.clipper.limit

    def reward(kept):
        return float((np.minimum(np.asarray(kept, dtype=np.float64), target) / sizes).sum() / (target / sizes).sum())

    agent = AgentOptions(episodes_per_epoch=5, sac_updates=40, hidden=64, random_epochs=1)
    envo = EnvReprOptions(dim=8, decoder_steps=10)
    epochs, results = 8, []
    for seed in range(2):  # fixed seeds: deterministic; the margin keeps it robust to small numeric drift
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        sac = SoftActorCritic(STATE_DIM, envo.dim, hidden=(64, 64), return_weight=agent.return_weight)
        env_repr = EnvironmentRepresentation(epochs, envo.dim)
        decoder = RewardDecoder(STATE_DIM, 1, envo.dim, hidden=(64, 64))
        replay = ReplayBuffer(10_000, STATE_DIM)
        actor_opt, critic_opt = sac.default_optimizers()
        env_opt = torch.optim.Adam(list(env_repr.parameters()) + list(decoder.parameters()), lr=envo.lr)
        best = 0.0
        for t in range(epochs):
            with torch.no_grad():
                z = env_repr.z(t)
            for _ in range(agent.episodes_per_epoch):
                if t < agent.random_epochs:
                    ep = env.rollout(lambda s: float(sac.random_action(1, gen)[0, 0]))
                else:
                    ep = env.rollout(lambda s: float(sac.act(s, z, generator=gen)[0]))
                r = torch.zeros(len(ep.kept))
                r[-1] = reward(ep.kept)
                best = max(best, r[-1].item())
                replay.add(ep.states, ep.actions[:, None], r, ep.next_states, ep.dones, t)
            update_phase(sac, env_repr, decoder, replay, actor_opt, critic_opt, env_opt, agent, envo, gen)
        rng = np.random.default_rng(seed)
        rnd = max(reward(env.rollout(lambda s: float(rng.uniform(0, 0.8))).kept)
                  for _ in range(epochs * agent.episodes_per_epoch))
        results.append((best, rnd))
    print(results)
    assert all(math.isfinite(b) for b, _ in results)
    # Since the clipper's lower bound, random episodes land on the budget too, so random search is
    # a strong baseline here (0.91-0.95); SAC must still beat it on every seed by a clear margin.
    assert all(b > r + 0.01 for b, r in results), results


@pytest.mark.parametrize("field,value", [("reward_normalization", "median"), ("reward_scale_floor", 0.0),
                                         ("return_weight", -0.1)])
def test_bad_agent_options_are_one_clear_error(field, value):
    from jointprune.agent.training import check_agent_options
    from jointprune.errors import JointPruneError
    with pytest.raises(JointPruneError, match=f"model.agent.{field}"):
        check_agent_options(AgentOptions(**{field: value}))


@pytest.mark.parametrize("spread", [0.0, 1.5, -0.2])
def test_a_random_spread_outside_its_range_is_one_sentence(spread):
    from jointprune.agent.training import check_agent_options
    from jointprune.errors import JointPruneError
    from jointprune.options import AgentOptions
    with pytest.raises(JointPruneError, match=r"model\.agent\.random_spread must be in \(0, 1\]"):
        check_agent_options(AgentOptions(random_spread=spread))


@pytest.mark.parametrize("field,value,allowed", [("refine_fraction", 1.5, r"in \[0, 1\]"),
                                                 ("refine_fraction", -0.1, r"in \[0, 1\]"),
                                                 ("refine_groups", 0, r"an integer >= 1"),
                                                 ("refine_groups", 1.5, r"an integer >= 1"),
                                                 ("refine_sigma", -0.3, r">= 0"),
                                                 ("refine_move", "swap", r"'transfer' .* or 'scale'")])
def test_bad_refine_options_are_one_sentence(field, value, allowed):
    from jointprune.agent.training import check_agent_options
    from jointprune.errors import JointPruneError
    from jointprune.options import AgentOptions
    with pytest.raises(JointPruneError, match=rf"model\.agent\.{field} must be {allowed}"):
        check_agent_options(AgentOptions(**{field: value}))
