"""MaskPlan: masked forward passes that never touch the weights and still train them."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from jointprune.pruning import ChannelStructure, MaskError, MaskPlan, full_masks

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import BranchyCNN, calibrate_bn, make_model, one_sentence, one_thread  # noqa: E402,F401


def _random_masks(st, seed=0, keep=0.5):
    g = torch.Generator().manual_seed(seed)
    masks = []
    for n in st.sizes:
        m = torch.rand(n, generator=g) < keep
        m[torch.randint(n, (1,), generator=g)] = True  # never all removed
        masks.append(m)
    return masks


@pytest.fixture
def resnet():
    model = calibrate_bn(make_model("cifar_resnet20"), (8, 3, 32, 32))
    return model, ChannelStructure(model, torch.randn(1, 3, 32, 32), prune_coupled=True)


def test_full_masks_and_none_give_the_plain_forward(resnet):
    model, st = resnet
    x = torch.randn(2, 3, 32, 32)
    plan = MaskPlan(st)
    with torch.no_grad():
        dense = model(x)
        assert torch.equal(plan.forward(model, x, None), dense)
        assert torch.allclose(plan.forward(model, x, full_masks(st)), dense, rtol=0, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_masks_do_not_mutate_weights_and_gradients_reach_the_kept_ones(resnet, train):
    model, st = resnet
    model.train(train)
    x = torch.randn(4, 3, 32, 32)
    masks = _random_masks(st)
    before = copy.deepcopy(model.state_dict())
    plan = MaskPlan(st)
    out = plan.forward(model, x, masks)
    out.square().mean().backward()
    params = dict(model.named_parameters())
    # Parameters are untouched; in eval mode the BN buffers are too (train mode updates them,
    # exactly as an unmasked training step would).
    for k, v in model.state_dict().items():
        if k in params or not train:
            assert torch.equal(before[k], v), k
    # Produced slices of removed channels get exactly zero gradient, kept ones (mostly) a non-zero
    # one; every parameter gets a gradient.
    assert all(p.grad is not None for p in params.values())
    for g, m in zip(st.groups, masks):
        for s in g.out_slices:
            grad = params[s.param_name].grad.movedim(s.dim, 0)[s.local_idx].reshape(len(s.local_idx), -1)
            removed = ~m[s.root_idx]
            assert torch.all(grad[removed] == 0), s.param_name
            alive = grad[~removed].abs().sum(1) > 0  # a kept channel can still be dead behind a ReLU
            assert alive.float().mean() >= 0.5, s.param_name
    assert params["fc.weight"].grad.abs().sum() > 0 and params["fc.bias"].grad.abs().sum() > 0


def test_masked_forward_equals_zeroing_the_produced_slices(resnet):
    model, st = resnet
    x = torch.randn(2, 3, 32, 32)
    masks = _random_masks(st, seed=3)
    zeroed = copy.deepcopy(model)
    zparams = dict(zeroed.named_parameters())
    with torch.no_grad():
        for g, m in zip(st.groups, masks):
            for s in g.out_slices:
                sel = s.local_idx[~m[s.root_idx]]
                zparams[s.param_name].index_fill_(s.dim, sel, 0.0)
        for train in (False, True):  # also in train mode: removed channels stay exactly 0 under BN
            model.train(train)
            zeroed.train(train)
            assert torch.allclose(MaskPlan(st).forward(model, x, masks), zeroed(x), rtol=0, atol=1e-5)
    # The gradient the live weights receive is the zeroed network's gradient, except on the
    # removed slices (which get none): training the masked net trains the sub-network.
    MaskPlan(st).forward(model, x, masks).square().mean().backward()
    zeroed(x).square().mean().backward()
    removed_entries = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in zparams.items()}
    for g, m in zip(st.groups, masks):
        for s in g.out_slices:
            removed_entries[s.param_name].index_fill_(s.dim, s.local_idx[~m[s.root_idx]], True)
    for n, p in model.named_parameters():
        keep = ~removed_entries[n]
        assert torch.allclose(p.grad[keep], zparams[n].grad[keep], rtol=1e-4, atol=1e-6), n
        assert torch.all(p.grad[~keep] == 0), n


def test_masked_parameters_only_cover_the_produced_slices():
    model = BranchyCNN()
    st = ChannelStructure(model, torch.randn(1, 3, 16, 16))
    out = MaskPlan(st).masked_parameters(model, _random_masks(st))
    owners = {n.rsplit(".", 1)[0] for n in out}
    assert owners == {"stem.0", "stem.1", "branch_a.0", "branch_a.1", "branch_b.0", "branch_b.1",
                      "mix.0", "mix.1", "dw.0", "dw.1", "pw.0", "pw.1", "grouped.0", "grouped.1",
                      "head_conv.0", "head_conv.1"}
    assert all(v.requires_grad for v in out.values())


@pytest.mark.parametrize("case, match", [
    ("short", r"^expected one mask per prunable group \(9\), got 8\.$"),
    ("long", r"^expected one mask per prunable group \(9\), got 10\.$"),
    ("wrong-size", r"^mask 2 must have shape \(16,\) for group 'layer1\.2\.conv1', got \(17,\)\.$"),
    ("2d", r"^mask 0 must have shape \(16,\) for group 'layer1\.0\.conv1', got \(1, 16\)\.$"),
    ("all-removed", r"^mask 4 removes every channel of group 'layer2\.1\.conv1'; keep at least one\.$"),
])
def test_bad_masks_are_one_sentence(case, match):
    model = make_model("cifar_resnet20")
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32))
    masks = full_masks(st)
    if case == "short":
        masks = masks[:-1]
    elif case == "long":
        masks = masks + [torch.ones(3, dtype=torch.bool)]
    elif case == "wrong-size":
        masks[2] = torch.ones(17, dtype=torch.bool)
    elif case == "2d":
        masks[0] = masks[0][None]
    else:
        masks[4] = torch.zeros(32, dtype=torch.bool)
    plan = MaskPlan(st)
    with pytest.raises(MaskError, match=match) as exc:
        plan.forward(model, torch.randn(1, 3, 32, 32), masks)
    assert one_sentence(str(exc.value))
    with pytest.raises(MaskError, match=match):
        plan.validate(masks)
