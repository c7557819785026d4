"""The alignment regularizer: softly push the weights the incumbent sub-network would remove to 0.

penalty = sum over groups of a norm of every slice of a removed channel: the producing filters
and their biases, the consumers' input slices, and optionally the BN's gamma and beta. Options:
  per_channel=True  group lasso, one L2 norm per removed channel, summed (default)
  per_channel=False one L2 norm per group over all its removed channels
  squared=True      sum of squares instead of norms (smooth at 0, weaker near 0)
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .structure import BATCHNORM, ChannelStructure


class AlignmentRegularizer(nn.Module):
    def __init__(self, structure: ChannelStructure, *, per_channel: bool = True, squared: bool = False,
                 include_bn: bool = False):
        super().__init__()
        self.structure, self.per_channel, self.squared = structure, per_channel, squared
        bn_params = {n for n, m in structure.model.named_modules() if isinstance(m, BATCHNORM)}
        self.slices = []
        for g in structure.groups:
            keep = []
            for s in g.out_slices + g.in_slices:
                owner = s.param_name.rsplit(".", 1)[0]
                if include_bn or owner not in bn_params:
                    keep.append(s)
            self.slices.append(keep)

    def forward(self, model: nn.Module, masks: list[torch.Tensor] | None) -> torch.Tensor:
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device
        total = torch.zeros((), device=device)
        if masks is None:
            return total
        for g, (group, mask) in enumerate(zip(self.structure.groups, masks)):
            removed = ~mask.to(device)
            if not bool(removed.any()):
                continue
            sq = torch.zeros(group.size, device=device)
            for s in self.slices[g]:
                root = s.root_idx.to(device)
                sel = removed[root]
                if not bool(sel.any()):
                    continue
                w = params[s.param_name].index_select(s.dim, s.local_idx.to(device)[sel])
                # reshape, not flatten(1): biases and BN parameters are 1-D (one value per channel)
                sq = sq.index_add(0, root[sel], w.movedim(s.dim, 0).reshape(w.shape[s.dim], -1).pow(2).sum(1))
            sq = sq[removed]
            if self.squared:
                total = total + sq.sum()
            elif self.per_channel:
                # eps keeps the gradient finite for a channel that is already exactly zero
                total = total + (sq + 1e-12).sqrt().sum()
            else:
                total = total + (sq.sum() + 1e-12).sqrt()
        return total
