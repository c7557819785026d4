"""Core ATen from torch.export's training IR without retracing, for the few operators that a
plain CNN's eval-mode graph holds.

Why: `ExportedProgram.run_decompositions()` retraces the whole graph under fake tensors and
symbolic shapes; for the quickstart's ResNet-20 that is about 2 s, 5 % of the whole run, spent
to turn seven operators into their Core ATen forms; for torchvision's ResNet-50 it is about 14 s.
Each rewrite below is the operator's own composite definition for the case at hand (eval mode,
the common argument forms). In-place activations and adds (`relu_`, `out += identity`), which the
training IR keeps, become their functional forms, and later readers of the mutated tensor read
the new node instead (the functionalisation `run_decompositions()` does, for this simple case).
A graph with any other non-core operator, or an argument form not listed, is left to
`run_decompositions()`, and the program is checked against the eager network (here, or in
capture.py on a fresh input).
"""
from __future__ import annotations

import contextlib
import copy
import operator
from typing import Callable, Optional

import torch
from torch.fx import Graph, Node

aten = torch.ops.aten


def _conv2d(graph: Graph, node: Node) -> Optional[Node]:
    x, w, b, stride, padding, dilation, groups = _arguments(node)
    if isinstance(padding, str):
        return None
    return _call(graph, aten.convolution.default,
                 (x, w, b, list(stride), list(padding), list(dilation), False, [0, 0], groups))


def _linear(graph: Graph, node: Node) -> Optional[Node]:
    x, w, b = _arguments(node)
    if _rank(x) != 2:
        return None
    wt = _call(graph, aten.permute.default, (w, [1, 0]))
    return _call(graph, aten.mm.default, (x, wt)) if b is None else \
        _call(graph, aten.addmm.default, (b, x, wt))


def _batch_norm(graph: Graph, node: Node) -> Optional[Node]:
    x, w, b, mean, var, training, momentum, eps, _cudnn = _arguments(node)
    if training or mean is None or var is None:
        return None
    out = _call(graph, aten._native_batch_norm_legit_no_training.default, (x, w, b, mean, var, momentum, eps))
    return _call(graph, operator.getitem, (out, 0))


def _flatten(graph: Graph, node: Node) -> Optional[Node]:
    x, start, end = _arguments(node)
    rank = _rank(x)
    if rank is None or start != 1 or end not in (-1, rank - 1):
        return None
    batch = _call(graph, aten.sym_size.int, (x, 0))
    return _call(graph, aten.view.default, (x, [batch, -1]))


def _adaptive_avg_pool2d(graph: Graph, node: Node) -> Optional[Node]:
    x, size = _arguments(node)
    return _call(graph, aten._adaptive_avg_pool2d.default, (x, list(size)))


def _dropout(graph: Graph, node: Node) -> Optional[Node]:
    x, _p, train = _arguments(node)
    return None if train else x


def _max_pool2d(graph: Graph, node: Node) -> Optional[Node]:
    out = _call(graph, aten.max_pool2d_with_indices.default, tuple(_arguments(node)))
    return _call(graph, operator.getitem, (out, 0))


def _hardsigmoid_of(graph: Graph, x) -> Node:
    shifted = _call(graph, aten.add.Tensor, (x, 3.0))
    return _call(graph, aten.div.Tensor, (_call(graph, aten.clamp.default, (shifted, 0.0, 6.0)), 6.0))


def _hardsigmoid(graph: Graph, node: Node) -> Node:
    return _hardsigmoid_of(graph, node.args[0])


def _hardswish(graph: Graph, node: Node) -> Node:
    x = node.args[0]
    return _call(graph, aten.mul.Tensor, (x, _hardsigmoid_of(graph, x)))


def _silu(graph: Graph, node: Node) -> Node:
    x = node.args[0]
    return _call(graph, aten.mul.Tensor, (x, _call(graph, aten.sigmoid.default, (x,))))


def _functional(target) -> Callable:
    """The rewrite of an in-place op as its functional (core) overload, same arguments."""
    def rewrite(graph: Graph, node: Node) -> Node:
        return _call(graph, target, node.args, node.kwargs)
    return rewrite


REWRITES: dict = {
    aten.conv2d.default: _conv2d,
    aten.linear.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten.flatten.using_ints: _flatten,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
    aten.dropout.default: _dropout,
    aten.max_pool2d.default: _max_pool2d,
    aten.hardsigmoid.default: _hardsigmoid,
    aten.hardswish.default: _hardswish,
    aten.silu.default: _silu,
}
# In-place forms: rewritten as the functional op (a rewrite above, or the core overload itself),
# with the mutated tensor's later readers moved to the result (in `rewritten_program`).
INPLACE: dict = {
    aten.relu_.default: _functional(aten.relu.default),
    aten.add_.Tensor: _functional(aten.add.Tensor),
    aten.mul_.Tensor: _functional(aten.mul.Tensor),
    aten.hardtanh_.default: _functional(aten.hardtanh.default),
    aten.clamp_.default: _functional(aten.clamp.default),
    aten.sigmoid_.default: _functional(aten.sigmoid.default),
    aten.hardsigmoid_.default: _hardsigmoid,
    aten.hardswish_.default: _hardswish,
    aten.silu_.default: _silu,
    aten.dropout_.default: _dropout,
}


