"""Physical extraction of the masked sub-network with torch-pruning's surgery.

The extracted module is an ordinary copy of the user's network with fewer channels; its
eval-mode outputs equal the masked network's. `export.py` writes it as `pruned.pt` + `pruned.json`.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .masks import MaskPlan
from .structure import ChannelStructure


def cut_in_place(structure: ChannelStructure, masks: list[torch.Tensor]) -> None:
    """Remove, from `structure.model` itself, every channel whose mask is False (one mask per
    group, in `structure.groups` order), with torch-pruning's surgery on the structure's graph."""
    graph = structure.graph
    modules = dict(structure.model.named_modules())
    for group, mask in zip(structure.groups, masks):
        removed = torch.nonzero(~mask.cpu()).flatten().tolist()
        if removed:
            root = modules[group.name]
            graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, removed).prune()


def extract_subnetwork(model: nn.Module, structure: ChannelStructure, masks: list[torch.Tensor]) -> nn.Module:
    """A physically smaller copy of `model` that keeps exactly the channels where masks are True."""
    MaskPlan(structure).validate(masks)
    small = copy.deepcopy(model)
    was_training = small.training
    example = structure.example_input.to(next(small.parameters()).device)
    # Build the dependency graph of the copy; groups are matched to the live ones by root name.
    copy_structure = ChannelStructure(small, example, prune_coupled=structure.prune_coupled)
    live = {g.name: i for i, g in enumerate(structure.groups)}
    cut_in_place(copy_structure, [masks[live[g.name]] for g in copy_structure.groups])
    small.train(was_training)
    return small


def prune_keeping_momentum(model: nn.Module, optimizer, surgery) -> None:
    """Run `surgery()` (in-place torch-pruning on `model`) and keep the optimizer's momentum for
    the channels that stay.

    The momentum is parked in `.grad` during the surgery because torch-pruning slices a
    parameter's gradient together with its weight; it then goes back into the same optimizer,
    whose param group (and so any LR scheduler on it) keeps its place."""
    if optimizer is None:
        surgery()
        return
    for p in model.parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        p.grad = None if buf is None else buf.clone()
    surgery()
    params = list(model.parameters())
    optimizer.state.clear()
    optimizer.param_groups[0]["params"] = params
    for p in params:
        if p.grad is not None:
            optimizer.state[p] = {"momentum_buffer": p.grad.detach().clone()}
        p.grad = None
