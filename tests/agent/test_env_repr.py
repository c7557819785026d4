import pytest
import torch

from jointprune.agent.env_repr import EnvironmentRepresentation, RewardDecoder, _decoder_batch, fit_decoder
from jointprune.agent.replay import ReplayBuffer


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: extra threads only add contention on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_z_many_matches_per_index_z():
    torch.manual_seed(0)
    er = EnvironmentRepresentation(max_epochs=10, dim=8)
    idx = torch.tensor([0, 3, 3, 9, 5])
    many = er.z_many(idx)
    assert many.shape == (5, 8) and er.z(4).shape == (8,)
    for row, t in zip(many, idx.tolist()):
        torch.testing.assert_close(row, er.z(t))


def test_begin_epoch_copies_previous_embedding():
    torch.manual_seed(0)
    er = EnvironmentRepresentation(max_epochs=5, dim=4)
    w0 = er.embedding.weight.detach().clone()
    er.begin_epoch(0)  # nothing before epoch 0
    assert torch.equal(er.embedding.weight, w0)
    er.begin_epoch(3)
    assert torch.equal(er.embedding.weight[3], w0[2])
    assert torch.equal(er.embedding.weight[4], w0[4])


def test_out_of_range_epoch_is_a_clear_error():
    er = EnvironmentRepresentation(max_epochs=5, dim=4)
    with pytest.raises(ValueError, match="max_epochs to at least 6"):
        er.z(5)
    with pytest.raises(ValueError):
        er.z_many(torch.tensor([1, 5]))


def test_fixed_mode_is_constant_zero_without_parameters():
    er = EnvironmentRepresentation(max_epochs=5, dim=4, fixed=True)
    assert list(er.parameters()) == []
    assert torch.equal(er.z(2), torch.zeros(4))
    assert torch.equal(er.z_many(torch.tensor([0, 4])), torch.zeros(2, 4))
    er.begin_epoch(3)  # no-op


def _synthetic_buffer(g, epochs=5, n=600, sd=3):
    # Episodes of 3 steps; only the last (done) step carries the reward, which depends on
    # state, action and the epoch (through a per-epoch offset only z can explain).
    offset = torch.linspace(-1.0, 1.0, epochs)
    buf = ReplayBuffer(2 * n, sd)
    s = torch.rand(n, sd, generator=g)
    a = torch.rand(n, 1, generator=g) * 0.8
    t = torch.randint(0, epochs, (n,), generator=g)
    step = torch.arange(n) % 3
    s[:, -1] = step / 2.0  # like the real state's layer index: tells the last step apart
    done = (step == 2).float()
    r = done * (s[:, 0] - 2.0 * a[:, 0] + offset[t])
    buf.add(s, a, r, torch.rand(n, sd, generator=g), done, t)
    return buf


def test_terminal_transitions_fill_half_the_decoder_batch():
    g = torch.Generator().manual_seed(0)
    buf = _synthetic_buffer(g)
    b = _decoder_batch(buf, 64, g, terminal_fraction=0.5)
    assert b["done"].sum() >= 32


def test_fit_decoder_halves_the_reward_mse():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    buf = _synthetic_buffer(g)
    er = EnvironmentRepresentation(max_epochs=5, dim=16)
    dec = RewardDecoder(3, 1, 16, hidden=(64, 64))
    opt = torch.optim.Adam(list(er.parameters()) + list(dec.parameters()), lr=3e-3)
    out = fit_decoder(er, dec, buf, opt, steps=300, batch_size=64, generator=g)
    assert out["decoder_loss"] <= 0.5 * out["decoder_loss_first"]
    assert out["decoder_loss"] < 0.05  # the per-epoch offset is explained through z


def test_fixed_representation_cannot_explain_the_epoch_offset():
    # Ablation sanity check: with z = 0 the per-epoch part of the reward stays unexplained.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    buf = _synthetic_buffer(g)
    er = EnvironmentRepresentation(max_epochs=5, dim=16, fixed=True)
    dec = RewardDecoder(3, 1, 16, hidden=(64, 64))
    out = fit_decoder(er, dec, buf, torch.optim.Adam(dec.parameters(), lr=3e-3), steps=300, batch_size=64, generator=g)
    assert out["decoder_loss"] > 0.1
