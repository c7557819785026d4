"""Prunable channel groups of any CNN, found with torch-pruning's DependencyGraph.

A group is the unit the agent prunes: the output channels of one or more producing layers plus
everything coupled to them (their BNs, depthwise convs, the consumers' input channels). Each
group keeps, for every parameter it touches, which slice of that parameter belongs to which
channel of the group ("root index"), so masks, the alignment regularizer and importance scores
are all plain tensor indexing on the live network.
"""
from __future__ import annotations

from ..errors import JointPruneError

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.pruner import function as tpf

log = logging.getLogger(__name__)

CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
BATCHNORM = nn.modules.batchnorm._BatchNorm
# Norms whose statistics mix channels: a zeroed (masked) channel would still count in the mean and
# variance of the kept ones, so the masked network would not compute what the extracted one does.
CHANNEL_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)
# Element-wise ops that join two channel streams into one (a residual connection).
RESIDUAL_OPS = ("AddBackward0", "SubBackward0")
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
    # Kept counts must be multiples of this, and the group's channels split into `multiple` equal
    # consecutive segments that each lose the same number of channels: a grouped conv (groups=G)
    # among the group's producers or consumers needs every conv group to keep the same width.
    multiple: int = 1


def _op_name(module) -> str:
    grad_fn = getattr(module, "_grad_fn", "")
    return grad_fn if isinstance(grad_fn, str) else type(grad_fn).__name__


def _is_residual(group) -> bool:
    """A group that passes through an element-wise add (or subtraction) of two traced tensors
    couples several producers' outputs. Matched on the exact autograd op: a name test such as
    "Add" in the name would also take `AddmmBackward0` (an nn.Linear) for a residual."""
    for dep, _ in group:
        node = dep.target
        if isinstance(node.module, ops._ElementWiseOp) and _op_name(node.module) in RESIDUAL_OPS \
                and len(node.inputs) >= 2:
            return True
    return False


@contextmanager
def _tolerant_reshape_mapping(failures: dict):
    """torch-pruning maps channel indices through view/reshape by a stride it infers; for a
    channel shuffle (view to 5-D, transpose, view back) the inference divides by zero. Let the
    trace go on with that reshape's mapping left as identity and remember the node: every group
    whose indices cross it is then left dense, so the rest of the network still prunes."""
    original = tp_index_mapping.update_reshape_index_mapping

    def tolerant(graph, node):
        try:
            original(graph, node)
        except (ZeroDivisionError, ValueError, IndexError, RuntimeError) as err:
            failures.setdefault(id(node), (node, err))

    tp_index_mapping.update_reshape_index_mapping = tolerant
    try:
        yield
    finally:
        tp_index_mapping.update_reshape_index_mapping = original


class _TolerantGraph(tp.DependencyGraph):
    """torch-pruning's graph, which re-maps indices on every query, with the reshape mapping
    made tolerant (see `_tolerant_reshape_mapping`) for the build and every later query."""

    def __init__(self):
        super().__init__()
        self.untraceable: dict = {}  # id(node) -> (node, error)

    def build_dependency(self, *args, **kwargs):
        with _tolerant_reshape_mapping(self.untraceable):
            return super().build_dependency(*args, **kwargs)

    def get_pruning_group(self, *args, **kwargs):
        with _tolerant_reshape_mapping(self.untraceable):
            return super().get_pruning_group(*args, **kwargs)

    def prunable_groups(self, ignored_layers, root_module_types):
        """(root, group or the error that stopped torch-pruning from mapping it), one per root
        layer: like `get_all_groups`, but a group whose index mapping fails does not end the walk."""
        visited, ignored = set(), set(ignored_layers) | set(self.IGNORED_LAYERS_IN_TRACING)
        for module in list(self.module2node):
            pruner = self.get_pruner_of_module(module) if isinstance(module, root_module_types) else None
            if module in ignored or module in visited or pruner is None or pruner.get_out_channels(module) is None:
                continue
            try:
                group = self.get_pruning_group(module, pruner.prune_out_channels,
                                               list(range(pruner.get_out_channels(module))))
            except (IndexError, ValueError, ZeroDivisionError, RuntimeError) as err:
                visited.add(module)
                yield module, err
                continue
            outs = [dep.target.module for dep, _ in group if self.is_out_channel_pruning_fn(dep.handler)]
            visited.update(outs)
            if not ignored.intersection(outs):
                yield module, group


