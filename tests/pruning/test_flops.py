"""FlopsModel: exact FLOPs of any kept-channel vector, in torch-pruning's counter convention."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp

from jointprune.pruning import extract_subnetwork, full_masks, group_importance, top_k_masks

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import (  # noqa: E402
    BranchyCNN,
    ConvNet,
    calibrate_bn,
    image_size,
    make_model,
    one_thread,  # noqa: F401
    structure_and_flops,
)


def _count(model, x1):
    return tp.utils.count_ops_and_params(model, x1)[0]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenet_v1", "mobilenet_v2", "tv_resnet18"])
@pytest.mark.parametrize("coupled", [False, True])
def test_dense_flops_match_the_counter(name, coupled):
    model = make_model(name).eval()
    s = image_size(name)
    x1 = torch.randn(1, 3, s, s)
    st, fm = structure_and_flops(model, x1, prune_coupled=coupled)
    assert fm.dense == _count(model, x1)
    assert fm(st.sizes) == fm.dense


def test_hand_computed_polynomial():
    # 1x8x8 input. conv1 1->4 3x3 pad1 (+bias), bn1, relu, conv2 4->3 (no bias), bn2, relu, pool, fc 3->2.
    model = ConvNet().eval()
    st, fm = structure_and_flops(model, torch.randn(1, 1, 8, 8))
    hw = 64

    def flops(k1, k2):
        conv1 = 9 * 1 * k1 * hw + k1 * hw           # MACs + bias
        bn1, relu1 = 2 * k1 * hw, k1 * hw           # affine BN counts its input twice
        conv2 = 9 * k1 * k2 * hw
        bn2, relu2 = 2 * k2 * hw, k2 * hw
        pool = k2 * hw                              # pooling counts its input
        fc = k2 * 2 + 2
        return conv1 + bn1 + relu1 + conv2 + bn2 + relu2 + pool + fc

    assert st.sizes == [4, 3]
    for k1 in range(0, 5):
        for k2 in range(0, 4):
            assert fm([k1, k2]) == flops(k1, k2)
    assert fm.dense == flops(4, 3) == _count(model, torch.randn(1, 1, 8, 8))


def test_batched_calls_equal_single_calls_and_flops_grow_with_channels():
    model = make_model("cifar_resnet56").eval()
    st, fm = structure_and_flops(model, torch.randn(1, 3, 32, 32), prune_coupled=True)
    rng = np.random.default_rng(0)
    sizes = np.array(st.sizes)
    k = rng.integers(1, sizes + 1, size=(64, len(sizes))).astype(float)
    batched = fm(k)
    assert batched.shape == (64,)
    assert np.array_equal(batched, np.array([fm(row) for row in k]))
    assert isinstance(fm(k[0]), float)
    # Monotone: one more channel anywhere never lowers the FLOPs (the clipper relies on it).
    for g in range(len(sizes)):
        grown = k.copy()
        grown[:, g] = np.minimum(grown[:, g] + 1, sizes[g])
        assert np.all(fm(grown) >= batched)


def test_group_flops_is_the_cost_of_each_group():
    model = make_model("cifar_resnet20").eval()
    st, fm = structure_and_flops(model, torch.randn(1, 3, 32, 32))
    gf = fm.group_flops()
    assert gf.shape == (len(st),) and np.all(gf > 0)
    sizes = np.array(st.sizes, dtype=float)
    for g in range(len(st)):
        # An inner ResNet channel is produced and consumed by different groups' neighbours only,
        # so FLOPs are affine in its own count: removing all of it costs size x one channel.
        one_less = sizes.copy()
        one_less[g] -= 1
        assert gf[g] == pytest.approx((fm.dense - fm(one_less)) * sizes[g], rel=0, abs=1e-6)
    # Same-shaped blocks of a stage cost the same.
    assert gf[1] == gf[2] and gf[7] == gf[8]


@pytest.mark.parametrize("case", ["branchy", "resnet20-coupled", "mobilenet_v2-coupled"])
def test_random_kept_vectors_match_the_counter_on_the_extracted_network(case):
    # Not only budget-clipped vectors: any kept vector, down to a single channel per group.
    if case == "branchy":
        model, x1 = BranchyCNN(), torch.randn(1, 3, 16, 16)
        kwargs = {}
    else:
        name = case.split("-")[0]
        name = "cifar_resnet20" if name == "resnet20" else "cifar_mobilenet_v2"
        model, x1 = make_model(name), torch.randn(1, 3, 32, 32)
        kwargs = {"prune_coupled": True}
    calibrate_bn(model, (4, *x1.shape[1:]))
    st, fm = structure_and_flops(model, x1, **kwargs)
    scores = group_importance(model, st, "l1")
    rng = np.random.default_rng(1)
    sizes = np.array(st.sizes)
    # Groups tied to a grouped conv keep multiples of its conv-group count (one per conv group at least).
    step = np.array([g.multiple for g in st.groups])
    vectors = [step, sizes - step] + [rng.integers(1, sizes // step + 1) * step for _ in range(3)]
    for kept in vectors:
        small = extract_subnetwork(model, st, top_k_masks(scores, kept.tolist()))
        assert fm(kept) == _count(small, x1)
    assert _count(extract_subnetwork(model, st, full_masks(st)), x1) == fm.dense


def test_flops_model_leaves_the_model_untouched():
    model = make_model("cifar_resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure_and_flops(model, torch.randn(1, 3, 32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
