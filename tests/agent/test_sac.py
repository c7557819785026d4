import pytest
import torch

from jointprune.agent.replay import ReplayBuffer
from jointprune.agent.sac import SoftActorCritic


@pytest.fixture(autouse=True)
def _one_thread():
    # Small batches: extra threads only add contention on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_actions_stay_in_range():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sac = SoftActorCritic(state_dim=5, z_dim=3, max_action=0.8)
    s, z = 50.0 * torch.randn(256, 5), 50.0 * torch.randn(256, 3)  # large inputs saturate tanh
    for det in (False, True):
        a = sac.act(s, z, deterministic=det, generator=g)
        assert a.shape == (256, 1) and a.min() >= 0.0 and a.max() <= 0.8
    assert sac.act(torch.zeros(5), torch.zeros(3)).shape == (1,)
    r = sac.random_action(1000, g)
    assert r.shape == (1000, 1) and r.min() >= 0.0 and r.max() <= 0.8 and r.std() > 0.2


def test_log_prob_is_the_squashed_density():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sac = SoftActorCritic(state_dim=2, z_dim=2, max_action=0.8)
    with torch.no_grad():
        sac.actor.net[-1].bias.copy_(torch.tensor([0.3, -0.5]))  # mean, log-std of u
        x = torch.zeros(1, 4)
        # Sampled log-probs agree with log_prob() evaluated at the sampled actions.
        a, logp = sac.actor(x.expand(4096, 4), generator=g)
        assert torch.isfinite(logp).all()
        torch.testing.assert_close(sac.actor.log_prob(x.expand(4096, 4), a), logp, atol=1e-3, rtol=1e-3)
        # The density integrates to 1 over [0, max_action].
        grid = torch.linspace(1e-5, 0.8 - 1e-5, 20001).unsqueeze(-1)
        p = sac.actor.log_prob(x.expand(len(grid), 4), grid).exp()
        assert torch.trapezoid(p, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=1e-3)
        # Monte-Carlo: the share of samples in a small window matches p(a0) * width.
        a, _ = sac.actor(x.expand(200_000, 4), generator=g)
        a0, h = 0.5, 0.01
        frac = ((a - a0).abs() < h).float().mean().item()
        dens = sac.actor.log_prob(x, torch.tensor([[a0]])).exp().item()
        assert frac == pytest.approx(2 * h * dens, rel=0.05)


def _batch(g, n, sd, reward_fn=None):
    a = torch.rand(n, 1, generator=g) * 0.8
    r = reward_fn(a) if reward_fn else torch.randn(n, generator=g)
    return {"state": torch.randn(n, sd, generator=g), "action": a, "reward": r,
            "next_state": torch.randn(n, sd, generator=g), "done": (torch.rand(n, generator=g) < 0.3).float(),
            "epoch": torch.zeros(n, dtype=torch.long)}


def test_update_moves_targets_by_tau_and_trains_only_its_nets():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sac = SoftActorCritic(state_dim=4, z_dim=3, tau=0.005)
    assert all(not p.requires_grad for p in sac.q1_target.parameters())
    assert sum(p.numel() for p in sac.critic_parameters()) == sum(p.numel() for p in sac.q1.parameters()) * 2
    actor_opt, critic_opt = sac.default_optimizers()
    assert actor_opt.param_groups[0]["lr"] == 1e-4 and critic_opt.param_groups[0]["lr"] == 1e-3
    old_target = [p.clone() for p in sac.q1_target.parameters()]
    old_actor, old_q2 = [p.clone() for p in sac.actor_parameters()], [p.clone() for p in sac.q2.parameters()]
    z = torch.randn(64, 3, requires_grad=True)
    out = sac.update(_batch(g, 64, 4), z, torch.randn(64, 3), actor_opt, critic_opt)
    assert all(torch.isfinite(v) for v in out.values()) and {"critic_loss", "actor_loss"} <= out.keys()
    assert z.grad is None  # z arrives detached: the agent never trains the representation
    for pt, old, p in zip(sac.q1_target.parameters(), old_target, sac.q1.parameters()):
        torch.testing.assert_close(pt, 0.995 * old + 0.005 * p)
    assert not torch.equal(old_target[0], next(sac.q1_target.parameters()))
    assert not torch.equal(old_actor[0], next(sac.actor_parameters()))
    assert not torch.equal(old_q2[0], next(sac.q2.parameters()))
    assert all(p.requires_grad for p in sac.critic_parameters())  # unfrozen after the actor step


def test_one_step_bandit_converges_to_best_action():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sd, zd = 4, 4
    sac = SoftActorCritic(sd, zd)  # METHOD defaults (2x300, lrs 1e-4/1e-3, alpha 0.1)
    with torch.no_grad():
        sac.actor.net[-1].bias[0] = 1.5  # start far from the optimum (deterministic action ~0.76)
    zeros_s, zeros_z = torch.zeros(sd), torch.zeros(zd)
    assert abs(sac.act(zeros_s, zeros_z, deterministic=True).item() - 0.3) > 0.4
    buf = ReplayBuffer(1024, sd)
    a = sac.random_action(512, g)
    buf.add(torch.zeros(512, sd), a, -(a[:, 0] - 0.3) ** 2, torch.zeros(512, sd), 1.0, 0)
    actor_opt, critic_opt = sac.default_optimizers()
    z = torch.zeros(64, zd)
    for _ in range(300):
        sac.update(buf.sample(64, g), z, z, actor_opt, critic_opt)
    assert abs(sac.act(zeros_s, zeros_z, deterministic=True).item() - 0.3) < 0.1


def test_deterministic_act_is_the_squashed_mean_and_draws_no_noise():
    torch.manual_seed(0)
    sac = SoftActorCritic(state_dim=3, z_dim=2, max_action=0.8)
    s, z = torch.randn(5, 3), torch.randn(2)
    g = torch.Generator().manual_seed(7)
    before = g.get_state()
    a = sac.act(s, z, generator=g, deterministic=True)
    assert torch.equal(g.get_state(), before)  # no noise drawn
    mu, _ = sac.actor.dist_params(torch.cat([s, z.expand(5, 2)], -1))
    torch.testing.assert_close(a, (torch.tanh(mu) + 1.0) * 0.4)
    assert torch.equal(a, sac.act(s, z, deterministic=True))  # repeatable
    assert not torch.equal(a, sac.act(s, z, generator=g))  # the stochastic action differs
    assert sac.act(s[0], z, None, True).shape == (1,)  # positional order: generator, deterministic
