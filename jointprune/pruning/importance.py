"""Channel importance per group: which channels a kept count keeps (top-k).

l1/l2: the norm of the producing filters (every conv/linear whose outputs are in the group),
summed over the group's producers; bn_scale: |gamma| summed over the group's BNs. Computed from
the slices the structure already holds, so it costs a few indexing ops per group.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .structure import ChannelStructure

CRITERIA = ("l1", "l2", "bn_scale")


@torch.no_grad()
def group_importance(model: nn.Module, structure: ChannelStructure, criterion: str = "l1") -> list[torch.Tensor]:
    if criterion not in CRITERIA:
        raise ValueError(f"importance must be one of {', '.join(CRITERIA)}, got {criterion!r}.")
    params = dict(model.named_parameters())
    scores = []
    for group in structure.groups:
        score = torch.zeros(group.size, device=next(iter(params.values())).device)
        # Groups without a BN fall back to the producing filters under bn_scale.
        slices = group.bn_slices if criterion == "bn_scale" and group.bn_slices else group.filter_slices
        p = 2 if criterion == "l2" else 1
        for s in slices:
            w = params[s.param_name].detach().index_select(s.dim, s.local_idx.to(score.device))
            # reshape, not flatten(1): BN weights (bn_scale) are 1-D, one value per channel
            w = w.movedim(s.dim, 0).reshape(w.shape[s.dim], -1).abs().pow(p).sum(1)
            score.index_add_(0, s.root_idx.to(score.device), w)
        scores.append(score)
    return scores


def top_k_masks(scores: list[torch.Tensor], kept: list[int]) -> list[torch.Tensor]:
    """Boolean keep-masks: the `kept[g]` most important channels of each group."""
    masks = []
    for score, k in zip(scores, kept):
        mask = torch.zeros_like(score, dtype=torch.bool)
        mask[torch.topk(score, int(k), sorted=False).indices] = True
        masks.append(mask)
    return masks
