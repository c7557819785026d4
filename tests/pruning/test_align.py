"""AlignmentRegularizer: a norm of exactly the weights the incumbent sub-network would remove."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

from jointprune.pruning import AlignmentRegularizer, ChannelStructure, full_masks

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import BranchyCNN, ConvNet, calibrate_bn, make_model, one_thread  # noqa: E402,F401

OPTIONS = [dict(per_channel=pc, squared=sq, include_bn=bn)
           for pc, sq, bn in itertools.product((True, False), (False, True), (False, True))]


def _convnet():
    model = calibrate_bn(ConvNet(cin=2, c1=4, c2=3), (4, 2, 8, 8))
    return model, ChannelStructure(model, torch.randn(1, 2, 8, 8))


def _hand_value(model, masks, per_channel, squared, include_bn):
    """The penalty written out for ConvNet's two groups, channel by channel."""
    m = model
    per_group = []
    for g, mask in enumerate(masks):
        channel_sq = []
        for c in (~mask).nonzero().flatten().tolist():
            if g == 0:
                sq = m.conv1.weight[c].pow(2).sum() + m.conv1.bias[c] ** 2 + m.conv2.weight[:, c].pow(2).sum()
                bn = m.bn1
            else:
                sq = m.conv2.weight[c].pow(2).sum() + m.fc.weight[:, c].pow(2).sum()
                bn = m.bn2
            if include_bn:
                sq = sq + bn.weight[c] ** 2 + bn.bias[c] ** 2
            channel_sq.append(sq)
        per_group.append(torch.stack(channel_sq) if channel_sq else torch.zeros(0))
    if squared:
        return sum(s.sum() for s in per_group)
    if per_channel:
        return sum(s.sqrt().sum() for s in per_group)
    return sum(s.sum().sqrt() for s in per_group if len(s))


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_value_matches_the_hand_written_penalty(opts):
    model, st = _convnet()
    reg = AlignmentRegularizer(st, **opts)
    for masks in ([torch.tensor([True, False, True, False]), torch.tensor([False, True, True])],
                  [torch.tensor([True, True, True, False]), torch.ones(3, dtype=torch.bool)]):
        assert torch.allclose(reg(model, masks), _hand_value(model, masks, **opts), rtol=1e-5, atol=0)


def test_zero_when_nothing_is_removed_and_positive_otherwise():
    model = calibrate_bn(make_model("cifar_resnet20"), (4, 3, 32, 32))
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32), prune_coupled=True)
    for opts in OPTIONS:
        reg = AlignmentRegularizer(st, **opts)
        assert reg(model, None).item() == 0.0
        zero = reg(model, full_masks(st))
        assert zero.item() == 0.0
        masks = full_masks(st)
        masks[5][3] = False
        assert reg(model, masks).item() > 0.0


def test_option_combinations_order_as_expected():
    # Per-channel group lasso sums norms, per-group takes one norm of all removed channels:
    # sum_c ||w_c|| >= sqrt(sum_c ||w_c||^2), equal only with one removed channel per group;
    # the squared variant is the per-group norm squared (summed over groups).
    model = calibrate_bn(make_model("cifar_resnet20"), (4, 3, 32, 32))
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32))
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(n, generator=g) < 0.5 for n in st.sizes]
    for m in masks:
        m[0] = True
    for bn in (False, True):
        per_channel = AlignmentRegularizer(st, per_channel=True, include_bn=bn)(model, masks)
        per_group = AlignmentRegularizer(st, per_channel=False, include_bn=bn)(model, masks)
        squared = AlignmentRegularizer(st, squared=True, include_bn=bn)(model, masks)
        assert per_channel > per_group > 0
        assert squared.item() == pytest.approx(sum(
            AlignmentRegularizer(st, squared=True, include_bn=bn)(model, [m if i == j else torch.ones_like(m)
                                                                          for i, m in enumerate(masks)]).item()
            for j in range(len(masks))), rel=1e-5)
        one = [torch.ones_like(m) for m in masks]
        one[2][1] = False  # a single removed channel: all three forms agree up to the square
        a = AlignmentRegularizer(st, per_channel=True, include_bn=bn)(model, one)
        b = AlignmentRegularizer(st, per_channel=False, include_bn=bn)(model, one)
        c = AlignmentRegularizer(st, squared=True, include_bn=bn)(model, one)
        assert a.item() == pytest.approx(b.item(), rel=1e-6) and c.item() == pytest.approx(a.item() ** 2, rel=1e-5)
    with_bn = AlignmentRegularizer(st, include_bn=True)(model, masks)
    assert with_bn > AlignmentRegularizer(st, include_bn=False)(model, masks)


