"""ChannelStructure: which channel groups a CNN offers, in which order, with which slices."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from jointprune.pruning import ChannelStructure, FlopsModel, MaskPlan, StructureError, extract_subnetwork, full_masks

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import AddNet, BranchyCNN, ConvNet, image_size, make_model, one_sentence, one_thread  # noqa: E402,F401


def _owners(group, which="out_slices"):
    return {s.param_name.rsplit(".", 1)[0] for s in getattr(group, which)}


def test_resnet_groups_default_and_coupled():
    model = make_model("cifar_resnet20")
    x = torch.randn(1, 3, 32, 32)
    st = ChannelStructure(model, x)
    # Default: only the inner channel of each of the 9 BasicBlocks, in forward order.
    assert [g.name for g in st.groups] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert st.sizes == [16] * 3 + [32] * 3 + [64] * 3 and len(st) == 9
    assert not any(g.residual for g in st.groups)
    assert [g.index for g in st.groups] == list(range(9))
    g = st.groups[3]  # layer2.0.conv1: 16 -> 32, 3x3, stride 2
    assert (g.in_channels, g.kernel_size, g.stride) == (16, 3, 2)
    assert _owners(g) == {"layer2.0.conv1", "layer2.0.bn1"}
    assert _owners(g, "in_slices") == {"layer2.0.conv2"}
    assert _owners(g, "filter_slices") == {"layer2.0.conv1"} and _owners(g, "bn_slices") == {"layer2.0.bn1"}

    coupled = ChannelStructure(model, x, prune_coupled=True)
    residual = [g for g in coupled.groups if g.residual]
    assert len(coupled) == 12 and len(residual) == 3  # one residual stream per stage
    stream1 = residual[0]
    assert stream1.index == 0 and stream1.size == 16 and stream1.in_channels == 3
    # Every producer feeding the stage-1 add is in the one group: the stem and each block's conv2.
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= _owners(stream1)
    # The classifier's inputs are consumers of the last stream; its outputs are never a group.
    assert "fc" in _owners(residual[-1], "in_slices")


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenet_v2", "mobilenet_v1", "tv_resnet18"])
@pytest.mark.parametrize("coupled", [False, True])
def test_input_and_classifier_never_pruned_and_slices_are_consistent(name, coupled):
    model = make_model(name)
    s = image_size(name)
    st = ChannelStructure(model, torch.randn(1, 3, s, s), prune_coupled=coupled)
    params = dict(model.named_parameters())
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    for g in st.groups:
        assert g.size >= 2
        assert g.filter_slices and set(map(id, g.filter_slices)) <= set(map(id, g.out_slices))
        for s_ in g.out_slices:
            assert s_.param_name != f"{classifier}.weight" and s_.param_name != f"{classifier}.bias"
        for s_ in g.in_slices:
            assert s_.param_name != f"{first_conv}.weight"  # the image channels stay
        for s_ in g.out_slices + g.in_slices:
            p = params[s_.param_name]
            assert s_.local_idx.shape == s_.root_idx.shape
            assert int(s_.local_idx.max()) < p.shape[s_.dim] and int(s_.root_idx.max()) < g.size
        # Every channel of the group has a producing filter.
        covered = torch.cat([s_.root_idx for s_ in g.filter_slices]).unique()
        assert covered.tolist() == list(range(g.size))
    assert len({g.name for g in st.groups}) == len(st)


def test_user_cnn_with_concat_depthwise_and_grouped_conv():
    model = BranchyCNN()
    st = ChannelStructure(model, torch.randn(1, 3, 16, 16))
    owners = [_owners(g) for g in st.groups]
    # stem, branch a, branch b, mix(+its depthwise conv), pw (feeds the grouped conv), the grouped
    # conv's own outputs, head conv.
    assert st.sizes == [8, 6, 10, 12, 16, 16, 10]
    assert owners[0] == {"stem.0", "stem.1"}
    assert owners[1] == {"branch_a.0", "branch_a.1"}
    assert owners[2] == {"branch_b.0", "branch_b.1"}
    assert owners[3] == {"mix.0", "mix.1", "dw.0", "dw.1"}
    # A grouped conv's input channels are no plain slice of its weight: the group has none there.
    assert owners[4] == {"pw.0", "pw.1"} and _owners(st.groups[4], "in_slices") == set()
    assert owners[5] == {"grouped.0", "grouped.1"} and _owners(st.groups[5], "in_slices") == {"head_conv.0"}
    assert owners[6] == {"head_conv.0", "head_conv.1"}
    # groups=2: the channels on either side of the grouped conv go in two equal halves.
    assert [g.multiple for g in st.groups] == [1, 1, 1, 1, 2, 2, 1]
    assert _owners(st.groups[3], "in_slices") == {"pw.0"}
    # The mix group's state features come from the pointwise conv, not the depthwise one.
    assert (st.groups[3].in_channels, st.groups[3].kernel_size) == (16, 1)
    # Concatenation: branch b's channels are mix's input columns 6..15.
    (col_b,) = st.groups[2].in_slices
    assert col_b.param_name == "mix.0.weight" and col_b.local_idx.tolist() == list(range(6, 16))
    # Flatten after a 2x2 pool: each head channel is four classifier inputs.
    (fc_in,) = st.groups[6].in_slices
    assert fc_in.param_name == "fc.weight" and len(fc_in.local_idx) == 40
    assert torch.bincount(fc_in.root_idx).tolist() == [4] * 10
    assert st.dense_reasons == []


class ConcatIntoGroupedConv(nn.Module):
    """Two branches concatenated into a grouped conv (groups=2): branch a fills conv group 0 and
    half of conv group 1, so neither branch alone can lose channels equally from both."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.grouped(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(self.head(torch.relu(x)).mean((2, 3)))


