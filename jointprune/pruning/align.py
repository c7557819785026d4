"""The alignment regularizer: softly push the weights the incumbent sub-network would remove to 0.

penalty = sum over groups g of lambda_g times a norm of every slice of a removed channel: the
producing filters and their biases, the consumers' input slices, and (include_bn) the BN's gamma
and beta. Forms:
  per_channel=False one L2 norm per group over all its removed channels (the paper's formula)
  per_channel=True  group lasso, one L2 norm per removed channel, summed
  squared=True      sum of squares instead of norms (smooth at 0, weaker near 0)

Two ways to apply it, with the same value and gradient:
  `reg(model, masks)`          a differentiable penalty to add to the loss (autograd; any precision)
  `reg.add_grad_(model, masks)` adds the penalty's analytic gradient to `p.grad` after backward
      with a handful of multi-tensor (`torch._foreach_*`) ops and no host synchronisation; the
      index tensors it needs are built once per mask change (once an epoch), on the device.

lambda is one number per group (`set_group_weights`), so a schedule can raise it where the
removed channels are still full (see `deadline_weights`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .structure import BATCHNORM, ChannelStructure

EPS = 1e-12  # keeps norms differentiable for a slice that is already exactly zero


def _channel_sq(masked: list[torch.Tensor], dims: list[int]) -> torch.Tensor:
    """Sum of squares of each slice over every dim but its channel dim, concatenated."""
    out = []
    for m, dim in zip(masked, dims):
        others = [d for d in range(m.dim()) if d != dim]
        out.append(m.square().sum(others) if others else m.square())  # sum([]) would reduce everything
    return torch.cat(out)


class _Plan:
    """Everything `add_grad_` needs for one set of masks, on the parameters' device."""

    def __init__(self, slices, params, masks, structure, device, dtype):
        self.masks = masks
        names, factors, groups, dims, chan_index = [], [], [], [], []
        offsets = [0]
        for n in structure.sizes:
            offsets.append(offsets[-1] + n)
        self.total_channels = offsets[-1]
        removed_cpu = [(~m.detach().cpu().bool()) for m in masks]
        for g, group_slices in enumerate(slices):
            removed = removed_cpu[g]
            if not bool(removed.any()):
                continue
            for s in group_slices:
                sel = removed[s.root_idx]
                if not bool(sel.any()):
                    continue
                p = params[s.param_name]
                size = p.shape[s.dim]
                shape = [1] * p.dim()
                shape[s.dim] = size
                factor = torch.zeros(size, dtype=dtype)
                factor[s.local_idx[sel]] = 1.0
                # every index of the slice's dim maps to its group channel (a spare slot for the rest)
                index = torch.full((size,), self.total_channels, dtype=torch.long)
                index[s.local_idx[sel]] = s.root_idx[sel] + offsets[g]
                names.append(s.param_name)
                factors.append(factor.view(shape).to(device))
                groups.append(g)
                dims.append(s.dim)
                chan_index.append(index.to(device))
        self.names, self.factors, self.dims, self.chan_index = names, factors, dims, chan_index
        self.group_of_slice = torch.tensor(groups, dtype=torch.long).to(device)
        self.group_of_channel = torch.cat([torch.full((n,), g, dtype=torch.long) for g, n in enumerate(structure.sizes)]
                                          + [torch.zeros(1, dtype=torch.long)]).to(device)
        self.num_groups = len(structure.sizes)
        self.empty = not names
        # A parameter can hold slices of two groups (a conv's rows and its input columns): the
        # in-place multi-tensor add must never see one tensor twice, so split into batches.
        self.batches: list[list[int]] = []
        for i, name in enumerate(names):
            for batch in self.batches:
                if all(names[j] != name for j in batch):
                    batch.append(i)
                    break
            else:
                self.batches.append([i])