@pytest.mark.parametrize("case", ["resnet20-coupled", "branchy"])
@pytest.mark.parametrize("include_bn", [False, True])
def test_gradient_only_on_the_removed_slices(case, include_bn):
    if case == "branchy":
        model, x1, kwargs = BranchyCNN(), torch.randn(1, 3, 16, 16), {}
    else:
        model, x1, kwargs = make_model("cifar_resnet20"), torch.randn(1, 3, 32, 32), {"prune_coupled": True}
    calibrate_bn(model, (4, *x1.shape[1:]))
    st = ChannelStructure(model, x1, **kwargs)
    g = torch.Generator().manual_seed(1)
    masks = [torch.rand(n, generator=g) < 0.6 for n in st.sizes]
    for m in masks:
        m[0] = True
    params = dict(model.named_parameters())
    bn_owners = {n for n, mod in model.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    expected = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    for group, mask in zip(st.groups, masks):
        for s in group.out_slices + group.in_slices:
            if include_bn or s.param_name.rsplit(".", 1)[0] not in bn_owners:
                expected[s.param_name].index_fill_(s.dim, s.local_idx[~mask[s.root_idx]], True)
    for opts in (dict(per_channel=True), dict(per_channel=False), dict(squared=True)):
        model.zero_grad(set_to_none=True)
        AlignmentRegularizer(st, include_bn=include_bn, **opts)(model, masks).backward()
        touched = 0
        for n, p in params.items():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            assert torch.all(grad[~expected[n]] == 0), n
            # d||w||/dw = w/||w||: non-zero wherever the removed weight is.
            assert torch.equal(grad[expected[n]] != 0, p.detach()[expected[n]] != 0), n
            touched += int(expected[n].any())
        assert touched > 0
        if case == "branchy":  # branch b's removed channels are mix's input columns 6.. (concat offset)
            removed_b = (~masks[2]).nonzero().flatten() + 6
            assert torch.all(params["mix.0.weight"].grad[:, removed_b] != 0)


def test_descent_on_the_penalty_shrinks_only_the_removed_weights():
    model, st = _convnet()
    masks = [torch.tensor([True, False, True, False]), torch.tensor([False, True, True])]
    reg = AlignmentRegularizer(st)
    kept_before = model.conv1.weight[[0, 2]].detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = reg(model, masks).item()
    for _ in range(20):
        opt.zero_grad()
        reg(model, masks).backward()
        opt.step()
    assert reg(model, masks).item() < 0.5 * start
    assert torch.equal(model.conv1.weight[[0, 2]], kept_before)


# ---------------------------------------------------------------- the lean step (add_grad_)
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from jointprune.pruning.align import deadline_weights, removed_mass  # noqa: E402

SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "item"}


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.total = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        self.syncs += str(func.overloadpacket).split(".")[-1] in SYNC_OPS
        return func(*args, **(kwargs or {}))


def _random_masks(st, seed=1, keep=0.6):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(n, generator=g) < keep for n in st.sizes]
    for m in masks:
        m[0] = True
    return masks


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_add_grad_matches_autograd(opts):
    model = calibrate_bn(make_model("cifar_resnet20"), (4, 3, 32, 32))
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32), prune_coupled=True)
    masks = _random_masks(st)
    reg = AlignmentRegularizer(st, weight=0.3, **opts)
    reg.set_group_weights(torch.linspace(0.1, 2.0, len(st)))  # lambda per group reaches the gradient
    model.zero_grad(set_to_none=True)
    reg(model, masks).backward()
    expected = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    base = {n: torch.randn_like(p) for n, p in model.named_parameters()}  # add_grad_ adds to what backward left
    for n, p in model.named_parameters():
        p.grad = base[n].clone()
    value = reg.add_grad_(model, masks)
    assert value.item() == pytest.approx(reg(model, masks).item(), rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad - base[n], expected[n], rtol=1e-4, atol=1e-5), n


def test_add_grad_has_no_host_sync_and_few_ops():
    """The alignment's share of a training step: no sync, at most 15 % of a dense step's ops."""
    torch.manual_seed(0)
    model = make_model("cifar_resnet20", num_classes=10)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    st = ChannelStructure(model, x[:1])
    masks = _random_masks(st)
    reg = AlignmentRegularizer(st, weight=1e-3)  # the defaults: per-group norm, BN included
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(align):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if align:
            reg.add_grad_(model, masks)
        opt.step()

    step(True)  # builds the index tensors once (a mask change), then steps reuse them
    counts = {}
    for align in (False, True):
        with _Ops() as ops:
            step(align)
        counts[align] = ops
    assert counts[True].syncs == 0 and counts[False].syncs == 0
    assert counts[True].total - counts[False].total <= 0.15 * counts[False].total
    with _Ops() as alone:
        reg.add_grad_(model, masks)
    assert alone.syncs == 0 and alone.total < 25