def _call(graph: Graph, target, args: tuple, kwargs: Optional[dict] = None) -> Node:
    """A new node whose `meta["val"]` (which torch.export's verifier requires) is the target run on
    its inputs' fake values, under the capture's own fake mode: one cheap op, no retrace."""
    kwargs = dict(kwargs or {})
    node = graph.call_function(target, tuple(args), kwargs)
    fake = lambda a: a.meta["val"] if isinstance(a, Node) else a  # noqa: E731
    fake_args = torch.fx.node.map_aggregate(tuple(args), fake)
    fake_kwargs = torch.fx.node.map_aggregate(kwargs, fake)
    mode = torch._guards.detect_fake_mode(torch.utils._pytree.tree_leaves([fake_args, fake_kwargs]))
    with mode if mode is not None else contextlib.nullcontext():
        node.meta["val"] = target(*fake_args, **fake_kwargs)
    return node


def _mutates_safely(node: Node) -> bool:
    """Whether an in-place op's target can be functionalised by renaming: an intermediate tensor
    (not a program input, parameter or buffer) that is not a view of another tensor. The result
    of another in-place op (`relu_(out.add_(identity))`) is that op's own target, checked in turn."""
    if node.target is aten.dropout_.default and not _arguments(node)[2]:
        return True  # eval-mode dropout mutates nothing
    x = node.args[0]
    if not isinstance(x, Node) or x.op != "call_function":
        return False
    if x.target in INPLACE:
        return True
    schema = getattr(x.target, "_schema", None)
    return schema is not None and all(r.alias_info is None for r in schema.returns)


def _arguments(node: Node) -> list:
    """The node's arguments in schema order: positional, then keyword, then the schema's defaults."""
    values = []
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            values.append(node.args[i])
        elif arg.name in node.kwargs:
            values.append(node.kwargs[arg.name])
        else:
            values.append(arg.default_value)
    return values


def _rank(node) -> Optional[int]:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


def _is_core(target) -> bool:
    return isinstance(target, torch._ops.OpOverload) and (
        torch.Tag.core in target.tags or target is aten.sym_size.int)


def rewritten_program(program):
    """The Core ATen form of `program` (an eval-mode ExportedProgram in training IR) made by
    rewriting its nodes in place, or None when the graph holds an operator or argument form that
    only `run_decompositions()` handles."""
    from torch.export import ExportedProgram
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    if any(not _is_core(n.target) and n.target not in REWRITES and n.target not in INPLACE
           and n.target is not operator.getitem for n in calls):
        return None
    if any(n.target in INPLACE and not _mutates_safely(n) for n in calls):
        return None
    gm = copy.deepcopy(program.graph_module)
    graph = gm.graph
    for copied, original in zip(graph.nodes, program.graph.nodes):
        copied.name = original.name  # the copy renames e.g. an input called `input`; the signature must match
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        inplace = node.target in INPLACE
        rewrite: Optional[Callable] = (INPLACE if inplace else REWRITES).get(node.target)
        if rewrite is None:
            continue
        with graph.inserting_before(node):
            new = rewrite(graph, node)
        if inplace and new is not None:  # readers after the mutation read its result
            mutated = node.args[0]
            for user in [u for u in mutated.users if u is not node and order.get(u, -1) > order[node]]:
                user.replace_input_with(mutated, new)
        identity = new is node.args[0]
        if new is None or (identity and any(user.op == "output" for user in node.users)):
            return None  # (the signature names the outputs by node name: an output must stay a node)
        if not identity:  # keep where the node came from (stack trace, module path)
            new.meta = {**node.meta, "val": new.meta["val"]}
        node.replace_all_uses_with(new)
        name = node.name
        graph.erase_node(node)
        if not identity:
            new.name = name  # the graph signature names the outputs by node name
    graph.eliminate_dead_code()
    gm.recompile()
    _propagate_values(gm, program)
    return ExportedProgram(root=gm, graph=gm.graph, graph_signature=program.graph_signature,
                           state_dict=program.state_dict, range_constraints=program.range_constraints,
                           module_call_graph=program.module_call_graph, example_inputs=program.example_inputs,
                           constants=program.constants, verifiers=program.verifiers)


def _propagate_values(gm, program) -> None:
    """Recompute every node's fake value from the program's own tensors. The capture may be the
    dense network's graph handed pruned weights (capture.py), and ONNX export reads these shapes."""
    from torch.export.graph_signature import InputKind
    mode = torch._guards.detect_fake_mode(torch.utils._pytree.tree_leaves(
        [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]))
    if mode is None:
        return
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    specs = dict(zip(placeholders, program.graph_signature.input_specs))  # both in input order
    tensors = {**program.state_dict, **program.constants}
    with mode:
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                spec = specs[node]
                if spec.kind != InputKind.USER_INPUT and spec.target in tensors:
                    node.meta["val"] = mode.from_tensor(tensors[spec.target], static_shapes=True)
            elif node.op == "call_function":
                value = lambda a: a.meta["val"] if isinstance(a, Node) else a  # noqa: E731
                node.meta["val"] = node.target(*torch.fx.node.map_aggregate(node.args, value),
                                               **torch.fx.node.map_aggregate(dict(node.kwargs), value))


def reproduces(program, module, x: torch.Tensor) -> bool:
    """Whether `program` computes what the eager `module` computes on `x` (same shape, close values)."""
    with torch.no_grad():
        expected, got = module(x), program.module()(x)
    return isinstance(got, torch.Tensor) and got.shape == expected.shape and \
        torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def core_aten(program, module=None, example: Optional[torch.Tensor] = None):
    """`program` in Core ATen: the rewrite where it applies, else `run_decompositions()`. With
    `module` and `example`, a rewrite that does not reproduce the eager module is not used."""
    rewritten = rewritten_program(program)
    if rewritten is not None and module is not None and not reproduces(rewritten, module, example):
        rewritten = None
    return rewritten if rewritten is not None else program.run_decompositions()
