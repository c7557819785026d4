"""Channel importance (l1, l2, bn_scale) and top-k keep-masks."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jointprune.pruning import (
    CRITERIA,
    BudgetClipper,
    ChannelStructure,
    FlopsModel,
    KeepRule,
    group_importance,
    top_k_masks,
)

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import AddNet, ConvNet, make_model, one_sentence, one_thread, random_episode  # noqa: E402,F401


def _hand_set_convnet():
    """conv1 has 3 filters chosen so that l1, l2 and bn_scale each rank a different channel first.

    ch0: one weight 2.5        -> l1 2.5, l2 6.25
    ch1: nine weights 0.5      -> l1 4.5, l2 2.25
    ch2: nine weights -0.1     -> l1 0.9, l2 0.09
    bn1 gamma = (0.1, -0.2, 3.0): |gamma| ranks ch2 first.
    """
    model = ConvNet(cin=1, c1=3, c2=4).eval()
    with torch.no_grad():
        w = torch.zeros(3, 1, 3, 3)
        w[0, 0, 1, 1] = 2.5
        w[1] = 0.5
        w[2] = -0.1
        model.conv1.weight.copy_(w)
        model.conv1.bias.fill_(7.0)  # biases are not filters: they must not change the ranking
        model.bn1.weight.copy_(torch.tensor([0.1, -0.2, 3.0]))
    return model, ChannelStructure(model, torch.randn(1, 1, 8, 8))


def test_criteria_pick_the_expected_channels():
    model, st = _hand_set_convnet()
    scores = {c: group_importance(model, st, c)[0] for c in CRITERIA}
    assert torch.allclose(scores["l1"], torch.tensor([2.5, 4.5, 0.9]))
    assert torch.allclose(scores["l2"], torch.tensor([6.25, 2.25, 0.09]))
    assert torch.allclose(scores["bn_scale"], torch.tensor([0.1, 0.2, 3.0]))
    expected_top1 = {"l1": 1, "l2": 0, "bn_scale": 2}
    expected_top2 = {"l1": [0, 1], "l2": [0, 1], "bn_scale": [1, 2]}
    for c in CRITERIA:
        (top1,) = top_k_masks([scores[c]], [1])
        assert top1.nonzero().flatten().tolist() == [expected_top1[c]], c
        (top2,) = top_k_masks([scores[c]], [2])
        assert top2.nonzero().flatten().tolist() == expected_top2[c], c
    assert group_importance(model, st)[0].equal(scores["l1"])  # l1 is the default


def test_scores_sum_over_every_producer_of_a_coupled_group():
    model = AddNet()
    st = ChannelStructure(model, torch.randn(1, 1, 8, 8), prune_coupled=True)
    (score,) = group_importance(model, st, "l1")
    expected = model.a.weight.abs().flatten(1).sum(1) + model.b.weight.abs().flatten(1).sum(1)
    assert torch.allclose(score, expected)
    # No BN in the group: bn_scale falls back to the filters.
    assert torch.allclose(group_importance(model, st, "bn_scale")[0], expected)


def test_scores_have_one_entry_per_channel_and_no_gradient():
    model = make_model("cifar_mobilenet_v2")
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32), prune_coupled=True)
    for c in CRITERIA:
        scores = group_importance(model, st, c)
        assert [s.shape for s in scores] == [(n,) for n in st.sizes]
        assert all(not s.requires_grad and bool(torch.all(s >= 0)) for s in scores)


def test_unknown_criterion_is_one_sentence():
    model, st = _hand_set_convnet()
    with pytest.raises(ValueError, match=r"^importance must be one of l1, l2, bn_scale, got 'taylor'\.$") as exc:
        group_importance(model, st, "taylor")
    assert one_sentence(str(exc.value))


@pytest.mark.parametrize("rule", [KeepRule(min_channels=6), KeepRule(round_to=8), KeepRule(min_channels=10, round_to=4)],
                         ids=["min6", "round8", "min10-round4"])
def test_min_channels_and_round_to_reach_the_masks(rule):
    model = make_model("cifar_resnet56")
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32))
    fm = FlopsModel(st)
    rng = np.random.default_rng(0)
    scores = group_importance(model, st, "l2")
    for budget in (0.55, 0.7):
        for _ in range(3):
            kept = random_episode(BudgetClipper(fm, budget, rule), rng)
            masks = top_k_masks(scores, kept)
            for m, k, n, s in zip(masks, kept, st.sizes, scores):
                assert int(m.sum()) == k >= min(rule.min_channels, n)
                assert k % rule.round_to == 0 or k == n
                # The kept channels are the top-k: none removed scores above a kept one.
                if k < n:
                    assert s[m].min() >= s[~m].max()


def test_grouped_conv_groups_keep_the_top_k_of_each_conv_group():
    from pruning_helpers import BranchyCNN
    model = BranchyCNN()
    st = ChannelStructure(model, torch.randn(1, 3, 16, 16))
    scores = group_importance(model, st, "l1")
    pw = next(g for g in st.groups if g.name == "pw.0")
    assert pw.multiple == 2 and scores[pw.index].shape == (2, 8)  # one row per conv group
    # Make conv group 0's best channels all sit in its first half, conv group 1's in its second.
    scores[pw.index] = torch.tensor([[8., 7, 6, 5, 1, 1, 1, 1], [1., 1, 1, 1, 5, 6, 7, 8]])
    kept = [g.size for g in st.groups]
    kept[pw.index] = 8
    mask = top_k_masks(scores, kept)[pw.index]
    assert mask.tolist() == [True] * 4 + [False] * 4 + [False] * 4 + [True] * 4
    kept[pw.index] = 7
    with pytest.raises(ValueError, match="must be a multiple of 2, got 7"):
        top_k_masks(scores, kept)
