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
