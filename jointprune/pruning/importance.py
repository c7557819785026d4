"""Channel importance per group: which channels a kept count keeps (top-k).

l1/l2: the norm of the producing filters (every conv/linear whose outputs are in the group),
summed over the group's producers; bn_scale: |gamma| summed over the group's BNs. Computed from
the slices the structure already holds, so it costs a few indexing ops per group.

A group tied to a grouped conv (`multiple` > 1) gets its scores as a [multiple, size // multiple]
tensor, one row per conv-group segment: `top_k_masks` then keeps the same number of channels in
every row (the top-k within each conv group), which is what keeps the grouped conv valid.
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
        scores.append(score.view(group.multiple, -1) if group.multiple > 1 else score)
    return scores


def top_k_masks(scores: list[torch.Tensor], kept: list[int]) -> list[torch.Tensor]:
    """Boolean keep-masks (1-D, one per group): the `kept[g]` most important channels of each
    group; for 2-D scores, `kept[g]` split equally over the rows, top-k within each row."""
    masks = []
    for g, (score, k) in enumerate(zip(scores, kept)):
        rows = score.view(-1, score.shape[-1])
        if int(k) % rows.shape[0]:
            raise ValueError(f"group {g} is tied to a grouped conv with {rows.shape[0]} conv groups: its kept "
                             f"count must be a multiple of {rows.shape[0]}, got {k}.")
        mask = torch.zeros_like(rows, dtype=torch.bool)
        mask.scatter_(1, torch.topk(rows, int(k) // rows.shape[0], dim=1, sorted=False).indices, True)
        masks.append(mask.flatten())
    return masks