def test_index_tensors_built_once_per_mask_change():
    model, st = _convnet()
    reg = AlignmentRegularizer(st)
    masks = [torch.tensor([True, False, True, False]), torch.tensor([False, True, True])]
    reg.add_grad_(model, masks)
    plan = reg._plan
    reg.add_grad_(model, masks)
    assert reg._plan is plan
    reg.add_grad_(model, [m.clone() for m in masks])
    assert reg._plan is not plan


def test_removed_mass_share_and_no_division_by_zero():
    model, st = _convnet()
    assert removed_mass(model, st, full_masks(st)).item() == 0.0
    assert removed_mass(model, st, None).item() == 0.0
    masks = [torch.tensor([True, False, True, False]), torch.tensor([False, True, True])]
    share = removed_mass(model, st, masks).item()
    assert 0.0 < share < 1.0
    with torch.no_grad():  # empty the removed channels' filters, biases and BN: the share is 0
        model.conv1.weight[[1, 3]] = 0
        model.conv1.bias[[1, 3]] = 0
        model.bn1.weight[[1, 3]] = 0
        model.bn1.bias[[1, 3]] = 0
        model.conv2.weight[0] = 0
        model.bn2.weight[0] = 0
        model.bn2.bias[0] = 0
    assert removed_mass(model, st, masks).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert removed_mass(model, st, masks).item() == 0.0  # an all-zero network: 0, not NaN


def test_deadline_weights_empty_the_group_by_the_deadline():
    norms = torch.tensor([0.0, 1.0, 4.0])
    lam = deadline_weights(norms, base=1e-4, lr=0.1, momentum=0.9, steps_left=100, empty_by=0.5)
    assert lam[0].item() == pytest.approx(1e-4)  # nothing left to pull: the floor
    assert (0.1 * lam[1:] * 50).tolist() == pytest.approx([1.0, 4.0])  # proximal: lr * lambda per step
    grad = deadline_weights(norms, base=1e-4, lr=0.1, momentum=0.9, steps_left=100, empty_by=0.5, proximal=False)
    # through momentum, from rest: 50 steps travel (50 - 0.9 (1 - 0.9^50) / 0.1) / 0.1 lr * lambda
    travel = (50 - 0.9 * (1 - 0.9 ** 50) / 0.1) / 0.1
    assert (0.1 * grad[1:] * travel).tolist() == pytest.approx([1.0, 4.0])


def test_lean_pull_with_deadline_weights_empties_the_removed_slices():
    """SGD with momentum and the deadline lambda drives the removed norm to ~0 within the steps."""
    model, st = _convnet()
    masks = [torch.tensor([True, False, True, False]), torch.tensor([False, True, True])]
    reg = AlignmentRegularizer(st, weight=1e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = reg.group_norms(model, masks)
    reg.set_group_weights(deadline_weights(start, base=1e-4, lr=0.05, momentum=0.9, steps_left=200, empty_by=0.5,
                                           proximal=False))
    kept = model.conv1.weight[[0, 2]].detach().clone()
    for _ in range(200):
        opt.zero_grad(set_to_none=True)
        reg.add_grad_(model, masks)
        opt.step()
    assert (reg.group_norms(model, masks) < 0.05 * start).all()
    assert torch.equal(model.conv1.weight[[0, 2]], kept)


@pytest.mark.parametrize("opts", [dict(), dict(per_channel=True), dict(squared=True)], ids=str)
def test_proximal_step_empties_only_the_removed_slices_without_sync(opts):
    model = calibrate_bn(make_model("cifar_resnet20"), (4, 3, 32, 32))
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32), prune_coupled=True)
    masks = _random_masks(st)
    reg = AlignmentRegularizer(st, weight=1e-3, **opts)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reg.prox_(model, masks, lr=0.1)  # builds the index tensors
    with _Ops() as ops:
        reg.prox_(model, masks, lr=0.1)
    assert ops.syncs == 0
    assert opts.get("per_channel") or ops.total < 40  # per channel: one reduction per slice
    removed = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for group, mask in zip(st.groups, masks):
        for s in group.out_slices + group.in_slices:
            removed[s.param_name].index_fill_(s.dim, s.local_idx[~mask[s.root_idx]], True)
    for n, p in model.named_parameters():
        assert torch.equal(p[~removed[n]], before[n][~removed[n]]), n  # kept weights untouched
        assert (p[removed[n]].abs() <= before[n][removed[n]].abs() + 1e-7).all(), n
    if not opts.get("squared"):  # a step as large as the norm: exact zeros, no overshoot
        reg.set_group_weights(torch.full((len(st),), 1e4))
        reg.prox_(model, masks, lr=1.0)
        for n, p in model.named_parameters():
            assert (p[removed[n]] == 0).all(), n
        assert removed_mass(model, st, masks).item() == 0.0
