"""Environment representation z_t of the (changing) CNN being pruned, and its reward decoder.

Each training epoch t has a learnable embedding e_t; a 1-layer GRU over e_0..e_t gives
z_t (its last hidden state). The embeddings and the GRU get their training signal only
from a decoder D(state, action, z) that reconstructs the rewards the agent observed.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .replay import ReplayBuffer


class EnvironmentRepresentation(nn.Module):
    def __init__(self, max_epochs: int, dim: int = 64, fixed: bool = False):
        super().__init__()
        self.max_epochs, self.dim, self.fixed = int(max_epochs), int(dim), bool(fixed)
        if self.fixed:
            # Ablation "without environment representation": z is a constant zero vector and
            # the module owns no parameters. The buffer only makes z follow module.to(device).
            self.register_buffer("_zero", torch.zeros(dim), persistent=False)
        else:
            self.embedding = nn.Embedding(max_epochs, dim)
            self.gru = nn.GRU(dim, dim, batch_first=True)

    def _check(self, t: int) -> None:
        if not 0 <= t < self.max_epochs:
            raise ValueError(
                f"Epoch index {t} is outside the environment representation's range "
                f"0..{self.max_epochs - 1}; set max_epochs to at least {t + 1}."
            )

    def hidden_states(self, last: int) -> Tensor:
        """GRU outputs h_0..h_last, shape [last + 1, dim]; h_t = z_t because the GRU is causal."""
        self._check(last)
        out, _ = self.gru(self.embedding.weight[: last + 1].unsqueeze(0))
        return out[0]

    def z(self, t: int) -> Tensor:
        """z_t from e_0..e_t, shape [dim]."""
        t = int(t)
        self._check(t)
        if self.fixed:
            return self._zero.clone()
        return self.hidden_states(t)[t]

    def z_many(self, epochs: Tensor) -> Tensor:
        """z for many epoch indices, shape [n, dim]: one GRU pass up to max(epochs), then a gather."""
        epochs = torch.as_tensor(epochs, dtype=torch.long).flatten()
        if epochs.numel() == 0:
            return torch.zeros(0, self.dim, device=self._device())
        lo, hi = int(epochs.min()), int(epochs.max())
        self._check(lo)
        self._check(hi)
        if self.fixed:
            return self._zero.expand(epochs.numel(), self.dim).clone()
        return self.hidden_states(hi)[epochs.to(self._device())]

    @torch.no_grad()
    def begin_epoch(self, t: int) -> None:
        """Start epoch t's embedding as a copy of epoch t-1's (the CNN changes little per epoch)."""
        t = int(t)
        self._check(t)
        if not self.fixed and t > 0:
            self.embedding.weight[t].copy_(self.embedding.weight[t - 1])

    def _device(self) -> torch.device:
        return self._zero.device if self.fixed else self.embedding.weight.device


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers, d = [], in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class RewardDecoder(nn.Module):
    """D(state, action, z) -> predicted reward, shape [n]."""

    def __init__(self, state_dim: int, action_dim: int, z_dim: int, hidden: tuple[int, ...] = (300, 300)):
        super().__init__()
        self.net = _mlp(state_dim + action_dim + z_dim, tuple(hidden), 1)

    def forward(self, state: Tensor, action: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([state, action, z], dim=-1)).squeeze(-1)


def _decoder_batch(buffer: ReplayBuffer, batch_size: int, generator, terminal_fraction: float) -> dict:
    # Rewards are sparse: only an episode's last (done) transition carries the reward, all the
    # others have r = 0. Uniform sampling would give mostly zero targets, the decoder would
    # learn "predict ~0" and the epoch embeddings would see almost no signal about how the
    # reward landscape differs between epochs. So at least `terminal_fraction` of each batch
    # comes from terminal transitions (when any exist); the rest is uniform over everything,
    # so the decoder still learns that intermediate transitions have zero reward.
    term = buffer.terminal_indices()
    n_term = int(round(batch_size * terminal_fraction)) if term.numel() > 0 else 0
    gen_device = generator.device if generator is not None else "cpu"
    parts = []
    if n_term > 0:
        pick = torch.randint(0, term.numel(), (n_term,), generator=generator, device=gen_device)
        parts.append(term[pick.to(term.device)])
    rest = batch_size - n_term
    if rest > 0:
        parts.append(torch.randint(0, len(buffer), (rest,), generator=generator, device=gen_device).to(buffer.device))
    return buffer.gather(torch.cat(parts))


def fit_decoder(
    env_repr: EnvironmentRepresentation,
    decoder: RewardDecoder,
    buffer: ReplayBuffer,
    optimizer: torch.optim.Optimizer,
    steps: int,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    terminal_fraction: float = 0.5,
) -> dict[str, float]:
    """Train decoder + embeddings + GRU to reconstruct stored rewards with an MSE loss.

    `optimizer` must cover the decoder's parameters and (unless env_repr.fixed) env_repr's.
    Returns the mean MSE over the first and over the last max(1, steps // 10) steps:
    {"decoder_loss": last, "decoder_loss_first": first}; {} if there is nothing to fit.
    """
    if steps < 1 or len(buffer) == 0:
        return {}
    device = next(decoder.parameters()).device  # data is moved to the modules, never the reverse
    losses = []
    for _ in range(steps):
        b = {k: v.to(device) for k, v in _decoder_batch(buffer, batch_size, generator, terminal_fraction).items()}
        z = env_repr.z_many(b["epoch"])  # not detached: this is how e_t and the GRU learn
        loss = F.mse_loss(decoder(b["state"], b["action"], z), b["reward"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    w = max(1, steps // 10)
    losses = torch.stack(losses)
    return {"decoder_loss": losses[-w:].mean().item(), "decoder_loss_first": losses[:w].mean().item()}
