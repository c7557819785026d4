import pytest
import torch

from jointprune.agent.replay import ReplayBuffer


def _fill(buf, n, start=0):
    for i in range(start, start + n):
        buf.add(torch.full((3,), float(i)), [0.1 * (i % 8)], float(i), torch.full((3,), i + 0.5), i % 2, i // 4)


def test_wraparound_keeps_newest_oldest_first():
    buf = ReplayBuffer(5, state_dim=3)
    _fill(buf, 7)
    assert len(buf) == 5 and buf.pos == 2
    assert buf.all()["reward"].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_batch_add_broadcasts_and_truncates():
    buf = ReplayBuffer(4, state_dim=2)
    n = 6  # more than capacity: only the newest 4 survive
    buf.add(torch.arange(2 * n, dtype=torch.float32).view(n, 2), torch.rand(n), torch.arange(n), torch.zeros(n, 2), 0, 7)
    assert len(buf) == 4
    assert buf.all()["reward"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert buf.all()["epoch"].tolist() == [7] * 4


def test_sample_shapes_and_dtypes():
    buf = ReplayBuffer(10, state_dim=3, action_dim=2)
    buf.add(torch.rand(6, 3), torch.rand(6, 2), torch.rand(6), torch.rand(6, 3), torch.ones(6), torch.arange(6))
    b = buf.sample(32, generator=torch.Generator().manual_seed(0))
    assert b["state"].shape == (32, 3) and b["next_state"].shape == (32, 3)
    assert b["action"].shape == (32, 2)
    assert b["reward"].shape == b["done"].shape == b["epoch"].shape == (32,)
    assert b["epoch"].dtype == torch.long and b["reward"].dtype == torch.float32


def test_state_dict_round_trip_resumes_identically():
    a = ReplayBuffer(8, state_dim=3)
    _fill(a, 11)
    b = ReplayBuffer(8, state_dim=3)
    b.load_state_dict(a.state_dict())
    assert (b.pos, len(b)) == (a.pos, len(a))
    sa = a.sample(16, torch.Generator().manual_seed(123))
    sb = b.sample(16, torch.Generator().manual_seed(123))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    _fill(a, 3, start=11)  # writing continues at the same slot in both
    _fill(b, 3, start=11)
    assert all(torch.equal(a.all()[k], b.all()[k]) for k in sa)


def test_load_rejects_other_shapes():
    with pytest.raises(ValueError, match="state_dim"):
        ReplayBuffer(8, state_dim=4).load_state_dict(ReplayBuffer(8, state_dim=3).state_dict())


def test_episode_ends_are_recorded_per_transition():
    buf = ReplayBuffer(20, state_dim=1)
    # Two whole episodes (lengths 3 and 2) and an unfinished tail of 2 in one call.
    done = torch.tensor([0, 0, 1, 0, 1, 0, 0], dtype=torch.float32)
    reward = torch.tensor([0, 0, 0.7, 0, 0.9, 0, 0])
    buf.add(torch.zeros(7, 1), torch.zeros(7), reward, torch.zeros(7, 1), done, 0)
    b = buf.all()
    assert b["to_go"].tolist() == [2, 1, 0, 1, 0, -1, -1]
    torch.testing.assert_close(b["final_reward"], torch.tensor([0.7, 0.7, 0.7, 0.9, 0.9, 0.0, 0.0]))
    # A checkpoint written before these fields existed loads with unknown returns.
    old = {k: v for k, v in buf.state_dict().items() if k not in ("to_go", "final_reward")}
    other = ReplayBuffer(20, state_dim=1)
    other.load_state_dict(old)
    assert other.all()["to_go"].tolist() == [-1] * 7
