"""Circular replay buffer for the pruning agent.

Each transition is (state, action, reward, next_state, done, epoch). The epoch index
is stored instead of the environment embedding z because z changes while the GRU
trains: the caller recomputes z for a sampled batch from its epoch indices.

Each transition also records where its episode ended: `to_go` (steps until the episode's done
transition, 0 for that one; -1 while the episode is unfinished within one `add` call) and
`final_reward` (the done transition's reward). The method rewards only the finished
sub-network (METHOD.md section 3), so the observed return from a transition is
gamma**to_go * final_reward: the critic can learn from it directly instead of waiting for a
terminal reward to creep back through L bootstrapped steps (see SoftActorCritic.update).
Episodes must therefore be added whole, in one call, as the AgentEpisodes callback does.
"""
from __future__ import annotations

import torch
from torch import Tensor

_FIELDS = ("state", "action", "reward", "next_state", "done", "epoch", "to_go", "final_reward")


class ReplayBuffer:
    def __init__(self, capacity: int, state_dim: int, action_dim: int = 1, device: str | torch.device = "cpu"):
        if capacity < 1:
            raise ValueError(f"ReplayBuffer capacity must be at least 1, got {capacity}.")
        self.capacity, self.state_dim, self.action_dim = int(capacity), int(state_dim), int(action_dim)
        # Storage lives on `device` (CPU by default); sampled tensors come back on it.
        self.device = torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        self.state = torch.zeros(capacity, state_dim, **f32)
        self.action = torch.zeros(capacity, action_dim, **f32)
        self.reward = torch.zeros(capacity, **f32)
        self.next_state = torch.zeros(capacity, state_dim, **f32)
        self.done = torch.zeros(capacity, **f32)
        self.epoch = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.to_go = torch.full((capacity,), -1, dtype=torch.long, device=self.device)
        self.final_reward = torch.zeros(capacity, **f32)
        self.pos = 0  # next write slot
        self.size = 0  # number of valid slots

    def __len__(self) -> int:
        return self.size

    def _as(self, x, dtype, n: int, width: int | None) -> Tensor:
        t = torch.as_tensor(x).detach().to(device=self.device, dtype=dtype)
        shape = (n,) if width is None else (n, width)
        # Scalars (e.g. one epoch index for a whole batch) broadcast over the batch.
        return t.expand(shape) if t.numel() == 1 else t.reshape(shape)

    def add(self, state, action, reward, next_state, done, epoch) -> None:
        """Add one transition (state of shape [state_dim]) or a batch ([n, state_dim])."""
        s = torch.as_tensor(state).detach().to(device=self.device, dtype=torch.float32).reshape(-1, self.state_dim)
        n = s.shape[0]
        batch = {
            "state": s,
            "action": self._as(action, torch.float32, n, self.action_dim),
            "reward": self._as(reward, torch.float32, n, None),
            "next_state": self._as(next_state, torch.float32, n, self.state_dim),
            "done": self._as(done, torch.float32, n, None),
            "epoch": self._as(epoch, torch.long, n, None),
        }
        batch["to_go"], batch["final_reward"] = _episode_ends(batch["done"], batch["reward"])
        if n > self.capacity:  # only the newest `capacity` transitions would survive anyway
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            n = self.capacity
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        for k, v in batch.items():
            getattr(self, k)[idx] = v
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def gather(self, idx: Tensor) -> dict[str, Tensor]:
        idx = idx.to(self.device)
        return {k: getattr(self, k)[idx] for k in _FIELDS}

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Uniform sample with replacement; reproducible given the generator's state."""
        if self.size == 0:
            raise ValueError("Cannot sample from an empty ReplayBuffer.")
        # Indices are drawn on the generator's device (CPU generators work with any storage).
        gen_device = generator.device if generator is not None else "cpu"
        idx = torch.randint(0, self.size, (batch_size,), generator=generator, device=gen_device)
        return self.gather(idx)

    def terminal_indices(self) -> Tensor:
        """Indices of stored transitions with done=1 (the ones that carry the episode reward)."""
        return torch.nonzero(self.done[: self.size] > 0.5).flatten()

    def all(self) -> dict[str, Tensor]:
        """Every stored transition, oldest first."""
        if self.size < self.capacity:
            idx = torch.arange(self.size, device=self.device)
        else:
            idx = (self.pos + torch.arange(self.capacity, device=self.device)) % self.capacity
        return self.gather(idx)

    def state_dict(self) -> dict:
        # only the filled rows (the ring fills [0, size) before it wraps): a 100k-capacity buffer
        # would otherwise put ~11 MB into every checkpoint of a quickstart run
        d = {k: getattr(self, k)[:self.size].clone() for k in _FIELDS}
        d.update(pos=self.pos, size=self.size, capacity=self.capacity,
                 state_dim=self.state_dim, action_dim=self.action_dim)
        return d

    def load_state_dict(self, d: dict) -> None:
        for key in ("capacity", "state_dim", "action_dim"):
            if int(d[key]) != getattr(self, key):
                raise ValueError(f"ReplayBuffer {key} mismatch: checkpoint has {d[key]}, buffer has {getattr(self, key)}.")
        for k in _FIELDS:
            if k in d:
                getattr(self, k)[:len(d[k])].copy_(d[k])
            elif k == "to_go":  # a checkpoint from before returns were stored: unknown (TD only)
                self.to_go.fill_(-1)
        self.pos, self.size = int(d["pos"]), int(d["size"])


def _episode_ends(done: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
    """Per transition of one add() call: steps to the next done transition and its reward
    (-1 and 0 where no done follows in the call)."""
    n = done.shape[0]
    to_go = torch.full((n,), -1, dtype=torch.long, device=done.device)
    final = torch.zeros(n, dtype=torch.float32, device=done.device)
    steps, value = -1, 0.0
    ends = (done > 0.5).tolist()
    rewards = reward.tolist()
    for i in range(n - 1, -1, -1):  # episodes are tens of steps: a Python loop is fine
        if ends[i]:
            steps, value = 0, rewards[i]
        elif steps >= 0:
            steps += 1
        to_go[i], final[i] = steps, value if steps >= 0 else 0.0
    return to_go, final
