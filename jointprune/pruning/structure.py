"""Prunable channel groups of any CNN, found with torch-pruning's DependencyGraph.

A group is the unit the agent prunes: the output channels of one or more producing layers plus
everything coupled to them (their BNs, depthwise convs, the consumers' input channels). Each
group keeps, for every parameter it touches, which slice of that parameter belongs to which
channel of the group ("root index"), so masks, the alignment regularizer and importance scores
are all plain tensor indexing on the live network.
"""
from __future__ import annotations

from ..errors import JointPruneError

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.pruner import function as tpf

CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
BATCHNORM = nn.modules.batchnorm._BatchNorm
OUT_FNS = (tpf.prune_conv_out_channels, tpf.prune_depthwise_conv_out_channels,
           tpf.prune_linear_out_channels, tpf.prune_batchnorm_out_channels)
IN_FNS = (tpf.prune_conv_in_channels, tpf.prune_linear_in_channels)


class StructureError(JointPruneError):
    """A network that jointprune cannot prune, said in one sentence."""


@dataclass
class ParamSlice:
    """Rows (dim 0) or columns (dim 1) of one parameter that belong to a group's channels."""
    param_name: str          # e.g. "layer1.0.conv1.weight", a key of model.named_parameters()
    dim: int                 # 0: produced channels (filters, BN), 1: consumer input slices
    local_idx: torch.Tensor  # indices along `dim`
    root_idx: torch.Tensor   # the group channel each local index belongs to (same length)


@dataclass
class ChannelGroup:
    index: int
    name: str                # name of the root producing layer
    size: int                # channels in the group (dense)
    residual: bool           # tied to a residual add
    in_channels: int         # state features of the first producing conv/linear
    kernel_size: int
    stride: int
    out_slices: list[ParamSlice] = field(default_factory=list)  # producers + BN (dim 0)
    in_slices: list[ParamSlice] = field(default_factory=list)   # consumer input slices (dim 1)
    filter_slices: list[ParamSlice] = field(default_factory=list)  # producing conv/linear weights
    bn_slices: list[ParamSlice] = field(default_factory=list)   # BN weights (for bn_scale)


def _is_residual(group) -> bool:
    """A group that passes through an element-wise add couples several producers' outputs."""
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, ops._ElementWiseOp) and "Add" in str(module._grad_fn):
            return True
    return False


class ChannelStructure:
    """The ordered prunable groups of `model` at input `example_input` (batch of 1 is enough)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, prune_coupled: bool = False,
                 ignored_layers: tuple[nn.Module, ...] = ()):
        self.model = model
        self.prune_coupled = prune_coupled
        self.example_input = example_input.detach()
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():  # the dependency graph is traced through autograd
                self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.example_input)
            order = _execution_order(model, self.example_input)
        finally:
            model.train(was_training)
        self.module_names = {m: n for n, m in model.named_modules()}
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        candidates = []
        for group in self.graph.get_all_groups(ignored_layers=list(ignored_layers),
                                               root_module_types=CONV_LINEAR):
            built = self._build_group(group)
            if built is not None:
                first_call = min(order.get(dep.target.module, 1 << 30)
                                 for dep, _ in group if dep.handler in OUT_FNS)
                candidates.append((first_call, built, group))
        candidates.sort(key=lambda c: c[0])
        self.groups: list[ChannelGroup] = []
        for i, (_, built, _) in enumerate(candidates):
            built.index = i
            self.groups.append(built)
        if not self.groups:
            raise StructureError(
                f"{type(model).__name__} has no prunable channel group: jointprune needs at least one "
                "conv or linear layer whose output channels feed another conv or linear layer"
                + ("" if prune_coupled else " (residual-coupled groups are skipped unless prune_coupled=True)")
                + ".")

    @property
    def sizes(self) -> list[int]:
        return [g.size for g in self.groups]

    def __len__(self) -> int:
        return len(self.groups)

    def _build_group(self, group) -> ChannelGroup | None:
        has_consumer = any(dep.handler in IN_FNS for dep, _ in group)
        residual = _is_residual(group)
        root = group[0].dep.target.module
        size = self.graph.get_out_channels(root)
        # The classifier's outputs (no consumer) are the network's output and never pruned;
        # a single channel cannot lose anything.
        if not has_consumer or size is None or size < 2 or (residual and not self.prune_coupled):
            return None
        # torch-pruning cuts a grouped (non-depthwise) conv's inputs only with the same offsets in
        # every conv group; arbitrary top-k masks cannot promise that, so such groups stay dense.
        if any(_is_grouped(dep.target.module) for dep, _ in group):
            return None
        producers = [dep.target.module for dep, _ in group
                     if dep.handler in OUT_FNS and isinstance(dep.target.module, CONV_LINEAR)]
        first = next((m for m in producers if not _is_depthwise(m)), producers[0])
        built = ChannelGroup(
            index=-1, name=self.module_names[root], size=size, residual=residual,
            in_channels=_in_features(first), kernel_size=_first(getattr(first, "kernel_size", 1)),
            stride=_first(getattr(first, "stride", 1)))
        for item in group.items:
            dep, module = item.dep, item.dep.target.module
            local = torch.tensor([int(i) for i in item.idxs], dtype=torch.long)
            root_idx = torch.tensor([int(i) for i in item.root_idxs], dtype=torch.long)
            if dep.handler in OUT_FNS and isinstance(module, CONV_LINEAR + (BATCHNORM,)):
                for pname in ("weight", "bias"):
                    p = getattr(module, pname, None)
                    if isinstance(p, nn.Parameter):
                        dim = 1 if getattr(module, "transposed", False) and pname == "weight" else 0
                        s = ParamSlice(self.param_names[id(p)], dim, local, root_idx)
                        built.out_slices.append(s)
                        if pname == "weight":
                            (built.bn_slices if isinstance(module, BATCHNORM) else built.filter_slices).append(s)
            elif dep.handler in IN_FNS and isinstance(module, CONV_LINEAR) and not _is_depthwise(module):
                dim = 0 if getattr(module, "transposed", False) else 1
                built.in_slices.append(ParamSlice(self.param_names[id(module.weight)], dim, local, root_idx))
        return built


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.out_channels


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not _is_depthwise(module)


def _in_features(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features


def _first(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def forward_with_hooks(model: nn.Module, x: torch.Tensor, hook, modules=None) -> None:
    """One no-grad forward pass with `hook` on `modules` (default: all), removed afterwards."""
    hooks = [m.register_forward_hook(hook) for m in (model.modules() if modules is None else modules)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()


def _execution_order(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, int]:
    """Index of each module's first call in a forward pass: groups are ordered input to output."""
    order: dict[nn.Module, int] = {}

    def record(module, inputs, output):  # returns None: a hook's return value would replace the output
        order.setdefault(module, len(order))

    forward_with_hooks(model, x, record)
    return order
