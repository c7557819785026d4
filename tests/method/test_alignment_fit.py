"""The alignment and the incumbent in a real (tiny) run: removed mass, the cut, confirmation."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from jointprune.agent.reward import RewardScorer
from jointprune.callbacks.agent_episodes import AgentEpisodes
from jointprune.data import DigitsDataModule
from jointprune.options import AlignmentOptions, RewardOptions

sys.path.insert(0, str(Path(__file__).parent))
from test_fit import small_run  # noqa: E402


def test_cut_report_and_removed_mass_every_epoch(tmp_path):
    model, trainer, _ = small_run(tmp_path, max_epochs=5,
                                  reward=RewardOptions(max_samples=32, confirm_samples=32),
                                  alignment=AlignmentOptions(weight=1e-3))
    dm = DigitsDataModule(resize=16, batch_size=128, reward_size=64, val_size=0)  # validation on the test split
    trainer.fit(model, dm)
    report = json.loads((tmp_path / "export" / "pruned.json").read_text())
    assert 0.0 <= report["removed_mass_at_cut"] < 1.0
    assert 0.0 <= report["top1_before_cut"] <= 1.0 and 0.0 <= report["top1_after_cut"] <= 1.0
    # no val split is carved here, so one pass over the test split gives both figures
    assert dm.val_is_test
    assert report["dense_test_acc_at_extraction"] == report["top1_before_cut"]
    assert report["pruned_test_acc_at_extraction"] == report["top1_after_cut"]
    assert all(0.0 <= h["removed_mass"] <= 1.0 for h in report["history"])
    assert all(h["contenders_confirmed"] in (0.0, 1.0) for h in report["history"])
    # the learned epoch searched near the incumbent with refine_fraction of its episodes (3 x 0.5 -> 1)
    assert any(not h["random_actions"] for h in report["history"])
    assert [h["refine_episodes"] for h in report["history"]] == \
        [0.0 if h["random_actions"] else 1.0 for h in report["history"]]
    assert trainer.callback_metrics["prune/removed_mass"].item() == 0.0  # after the cut nothing is left


class _FixedScorer(RewardScorer):
    """Scores by kept count: a stand-in for top-1 on 100 confirmation images, where the better
    network is right on every image the worse one is (`nested`), or on other images."""

    def __init__(self, by_kept, nested=True, n=100):
        self.by_kept, self.calls, self.nested, self.n, self.all_reduce = by_kept, 0, nested, n, None

    def score(self, model, masks, recal=None, batch_stats=False):
        self.calls += 1
        top1 = self.by_kept[int(sum(int(m.sum()) for m in masks))]
        right = round(top1 * self.n)
        hits = torch.zeros(self.n, dtype=torch.bool)
        if self.nested or self.calls % 2:
            hits[:right] = True
        else:
            hits[self.n - right:] = True
        return top1, hits


def _pm(kept):
    return SimpleNamespace(cnn=None, incumbent_kept=[kept], incumbent_reward=0.5,
                           incumbent_masks=[torch.arange(4) < kept])


def test_contender_lucky_on_screening_is_rejected_on_confirmation():
    cb = AgentEpisodes()
    cb.confirmer = _FixedScorer({2: 0.80, 3: 0.70})  # the incumbent (2 kept) is better
    pm = _pm(2)
    lucky = (0.99, [3], [torch.arange(4) < 3])  # screened far above the incumbent
    assert cb._accept(pm, [lucky], None, False) == 1
    assert pm.incumbent_kept == [2] and pm.incumbent_reward == 0.80
    cb.confirmer = _FixedScorer({2: 0.80, 3: 0.85})  # a real improvement is accepted
    assert cb._accept(pm, [lucky], None, False) == 1
    assert pm.incumbent_kept == [3] and pm.incumbent_reward == 0.85
    assert cb._accept(pm, [], None, False) == 0  # nothing beat the incumbent: nothing re-scored


def test_contender_must_win_by_the_margin():
    cb = AgentEpisodes()
    cb.paired = False  # the unpaired rule: the standard error of one top-1
    cb.margin_se, cb.confirm_n = 1.0, 100  # se of a top-1 of 0.80 on 100 images: 0.04
    pm = _pm(2)
    contender = (0.99, [3], [torch.arange(4) < 3])
    cb.confirmer = _FixedScorer({2: 0.80, 3: 0.83})  # better, but within one standard error
    cb._accept(pm, [contender], None, False)
    assert pm.incumbent_kept == [2]
    cb.confirmer = _FixedScorer({2: 0.80, 3: 0.86})  # clearly better
    cb._accept(pm, [contender], None, False)
    assert pm.incumbent_kept == [3]
    assert cb._margin(0.8, 0) == 0.0 and cb._margin(-float("inf"), 100) == 0.0


def test_paired_margin_tells_apart_networks_that_differ_on_few_images():
    cb = AgentEpisodes()
    cb.margin_se, cb.confirm_n = 1.0, 100
    contender = (0.99, [3], [torch.arange(4) < 3])
    pm = _pm(2)
    # right on the incumbent's 80 images and 3 more: 3 to 0, two paired standard errors less
    # the continuity correction (the unpaired rule above rejects the same 0.83)
    cb.confirmer = _FixedScorer({2: 0.80, 3: 0.83})
    cb._accept(pm, [contender], None, False)
    assert pm.incumbent_kept == [3]
    pm = _pm(2)
    # the same top-1s, but the two disagree on 37 images (17 to 20): no evidence either way
    cb.confirmer = _FixedScorer({2: 0.80, 3: 0.83}, nested=False)
    cb._accept(pm, [contender], None, False)
    assert pm.incumbent_kept == [2]


def test_search_starts_from_the_uniform_allocation(tmp_path):
    """With a margin no contender can clear, the incumbent stays the uniform prior; with
    initial_incumbent 'none' the first episodes decide."""
    from jointprune.options import AgentOptions
    agent = dict(episodes_per_epoch=3, sac_updates=8, batch_size=16, random_epochs=1)
    model, trainer, dm = small_run(tmp_path, reward=RewardOptions(accept_margin_se=1e9),
                                   agent=AgentOptions(**agent, initial_incumbent="uniform"))
    uniform = model.environment.uniform_under_budget()
    trainer.fit(model, dm)
    assert model.incumbent_kept == uniform
    assert [int(m.sum()) for m in model.incumbent_masks] == uniform


def test_negative_margin_is_refused(tmp_path):
    model, trainer, dm = small_run(tmp_path, reward=RewardOptions(accept_margin_se=-1.0))
    import pytest
    from jointprune.errors import JointPruneError
    with pytest.raises(JointPruneError, match="accept_margin_se=-1.0 must be >= 0"):
        trainer.fit(model, dm)


def test_a_run_rewarded_by_the_true_class_probability(tmp_path):
    """reward.metric: true_prob reaches the agent: every episode's reward is a mean of
    probabilities over the 64 reward images, not a count of hits, and the run ends in budget."""
    model, trainer, dm = small_run(tmp_path, reward=RewardOptions(metric="true_prob"))
    trainer.fit(model, dm)
    rewards = [float(r) for r in model.replay.reward[:len(model.replay)] if float(r) != 0.0]  # the last step is scored
    assert len(rewards) >= 6 and all(0.0 < r < 1.0 for r in rewards)
    assert any(abs(r * 64 - round(r * 64)) > 1e-3 for r in rewards)
    report = json.loads((tmp_path / "export" / "pruned.json").read_text())
    assert report["pruned_flops"] <= 0.5 * report["dense_flops"]