class ChannelStructure:
    """The ordered prunable groups of `model` at input `example_input` (batch of 1 is enough)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, prune_coupled: bool = False,
                 ignored_layers: tuple[nn.Module, ...] = (), quiet: bool = False):
        self.model = model
        self.prune_coupled = prune_coupled
        self.example_input = example_input.detach()
        was_training = model.training
        model.eval()
        # sentence template ("{names}" left open) -> the layers it applies to; see dense_reasons
        self._dense: dict[str, list[str]] = {}
        try:
            order = _execution_order(model, self.example_input)
            with torch.enable_grad():  # the dependency graph is traced through autograd
                try:
                    self.graph = _TolerantGraph().build_dependency(model, example_inputs=self.example_input)
                except Exception as err:  # noqa: BLE001 - say which network and op, not torch-pruning's trace
                    raise StructureError(
                        f"torch-pruning cannot trace {type(model).__name__} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'no message'}); jointprune needs a network "
                        "built from standard torch.nn layers and tensor ops.") from err
        finally:
            model.train(was_training)
        self.module_names = {m: n for n, m in model.named_modules()}
        self.untraceable = list(self.graph.untraceable.values())  # (node, error) of reshapes it cannot map
        self._untraceable_nodes = {id(node) for node, _ in self.untraceable}
        for node, err in self.untraceable:
            self._leave_dense(
                f"torch-pruning cannot map channels through the {_node_op(node)} (a channel shuffle or similar, "
                f"{type(err).__name__}) after {{names}}, so the channels that cross it stay dense", self._nearest_layer(node))
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        candidates = []
        for root, group in self.graph.prunable_groups(ignored_layers, CONV_LINEAR):
            if isinstance(group, Exception):
                self._leave_dense(f"torch-pruning cannot map the output channels of {{names}} through the network "
                                  f"({type(group).__name__} in its index mapping), so they stay dense",
                                  self.module_names.get(root, str(root)))
                continue
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
        for reason in ([] if quiet else self.dense_reasons):
            log.warning("jointprune: %s", reason)
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
        name = self.module_names.get(root, str(root))
        crossed = [dep for dep, _ in group if id(dep.target) in self._untraceable_nodes
                   or id(dep.source) in self._untraceable_nodes]
        if crossed:
            return None  # said once per reshape in dense_reasons
        norms = sorted({self.module_names.get(dep.target.module, "?") for dep, _ in group
                        if isinstance(dep.target.module, CHANNEL_MIXING_NORMS)})
        if norms:
            self._leave_dense(
                "the channels of {names} stay dense: a LayerNorm/GroupNorm normalises them together, and a "
                "masked channel would still enter its statistics, so the masked network would differ from the "
                "extracted one", name)
            return None
        multiple = self._multiple(group, size, name)
        if multiple is None:
            return None
        producers = [dep.target.module for dep, _ in group
                     if dep.handler in OUT_FNS and isinstance(dep.target.module, CONV_LINEAR)]
        first = next((m for m in producers if not _is_depthwise(m)), producers[0])
        built = ChannelGroup(
            index=-1, name=self.module_names[root], size=size, residual=residual,
            in_channels=_in_features(first), kernel_size=_first(getattr(first, "kernel_size", 1)),
            stride=_first(getattr(first, "stride", 1)), multiple=multiple)
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
            # A grouped conv's weight holds in_channels / groups columns, and input channel c is
            # column c % (in_channels / groups) of its own conv group's filters only: no plain slice
            # of the weight, so it gets none (the masks and importance use the produced slices).
            elif dep.handler in IN_FNS and isinstance(module, CONV_LINEAR) and getattr(module, "groups", 1) == 1:
                dim = 0 if getattr(module, "transposed", False) else 1
                built.in_slices.append(ParamSlice(self.param_names[id(module.weight)], dim, local, root_idx))
        return built


    def _multiple(self, group, size: int, name: str) -> int | None:
        """Segments the group's channels must lose equally for its grouped convs, or None (dense).

        A grouped conv (groups=G, not depthwise) keeps a valid shape only if each of its G conv
        groups loses as many channels as the others. When the group's channels run through the
        conv's channels in order, so that conv group j holds the group's j-th consecutive block,
        pruning each of G equal segments equally is enough; with several grouped convs the
        segments are the least common multiple of their G."""
        multiple = 1
        for item in group.items:
            dep, module = item.dep, item.dep.target.module
            if not _is_grouped(module) or dep.handler not in OUT_FNS + IN_FNS:
                continue
            if module.transposed:
                self._leave_dense("the channels of {names} stay dense: they reach a grouped transposed conv, "
                                  "which jointprune does not cut", name)
                return None
            width = module.out_channels if dep.handler in OUT_FNS else module.in_channels
            g = module.groups
            local = torch.tensor([int(i) for i in item.idxs])
            root_idx = torch.tensor([int(i) for i in item.root_idxs])
            aligned = (size % g == 0 and len(local) == width
                       and bool(torch.equal(local // (width // g), root_idx // (size // g))))
            if not aligned:
                self._leave_dense(
                    "the channels of {names} stay dense: they fill only part of a grouped conv's input (e.g. "
                    "one branch of a concat) or reach it reordered, so every conv group cannot lose the same "
                    "number of them", name)
                return None
            multiple = math.lcm(multiple, g)
        if size // multiple < 2:  # one channel per conv group: nothing can go
            return None
        return multiple

    def leave_dense(self, index: int, template: str) -> None:
        """Drop group `index` (found unprunable after the trace) and say why; "{names}" in
        `template` becomes its layer's name."""
        group = self.groups.pop(index)
        for i, g in enumerate(self.groups):
            g.index = i
        self._leave_dense(template, group.name)
        log.warning("jointprune: %s.", template.format(names=_names([group.name], "layer")))
        if not self.groups:
            raise StructureError(f"{type(self.model).__name__} has no prunable channel group left: "
                                 + template.format(names=_names([group.name], "layer")) + ".")

    def _leave_dense(self, template: str, layer: str) -> None:
        self._dense.setdefault(template, []).append(layer)

    @property
    def dense_reasons(self) -> list[str]:
        """One sentence per reason channels were left dense, naming the layers (logged at build)."""
        return [template.format(names=_names(sorted(set(layers)), "layer")) + "."
                for template, layers in self._dense.items()]

    def _nearest_layer(self, node) -> str:
        """The named layer that feeds `node` most directly (breadth-first over its inputs)."""
        frontier, seen = list(node.inputs), set()
        while frontier:
            n = frontier.pop(0)
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.module in self.module_names and self.module_names[n.module]:
                return self.module_names[n.module]
            frontier.extend(n.inputs)
        return "the input"


def _node_op(node) -> str:
    grad_fn = getattr(node, "grad_fn", None)
    op = grad_fn.name() if hasattr(grad_fn, "name") else type(node.module).__name__
    return f"reshape/view op ({op})"


def _names(names: list[str], noun: str) -> str:
    listed = ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{noun}{'s' if len(names) > 1 else ''} {listed}"


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