def test_concat_into_grouped_conv_stays_dense_with_a_sentence(caplog):
    with caplog.at_level("WARNING", logger="jointprune"):
        st = ChannelStructure(ConcatIntoGroupedConv(), torch.randn(1, 3, 8, 8))
    assert [g.name for g in st.groups] == ["grouped", "head"] and [g.multiple for g in st.groups] == [2, 1]
    (reason,) = st.dense_reasons
    assert "'a'" in reason and "'b'" in reason and "grouped conv" in reason and one_sentence(reason)
    assert reason in caplog.text


class LinearOn4D(nn.Module):
    """A pointwise MLP applied channels-last with nn.Linear (AddmmBackward0, not a residual add)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        x = self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean((1, 2)))


def test_linear_on_4d_input_is_not_a_residual():
    st = ChannelStructure(LinearOn4D(), torch.randn(1, 3, 6, 6))
    assert [g.name for g in st.groups] == ["conv", "fc1", "fc2"] and not any(g.residual for g in st.groups)


class LayerNormBlock(nn.Module):
    """conv -> LayerNorm over the channels (channels-last) -> linear: the LN's channels stay dense."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))
        return self.fc2(torch.relu(self.fc1(x)).mean((1, 2)))


def test_layernorm_channels_stay_dense_with_a_sentence():
    st = ChannelStructure(LayerNormBlock(), torch.randn(1, 3, 6, 6))
    assert [g.name for g in st.groups] == ["fc1"]
    (reason,) = st.dense_reasons
    assert "'conv'" in reason and "LayerNorm" in reason and one_sentence(reason)


def test_structure_restores_training_mode_and_leaves_weights_alone():
    model = ConvNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ChannelStructure(model, torch.randn(1, 1, 8, 8))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    ChannelStructure(model, torch.randn(1, 1, 8, 8))
    assert not model.training


@pytest.mark.parametrize("model, shape", [
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (1, 3, 2, 2)),                    # no conv at all
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), (1, 3, 8, 8)),  # no consumer
    (nn.Sequential(nn.Conv2d(3, 1, 3), nn.Flatten(), nn.Linear(36, 2)), (1, 3, 8, 8)),  # one channel only
], ids=["linear-only", "conv-only", "single-channel"])
def test_model_without_prunable_group_is_one_sentence(model, shape):
    with pytest.raises(StructureError, match=r"has no prunable channel group: jointprune needs at least one conv") as exc:
        ChannelStructure(model, torch.randn(shape))
    assert one_sentence(str(exc.value))


def test_residual_only_model_needs_prune_coupled():
    model = AddNet()
    with pytest.raises(StructureError, match=r"residual-coupled groups are skipped unless prune_coupled=True") as exc:
        ChannelStructure(model, torch.randn(1, 1, 8, 8))
    assert one_sentence(str(exc.value))
    st = ChannelStructure(model, torch.randn(1, 1, 8, 8), prune_coupled=True)
    assert len(st) == 1 and st.groups[0].residual and _owners(st.groups[0]) == {"a", "b"}


class ShuffleNetLike(nn.Module):
    """ShuffleNetV2's unit: split, a conv branch, concat, channel shuffle (view-transpose-view)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(4, 6, 1)
        self.project = nn.Conv2d(6, 4, 1)
        self.head = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.project(torch.relu(self.expand(b)))], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


def test_channel_shuffle_leaves_the_groups_torch_pruning_mismaps_dense_and_says_so(caplog):
    """torch-pruning maps this unit's channels through chunk + shuffle wrongly (silently): the FLOPs
    model's probe, which cuts each group and compares with the masked network, catches it."""
    model = ShuffleNetLike().eval()
    x = torch.randn(2, 3, 8, 8)
    st = ChannelStructure(model, x[:1])
    with caplog.at_level("WARNING", logger="jointprune"):
        fm = FlopsModel(st)
    assert [g.name for g in st.groups] == ["expand", "head"] and fm.sizes.tolist() == [6, 8]
    (reason,) = st.dense_reasons
    assert "'project'" in reason and "stay dense" in reason and one_sentence(reason) and reason in caplog.text
    masks = full_masks(st)
    masks[0][1] = masks[1][3] = False
    with torch.no_grad():
        assert torch.allclose(MaskPlan(st).forward(model, x, masks), extract_subnetwork(model, st, masks)(x), atol=1e-6)
