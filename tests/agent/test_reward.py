"""The reward scorer: masked accuracy, BN recalibration variants, live statistics untouched."""
import torch
import torch.nn as nn

from jointprune.agent.reward import RewardScorer
from jointprune.pruning import ChannelStructure, MaskPlan, full_masks


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_scores_are_accuracies_and_buffers_survive():
    model = net()
    x, y = torch.randn(40, 3, 8, 8), torch.randint(0, 4, (40,))
    plan = MaskPlan(ChannelStructure(model, x[:1]))
    scorer = RewardScorer(plan, x, y, batch_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = full_masks(plan.structure)
    masks[0][:5] = False
    expected = float((model.eval()(x).argmax(1) == y).float().mean())
    assert scorer(model, None) == expected
    for kwargs in ({}, {"recalibrate": [torch.randn(16, 3, 8, 8)]}, {"batch_stats": True}):
        value = scorer(model, masks, **kwargs)
        assert 0.0 <= value <= 1.0
        for k, v in model.state_dict().items():  # running statistics restored after every variant
            assert torch.equal(v, before[k]), (kwargs, k)
    # batch statistics really change the computation (not silently the running-stats path)
    model.train()
    with torch.no_grad():
        by_batch = float((plan.forward(model, x, masks).argmax(1) == y).float().mean())
    model.load_state_dict(before)
    scorer_one_batch = RewardScorer(plan, x, y, batch_size=64)
    assert scorer_one_batch(model, masks, batch_stats=True) == by_batch


def test_score_returns_the_hits_behind_the_top1():
    model = net()
    x, y = torch.randn(40, 3, 8, 8), torch.randint(0, 4, (40,))
    scorer = RewardScorer(MaskPlan(ChannelStructure(model, x[:1])), x, y, batch_size=16)
    top1, hits = scorer.score(model, None)
    assert hits.dtype == torch.bool and len(hits) == 40
    assert torch.equal(hits, model.eval()(x).argmax(1) == y) and top1 == float(hits.float().mean())


def test_paired_gain_counts_only_the_images_the_two_disagree_on():
    scorer = RewardScorer(None, torch.zeros(1), torch.zeros(1))
    a = torch.zeros(400, dtype=torch.bool)
    a[:200] = True                      # incumbent: 50 % right
    b = a.clone()
    b[200:212] = True                   # contender: the same, plus 12 more right
    gain, se = scorer.paired_gain(a, b)
    assert gain == 11 / 400  # 12 images, less McNemar's continuity correction of one
    assert abs(se - ((12 / 400 - (12 / 400) ** 2) / 400) ** 0.5) < 1e-12
    # the unpaired standard error of one top-1 at 50 % on 400 images is 2.5 points: the gain is
    # barely one of those, but more than three paired standard errors
    assert gain / se > 3.0 and gain < 1.25 * (0.25 / 400) ** 0.5
    # swapped, the gain changes sign; equal hits give no gain and no error
    assert scorer.paired_gain(b, a)[0] == -gain and scorer.paired_gain(a, a) == (0.0, 0.0)
    # under DDP the counts are summed over ranks before the difference is formed
    doubled = RewardScorer(None, torch.zeros(1), torch.zeros(1), all_reduce=lambda t: 2 * t)
    assert doubled.paired_gain(a, b)[0] > gain and doubled.paired_gain(a, b)[1] < se


def test_a_contender_must_win_by_the_paired_margin():
    from jointprune.callbacks.agent_episodes import AgentEpisodes
    scorer = RewardScorer(None, torch.zeros(1), torch.zeros(1))
    a = torch.zeros(400, dtype=torch.bool)
    a[:200] = True
    small, large = a.clone(), a.clone()
    small[200:202] = True               # +2 images: within noise
    large[200:212] = True               # +12 images: a real gain
    cb = AgentEpisodes()
    cb.margin_se = 1.0
    assert cb._beats(scorer, 0.53, large, 0.5, a, 400) and not cb._beats(scorer, 0.505, small, 0.5, a, 400)
    cb.paired = False  # the unpaired margin: one top-1's standard error, 2.5 points here
    assert not cb._beats(scorer, 0.52, large, 0.5, a, 400) and cb._beats(scorer, 0.53, large, 0.5, a, 400)
    assert cb._beats(scorer, 0.1, None, -float("inf"), None, 400)  # no incumbent yet: any score wins


def test_true_prob_scores_the_mean_probability_of_the_true_class():
    model = net()
    x, y = torch.randn(40, 3, 8, 8), torch.randint(0, 4, (40,))
    scorer = RewardScorer(MaskPlan(ChannelStructure(model, x[:1])), x, y, batch_size=16, metric="true_prob")
    value, per_image = scorer.score(model, None)
    with torch.no_grad():
        expected = model.eval()(x).softmax(1)[torch.arange(40), y]
    assert per_image.dtype == torch.float32 and torch.allclose(per_image, expected, atol=1e-6)
    assert abs(value - float(expected.mean())) < 1e-6
    # a smooth counterpart of top-1, not top-1 itself: the random network's top-1 is a multiple of 1/40
    assert abs(value * 40 - round(value * 40)) > 1e-3


def test_paired_gain_of_probabilities_is_the_paired_mean_difference():
    scorer = RewardScorer(None, torch.zeros(1), torch.zeros(1), metric="true_prob")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(300, generator=gen)
    b = (a + 0.02 + 0.01 * torch.randn(300, generator=gen)).clamp(0, 1)
    gain, se = scorer.paired_gain(a, b)
    d = (b - a).double()
    assert abs(gain - float(d.mean())) < 1e-9
    assert abs(se - float(d.std() / 300 ** 0.5)) < 1e-9
    # the pairing removes the images' own spread: far smaller than the unpaired error of a mean
    unpaired = float((a.double().var() / 300 + b.double().var() / 300) ** 0.5)
    assert se < unpaired / 5 and gain / se > 10
    assert scorer.paired_gain(b, a)[0] == -gain and scorer.paired_gain(a, a) == (0.0, 0.0)
    # under DDP the sums are added over ranks first: twice the images, a smaller error
    doubled = RewardScorer(None, torch.zeros(1), torch.zeros(1), metric="true_prob", all_reduce=lambda t: 2 * t)
    g2, se2 = doubled.paired_gain(a, b)
    assert abs(g2 - gain) < 1e-9 and se2 < se


def test_an_unknown_reward_metric_is_refused_with_a_sentence():
    import pytest

    from jointprune.errors import JointPruneError
    from jointprune.module import JointPruneModule
    with pytest.raises(JointPruneError, match=r"model\.reward\.metric='top5' is not a reward; use one of \['top1', 'true_prob'\]"):
        JointPruneModule(net(), flops_budget=0.5, input_shape=(3, 8, 8), num_classes=4, reward={"metric": "top5"})
