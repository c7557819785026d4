"""`load_pruned(path, into=net)`: cut a fresh dense instance of the user's class to the saved widths.

The export records, for every prunable group, the name of its root layer, its dense width and
the indices of the channels kept. Replaying torch-pruning's surgery with those indices on the
user's own (dense, freshly built) network gives the same module tree the run ended with, so the
saved state dict fits it exactly; the network keeps its class, its `forward`, and its train/eval
behaviour. The groups are cut in the saved order on one dependency graph, as the run's own
extraction (`extract.cut_in_place`) does.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _error(message: str):
    from .export import ExportError
    return ExportError(message)


def replay_into(net: nn.Module, report: dict, state_dict: dict[str, torch.Tensor], where: str) -> nn.Module:
    import torch_pruning as tp

    if not isinstance(net, nn.Module):
        raise _error(f"into= must be a fresh instance of the network class, got {type(net).__name__}.")
    saved_class = report.get("model_class")
    if saved_class is not None and type(net).__qualname__ != saved_class:
        raise _error(f"{where} holds a pruned {saved_class}, but into= is a {type(net).__qualname__}; "
                     f"pass a fresh {saved_class} built with the training run's arguments.")
    groups = report.get("groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("kept_indices"), list)
                                               for g in groups):
        raise _error(f"{where}/pruned.json records no kept-channel indices per group, so the cut cannot be "
                     "replayed; use load_pruned(path) without into=.")
    shape = report.get("input_shape")
    example = torch.zeros(1, *shape, device=_device(net))
    modules = dict(net.named_modules())
    was_training = net.training
    net.eval()
    with torch.enable_grad():  # torch-pruning traces the graph through autograd
        graph = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    for g in groups:  # check everything before cutting anything
        root = modules.get(g.get("name"))
        dense = graph.get_out_channels(root) if root is not None else None
        if dense != g.get("dense"):
            found = "no such layer" if root is None else f"{dense} channels"
            raise _error(f"into= does not match the saved network: layer {g.get('name')!r} should have "
                         f"{g.get('dense')} output channels before pruning, found {found}; pass a fresh, dense "
                         f"instance built with the training run's arguments.")
        kept = g["kept_indices"]
        if len(kept) != g.get("kept") or len(set(kept)) != len(kept) or not all(
                isinstance(i, int) and 0 <= i < dense for i in kept):
            raise _error(f"{where}/pruned.json lists invalid kept indices for group {g.get('name')!r}.")
    for g in groups:
        root = modules[g["name"]]
        removed = sorted(set(range(g["dense"])) - set(g["kept_indices"]))
        if removed:
            graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, removed).prune()
    own = net.state_dict()
    unplaced = [k for k in state_dict if k not in own]
    unsaved = [k for k in own if k not in state_dict]
    misshaped = [k for k in state_dict if k in own and own[k].shape != state_dict[k].shape]
    if unplaced or unsaved or misshaped:
        first = (unplaced or unsaved or misshaped)[0]
        raise _error(f"into= does not match the saved network after the cut ({len(unplaced)} saved tensors have "
                     f"no place in it, {len(unsaved)} of its tensors were not saved, {len(misshaped)} differ in "
                     f"shape; first: {first}); pass a fresh, dense instance built with the training run's arguments.")
    net.load_state_dict(state_dict, strict=True)
    flops = tp.utils.count_ops_and_params(net, example)[0]
    if report.get("pruned_flops") is not None and flops != report["pruned_flops"]:
        raise _error(f"into= cut to the saved widths counts {flops:,} FLOPs, not the {report['pruned_flops']:,} "
                     "the export reports; its class has changed since training.")
    net.train(was_training)
    return net.eval()


def _device(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
