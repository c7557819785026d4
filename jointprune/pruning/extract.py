"""Physical extraction of the masked sub-network with torch-pruning's surgery.

The extracted module is an ordinary copy of the user's network with fewer channels; its
eval-mode outputs equal the masked network's. `export.py` writes it as the export folder (weights, program, report).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from torch_pruning.pruner import function as tpf

from .masks import MaskPlan
from .structure import ChannelStructure, _is_grouped


def cut_in_place(structure: ChannelStructure, masks: list[torch.Tensor]) -> None:
    """Remove, from `structure.model` itself, every channel whose mask is False (one mask per
    group, in `structure.groups` order), with torch-pruning's surgery on the structure's graph."""
    graph = structure.graph
    modules = dict(structure.model.named_modules())
    for group, mask in zip(structure.groups, masks):
        removed = torch.nonzero(~mask.cpu()).flatten().tolist()
        if removed:
            root = modules[group.name]
            pruning_group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, removed)
            # torch-pruning slices a grouped conv's input channels as if every conv group lost the
            # same offsets; top-k within each conv group may lose different ones, so those weights
            # are gathered per conv group here and put back after the surgery.
            grouped = [(item.dep.target.module, [int(i) for i in item.idxs]) for item in pruning_group.items
                       if item.dep.handler == tpf.prune_conv_in_channels and _is_grouped(item.dep.target.module)]
            gathered = [(conv, _gather_grouped_inputs(conv, idxs)) for conv, idxs in grouped]
            pruning_group.prune()
            for conv, (weight, grad) in gathered:
                conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
                conv.weight.grad = grad


def _gather_grouped_inputs(conv: nn.Module, removed: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight (and gradient) of grouped conv `conv` without the input channels `removed`, each
    output filter keeping the input offsets its own conv group keeps."""
    g, width = conv.groups, conv.in_channels
    per = width // g
    gone = set(removed)
    kept = [[c - j * per for c in range(j * per, (j + 1) * per) if c not in gone] for j in range(g)]
    if len({len(k) for k in kept}) != 1:
        raise ValueError(f"grouped conv {conv} would lose unequal numbers of channels per conv group.")
    rows = torch.tensor(kept, dtype=torch.long, device=conv.weight.device)  # [groups, kept per group]
    index = rows.repeat_interleave(conv.out_channels // g, dim=0)            # [out, kept per group]

    def gather(t):
        if t is None:
            return None
        return torch.gather(t, 1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

    return gather(conv.weight.detach()), gather(conv.weight.grad)


def extract_subnetwork(model: nn.Module, structure: ChannelStructure, masks: list[torch.Tensor]) -> nn.Module:
    """A physically smaller copy of `model` that keeps exactly the channels where masks are True."""
    MaskPlan(structure).validate(masks)
    small = copy.deepcopy(model)
    was_training = small.training
    example = structure.example_input.to(next(small.parameters()).device)
    # Build the dependency graph of the copy; groups are matched to the live ones by root name.
    copy_structure = ChannelStructure(small, example, prune_coupled=structure.prune_coupled, quiet=True)
    live = {g.name: i for i, g in enumerate(structure.groups)}
    copy_structure.groups = [g for g in copy_structure.groups if g.name in live]  # some may have been left dense
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
