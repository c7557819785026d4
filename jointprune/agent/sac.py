"""Soft Actor-Critic for the pruning agent (twin Q + target nets, fixed entropy weight).

The policy conditions on concat(state, z) where z is the environment representation of the
current epoch; the critics on concat(state, z, action). Actions (per-layer pruning ratios)
live in [0, max_action]: a Gaussian in pre-squash space, tanh, then an affine map.
The caller owns the optimizers (see `default_optimizers`) and the device placement.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import JointPruneError
from .env_repr import _mlp

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def _log_one_minus_tanh_sq(u: Tensor) -> Tensor:
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u| (no log(0)).
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))


class GaussianActor(nn.Module):
    def __init__(self, in_dim: int, action_dim: int = 1, hidden: tuple[int, ...] = (300, 300), max_action: float = 0.8):
        super().__init__()
        self.action_dim, self.max_action = action_dim, float(max_action)
        self.net = _mlp(in_dim, tuple(hidden), 2 * action_dim)

    def dist_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_std = self.net(x).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def _squash(self, u: Tensor) -> Tensor:
        return (torch.tanh(u) + 1.0) * (0.5 * self.max_action)

    def _log_prob_u(self, u: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
        # Density of a = (tanh(u)+1) * max/2 by change of variables:
        # log p(a) = log N(u; mu, std) - log(1 - tanh(u)^2) - log(max/2), summed over action dims.
        gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        jac = _log_one_minus_tanh_sq(u) + math.log(0.5 * self.max_action)
        return (gauss - jac).sum(-1)

    def forward(self, x: Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        """Returns (action [n, action_dim] in [0, max_action], log-prob [n]); reparameterised."""
        mu, log_std = self.dist_params(x)
        if deterministic:
            u = mu
        else:
            # Noise is drawn on the generator's device so a CPU generator works with a GPU model.
            dev = generator.device if generator is not None else mu.device
            eps = torch.randn(mu.shape, generator=generator, device=dev, dtype=mu.dtype).to(mu.device)
            u = mu + log_std.exp() * eps
        return self._squash(u), self._log_prob_u(u, mu, log_std)

    def log_prob(self, x: Tensor, action: Tensor, eps: float = 1e-6) -> Tensor:
        """log p(action | x) for given actions (the inverse of the squash; clipped off the edges)."""
        mu, log_std = self.dist_params(x)
        y = (action * (2.0 / self.max_action) - 1.0).clamp(-1.0 + eps, 1.0 - eps)
        return self._log_prob_u(torch.atanh(y), mu, log_std)


class SoftActorCritic(nn.Module):
    def __init__(
        self,
        state_dim: int,
        z_dim: int,
        action_dim: int = 1,
        hidden: tuple[int, ...] = (300, 300),
        max_action: float = 0.8,
        alpha: float = 0.1,
        gamma: float = 0.99,
        tau: float = 0.005,
        return_weight: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= return_weight <= 1.0:
            raise JointPruneError(f"model.agent.return_weight must be in [0, 1], got {return_weight}.")
        self.state_dim, self.z_dim, self.action_dim = state_dim, z_dim, action_dim
        self.max_action, self.alpha, self.gamma, self.tau = float(max_action), float(alpha), float(gamma), float(tau)
        self.return_weight = float(return_weight)
        self.actor = GaussianActor(state_dim + z_dim, action_dim, hidden, max_action)
        q_in = state_dim + z_dim + action_dim
        self.q1, self.q2 = _mlp(q_in, tuple(hidden), 1), _mlp(q_in, tuple(hidden), 1)
        # Targets are submodules (so they move with .to() and are checkpointed) but never trained.
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)

    # ----- parameters / optimizers (owned by the caller) -----
    def actor_parameters(self):
        return self.actor.parameters()

    def critic_parameters(self):
        return list(self.q1.parameters()) + list(self.q2.parameters())

    def default_optimizers(self, actor_lr: float = 1e-4, critic_lr: float = 1e-3):
        """(actor_opt, critic_opt): two separate Adams with the METHOD learning rates."""
        return (torch.optim.Adam(self.actor_parameters(), lr=actor_lr),
                torch.optim.Adam(self.critic_parameters(), lr=critic_lr))

    # ----- acting -----
    def _actor_input(self, state: Tensor, z: Tensor) -> Tensor:
        if z.dim() < state.dim():  # one z shared by a batch of states
            z = z.expand(*state.shape[:-1], z.shape[-1])
        return torch.cat([state, z], dim=-1)

    @torch.no_grad()
    def act(self, state: Tensor, z: Tensor, generator: torch.Generator | None = None, deterministic: bool = False) -> Tensor:
        """Action(s) in [0, max_action]; [state_dim] -> [action_dim], [n, state_dim] -> [n, action_dim].

        deterministic=True returns the policy mean pushed through the squash (no noise, the
        generator is untouched): the agent's current best guess, for a greedy episode."""
        single = state.dim() == 1
        x = self._actor_input(state.unsqueeze(0) if single else state, z)
        a, _ = self.actor(x, deterministic=deterministic, generator=generator)
        return a[0] if single else a

    def random_action(self, n: int, generator: torch.Generator | None = None, device=None,
                      spread: float = 1.0) -> Tensor:
        """[n, action_dim] uniform over the middle `spread` of [0, max_action] (all of it by
        default) for warm-up epochs, drawn on the generator's device."""
        dev = generator.device if generator is not None else "cpu"
        u = torch.rand(n, self.action_dim, generator=generator, device=dev)
        a = (0.5 + (u - 0.5) * spread) * self.max_action
        return a if device is None else a.to(device)

    def log_prob(self, state: Tensor, z: Tensor, action: Tensor) -> Tensor:
        return self.actor.log_prob(self._actor_input(state, z), action)

    # ----- learning -----
    @staticmethod
    def _min_q(q1: nn.Module, q2: nn.Module, x: Tensor) -> Tensor:
        return torch.min(q1(x), q2(x)).squeeze(-1)

    def update(self, batch: dict, z: Tensor, z_next: Tensor, actor_opt, critic_opt,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One SAC step on a replay batch. z / z_next: [n, z_dim] for each transition's epoch.

        z is recomputed by the caller with the current GRU; it is detached here as well so the
        agent's losses never train the environment representation (only the decoder does).
        actor_opt and critic_opt must be distinct optimizers over actor / critic parameters.

        If the batch carries "return" (the discounted return observed from each transition to
        its episode's end, NaN where unknown), the critic target is
        return_weight * return + (1 - return_weight) * soft TD target. The reward comes only at
        an episode's end, so a pure TD target needs the terminal value to creep back one step
        per target-net refresh (~1/tau updates) over all L groups; the observed return gives
        every step its credit at once, and the TD part keeps the twin target critics and the
        entropy bonus in the target.
        """
        dev = next(self.actor.parameters()).device  # move data to the modules, never the reverse
        s, a, s2 = batch["state"].to(dev), batch["action"].to(dev), batch["next_state"].to(dev)
        r, done = batch["reward"].to(dev).flatten(), batch["done"].to(dev).flatten()
        z, z_next = z.detach().to(dev), z_next.detach().to(dev)
        a = a.reshape(-1, self.action_dim)

        with torch.no_grad():
            a2, logp2 = self.actor(torch.cat([s2, z_next], -1), generator=generator)
            q_next = self._min_q(self.q1_target, self.q2_target, torch.cat([s2, z_next, a2], -1))
            target = r + self.gamma * (1.0 - done) * (q_next - self.alpha * logp2)
            ret = batch.get("return")
            if ret is not None and self.return_weight > 0.0:
                ret = ret.to(dev).flatten()
                known = torch.isfinite(ret)
                mixed = self.return_weight * torch.nan_to_num(ret) + (1.0 - self.return_weight) * target
                target = torch.where(known, mixed, target)

        sa = torch.cat([s, z, a], -1)
        q1, q2 = self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_opt.step()

        # Actor step: freeze the critics so the actor loss leaves no stray gradients on them.
        self.q1.requires_grad_(False)
        self.q2.requires_grad_(False)
        try:
            a_pi, logp = self.actor(torch.cat([s, z], -1), generator=generator)
            q_pi = self._min_q(self.q1, self.q2, torch.cat([s, z, a_pi], -1))
            actor_loss = (self.alpha * logp - q_pi).mean()
            actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            actor_opt.step()
        finally:
            self.q1.requires_grad_(True)
            self.q2.requires_grad_(True)

        self.soft_update()
        return {
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "q_mean": q1.detach().mean(),
            "logp_mean": logp.detach().mean(),
        }

    @torch.no_grad()
    def soft_update(self, tau: float | None = None) -> None:
        """target <- (1 - tau) * target + tau * online."""
        tau = self.tau if tau is None else tau
        # One fused call over every tensor: the per-tensor loop was a visible share of a small update.
        targets = list(self.q1_target.parameters()) + list(self.q2_target.parameters())
        torch._foreach_lerp_(targets, self.critic_parameters(), tau)