class AlignmentRegularizer(nn.Module):
    def __init__(self, structure: ChannelStructure, *, per_channel: bool = False, squared: bool = False,
                 include_bn: bool = True, weight: float = 1.0):
        super().__init__()
        self.structure, self.per_channel, self.squared = structure, per_channel, squared
        self.weight = weight
        bn_params = {n for n, m in structure.model.named_modules() if isinstance(m, BATCHNORM)}
        self.slices = []
        for g in structure.groups:
            keep = []
            for s in g.out_slices + g.in_slices:
                owner = s.param_name.rsplit(".", 1)[0]
                if include_bn or owner not in bn_params:
                    keep.append(s)
            self.slices.append(keep)
        self._plan: _Plan | None = None
        self._group_weights: torch.Tensor | None = None  # lambda per group; None: `weight` everywhere

    # ------------------------------------------------------------------ lambda per group
    def set_group_weights(self, weights: torch.Tensor | None) -> None:
        """lambda per group (a tensor of one value per group), or None for the constant `weight`."""
        self._group_weights = None if weights is None else weights.detach()

    def group_weights(self, device) -> torch.Tensor:
        if self._group_weights is None:
            return torch.full((len(self.structure),), float(self.weight), device=device)
        return self._group_weights.to(device)

    # ------------------------------------------------------------------ the lean step
    def plan_for(self, model: nn.Module, masks: list[torch.Tensor]) -> _Plan:
        """Index tensors for `masks`, rebuilt only when the masks object changes (once an epoch)."""
        if self._plan is None or self._plan.masks is not masks:
            params = dict(model.named_parameters())
            first = next(iter(params.values()))
            self._plan = _Plan(self.slices, params, masks, self.structure, first.device, first.dtype)
        return self._plan

    @torch.no_grad()
    def add_grad_(self, model: nn.Module, masks: list[torch.Tensor] | None) -> torch.Tensor | None:
        """p.grad += d(penalty)/dp for every removed slice; returns the penalty (a device tensor)."""
        if masks is None:
            return None
        plan = self.plan_for(model, masks)
        if plan.empty:
            return None
        params = dict(model.named_parameters())
        plist = [params[n] for n in plan.names]
        for p in plist:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        lam = self.group_weights(plist[0].device)
        masked = torch._foreach_mul(plist, plan.factors)
        if self.per_channel and not self.squared:
            # one norm per removed channel: reduce each slice over every dim but its channel dim
            sq = _channel_sq(masked, plan.dims)
            index = torch.cat(plan.chan_index)
            chan_sq = torch.zeros(plan.total_channels + 1, device=sq.device, dtype=sq.dtype).index_add_(0, index, sq)
            norm = (chan_sq + EPS).sqrt()
            coef_chan = lam[plan.group_of_channel] / norm
            coef_chan[-1] = 0.0  # the spare slot of indices outside any removed channel
            penalty = (lam[plan.group_of_channel] * (norm - EPS ** 0.5))[:-1].sum()
            coefs = [coef_chan[i].view(f.shape) for i, f in zip(plan.chan_index, plan.factors)]
        else:
            slice_sq = torch.stack(torch._foreach_norm(masked)).square()
            group_sq = torch.zeros(plan.num_groups, device=slice_sq.device, dtype=slice_sq.dtype)
            group_sq = group_sq.index_add_(0, plan.group_of_slice, slice_sq)
            if self.squared:
                penalty = (lam * group_sq).sum()
                coef = 2 * lam[plan.group_of_slice]
            else:
                norm = (group_sq + EPS).sqrt()
                penalty = (lam * norm).sum()
                coef = (lam / norm)[plan.group_of_slice]
            coefs = coef.unbind()
        grads = torch._foreach_mul(masked, coefs)
        for batch in plan.batches:
            torch._foreach_add_([plist[i].grad for i in batch], [grads[i] for i in batch])
        return penalty

    @torch.no_grad()
    def prox_(self, model: nn.Module, masks: list[torch.Tensor] | None, lr: float) -> None:
        """The penalty's proximal step after an SGD step of size `lr` (proximal SGD): every
        removed slice is scaled by max(0, 1 - lr * lambda / norm) (norm per group, or per channel),
        or by 1 / (1 + 2 lr lambda) for the squared form. Unlike the gradient through momentum it
        reaches exact zeros and does not oscillate around them. No host synchronisation."""
        if masks is None:
            return
        plan = self.plan_for(model, masks)
        if plan.empty:
            return
        params = dict(model.named_parameters())
        plist = [params[n] for n in plan.names]
        lam = self.group_weights(plist[0].device)
        if self.squared:
            shrink = (1.0 / (1.0 + 2.0 * lr * lam) - 1.0)[plan.group_of_slice]
            coefs = shrink.unbind()
        elif self.per_channel:
            chan_sq = torch.zeros(plan.total_channels + 1, device=lam.device, dtype=lam.dtype)
            chan_sq.index_add_(0, torch.cat(plan.chan_index), _channel_sq(torch._foreach_mul(plist, plan.factors), plan.dims))
            shrink = (1.0 - lr * lam[plan.group_of_channel] / (chan_sq.sqrt() + EPS)).clamp_min(0.0) - 1.0
            shrink[-1] = 0.0
            coefs = [shrink[i].view(f.shape) for i, f in zip(plan.chan_index, plan.factors)]
        else:
            slice_sq = torch.stack(torch._foreach_norm(torch._foreach_mul(plist, plan.factors))).square()
            group_sq = torch.zeros(plan.num_groups, device=lam.device, dtype=lam.dtype).index_add_(0, plan.group_of_slice, slice_sq)
            shrink = ((1.0 - lr * lam / (group_sq.sqrt() + EPS)).clamp_min(0.0) - 1.0)[plan.group_of_slice]
            coefs = shrink.unbind()
        # batch by batch (a tensor at most once per batch), so a weight in two removed slices
        # (a removed row and a removed column) is scaled by both factors
        for batch in plan.batches:
            ps = [plist[i] for i in batch]
            delta = torch._foreach_mul(torch._foreach_mul(ps, [plan.factors[i] for i in batch]), [coefs[i] for i in batch])
            torch._foreach_add_(ps, delta)

    # ------------------------------------------------------------------ differentiable form
    def forward(self, model: nn.Module, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """The penalty as a differentiable tensor (times lambda per group)."""
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device
        total = torch.zeros((), device=device)
        if masks is None:
            return total
        plan = self.plan_for(model, masks)
        if plan.empty:
            return total
        lam = self.group_weights(device)
        masked = [params[n] * f for n, f in zip(plan.names, plan.factors)]
        if self.per_channel and not self.squared:
            sq = _channel_sq(masked, plan.dims)
            chan_sq = torch.zeros(plan.total_channels + 1, device=device).index_add(0, torch.cat(plan.chan_index), sq)
            # a channel outside every removed slice has chan_sq = 0 and adds exactly 0
            norm = (chan_sq + EPS).sqrt() - EPS ** 0.5
            return (lam[plan.group_of_channel] * norm)[:-1].sum()
        slice_sq = torch.stack([m.square().sum() for m in masked])
        group_sq = torch.zeros(plan.num_groups, device=device).index_add(0, plan.group_of_slice, slice_sq)
        if self.squared:
            return (lam * group_sq).sum()
        return (lam * ((group_sq + EPS).sqrt() - EPS ** 0.5)).sum()

    # ------------------------------------------------------------------ measurements (once an epoch)
    @torch.no_grad()
    def group_norms(self, model: nn.Module, masks: list[torch.Tensor]) -> torch.Tensor:
        """Per group: the norm the pull acts on (per-group form) or the largest removed channel's
        norm (per-channel form); 0 for a group that removes nothing."""
        plan = self.plan_for(model, masks)
        device = next(model.parameters()).device
        if plan.empty:
            return torch.zeros(len(self.structure), device=device)
        params = dict(model.named_parameters())
        masked = [params[n] * f for n, f in zip(plan.names, plan.factors)]
        if self.per_channel and not self.squared:
            sq = _channel_sq(masked, plan.dims)
            chan = torch.zeros(plan.total_channels + 1, device=device).index_add_(0, torch.cat(plan.chan_index), sq)
            out = torch.zeros(plan.num_groups, device=device)
            return out.index_reduce_(0, plan.group_of_channel[:-1], chan[:-1].sqrt(), "amax")
        slice_sq = torch.stack([m.square().sum() for m in masked])
        return torch.zeros(plan.num_groups, device=device).index_add_(0, plan.group_of_slice, slice_sq).sqrt()


def deadline_weights(norms: torch.Tensor, *, base: float, lr: float, momentum: float, steps_left: int,
                     empty_by: float, proximal: bool = True) -> torch.Tensor:
    """lambda per group so that the pull alone would empty each group's removed slices after
    `empty_by` of the optimizer steps left before the cut, never below `base`.

    Proximal: each step shrinks the norm by lr * lambda, so emptying N in n steps takes
    lambda = N / (lr * n). Gradient through SGD momentum beta, starting from rest: after n steps
    the norm has moved lr * lambda / (1 - beta) * (n - beta (1 - beta^n) / (1 - beta)).
    Re-estimated every epoch from the measured norms, so a group the loss holds back gets a
    stronger pull as the cut comes closer.
    """
    n = empty_by * max(steps_left, 1)
    if proximal:
        travel = n
    else:
        travel = max(n - momentum * (1.0 - momentum ** n) / (1.0 - momentum), 1.0) / (1.0 - momentum)
    return (norms / max(lr * travel, 1e-12)).clamp_min(base)


@torch.no_grad()
def removed_mass(model: nn.Module, structure: ChannelStructure, masks: list[torch.Tensor] | None) -> torch.Tensor:
    """The removed channels' share of the L1 mass of the producing filters (+ biases) and BN
    gamma/beta, over every prunable group: 0 for masks that remove nothing, never a division by 0."""
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    removed = torch.zeros((), device=device)
    total = torch.zeros((), device=device)
    if masks is None:
        return removed
    for group, mask in zip(structure.groups, masks):
        mask = mask.to(device)
        mass = torch.zeros(group.size, device=device)
        for s in group.out_slices:
            w = params[s.param_name].detach().index_select(s.dim, s.local_idx.to(device))
            mass.index_add_(0, s.root_idx.to(device), w.movedim(s.dim, 0).reshape(w.shape[s.dim], -1).abs().sum(1))
        removed = removed + mass[~mask].sum()
        total = total + mass.sum()
    return removed / total.clamp_min(1e-12)
