"""The pruned network as data: a Core ATen graph in JSON whose tensors live in a safetensors file.

Why not `torch.save`/`torch.export.save`: both are pickles (torch.export's loader even falls back
to an unrestricted `torch.load` and evaluates sympy strings), so opening a file someone sent
you could run their code. Here the graph is plain JSON that the loader rebuilds node by node:
every operator must be a Core ATen operator (`torch.Tag.core`, the fixed opset torch.export
decomposes to), a symbolic-size helper or `operator.getitem`; every argument is a number, a
string, a dtype/device/layout name or a reference to an earlier node; every tensor name is a
dotted Python path. Anything else is refused before a single op runs. The rebuilt module is a
`torch.fx.GraphModule` whose code fx generates from those checked nodes, so it needs torch alone
(not torchvision, not the user's classes), with eval semantics (BN statistics, no dropout, no
stochastic depth) baked in by torch.export and a free batch dimension.
"""
from __future__ import annotations

import math
import operator
import re

import torch
import torch.nn as nn
from torch.export.graph_signature import InputKind, OutputKind

from .core_aten import core_aten

PROGRAM_FORMAT = "jointprune-core-aten-graph"
PROGRAM_VERSION = 1
CONSTANT_PREFIX = "_program_constants."  # graph-only tensors (not in the state dict) in the weights file
# Symbolic sizes (the free batch dimension) are computed with these plain Python operators.
PYTHON_OPS = {f"operator.{f.__name__}": f for f in (operator.getitem, operator.add, operator.sub, operator.mul,
                                                    operator.floordiv, operator.mod, operator.neg)}
EXTRA_ATEN = ("sym_size.int", "sym_numel.default", "sym_stride.int", "sym_storage_offset.default")
# fx writes an identifier as `.atom` and anything else as `getattr(x, "atom")`, so besides
# identifiers only letters, digits, "_" and "-" are let through (torchvision's RegNet names its
# blocks "block1-0"): no quote, backslash or space can reach the generated code.
_NAME_ATOM = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_-]*|_[A-Za-z0-9][A-Za-z0-9_-]*)$")
_OP_NAME = re.compile(r"^aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")


class ProgramError(ValueError):
    """A program file that is not one this module wrote; the message says what is wrong."""


# ----------------------------------------------------------------------------- save
def program_from_module(module: nn.Module, example: torch.Tensor, dynamic_batch: bool = True):
    """torch.export the module in eval mode, decomposed to Core ATen. Returns the ExportedProgram."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if dynamic_batch else None
    program = torch.export.export(module, (example,), dynamic_shapes=shapes)
    return core_aten(program, module, example)


def serialize_program(program) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-ready description, graph-only constant tensors keyed by their weights-file name)."""
    sig = program.graph_signature
    kinds = {s.arg.name: s for s in sig.input_specs}
    constants: dict[str, torch.Tensor] = {}
    index: dict[torch.fx.Node, int] = {}
    nodes: list[dict] = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            spec = kinds[node.name]
            if spec.kind == InputKind.USER_INPUT:
                entry = {"op": "input"}
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                persistent = spec.kind == InputKind.PARAMETER or spec.persistent is not False
                if persistent:
                    entry = {"op": "tensor", "name": spec.target, "parameter": spec.kind == InputKind.PARAMETER}
                else:  # a non-persistent buffer is not in the state dict: store it beside it
                    name = CONSTANT_PREFIX + spec.target
                    constants[name] = program.constants[spec.target]
                    entry = {"op": "tensor", "name": name, "parameter": False}
            elif spec.kind == InputKind.CONSTANT_TENSOR:
                name = CONSTANT_PREFIX + spec.target
                constants[name] = program.constants[spec.target]
                entry = {"op": "tensor", "name": name, "parameter": False}
            else:
                raise ProgramError(f"the network has a {spec.kind.name.lower()} input that a weights file cannot hold.")
        elif node.op == "call_function":
            entry = {"op": "call", "target": _target_name(node.target),
                     "args": _encode(list(node.args), index), "kwargs": _encode(dict(node.kwargs), index)}
        elif node.op == "output":
            outputs = node.args[0]
            if any(s.kind != OutputKind.USER_OUTPUT for s in sig.output_specs):
                raise ProgramError("the network mutates a buffer in eval mode, which an inference program cannot do.")
            entry = {"op": "output", "args": _encode(list(outputs), index)}
        else:
            raise ProgramError(f"the exported graph has a {node.op} node, which the program format does not hold.")
        index[node] = len(nodes)
        nodes.append(entry)
    return {"format": PROGRAM_FORMAT, "version": PROGRAM_VERSION, "nodes": nodes}, constants


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = f"{target.namespace}.{target._opname}.{target._overloadname}"
        _check_operator(name)
        return name
    for name, fn in PYTHON_OPS.items():
        if target is fn:
            return name
    raise ProgramError(f"the exported graph calls {target}, which is not a Core ATen operator.")


def _encode(value, index):
    if isinstance(value, torch.fx.Node):
        return {"node": index[value]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v, index) for v in value] if isinstance(value, list) else {"tuple": [_encode(v, index) for v in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, index) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise ProgramError(f"the exported graph has an argument of type {type(value).__name__}, "
                       "which the program format does not hold.")


# ----------------------------------------------------------------------------- load
def _check_operator(name: str):
    """The operator object for `name`, or ProgramError unless it is Core ATen (or a size helper)."""
    if name in PYTHON_OPS:
        return PYTHON_OPS[name]
    match = _OP_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        raise ProgramError(f"operator {name!r} is not an ATen operator name.")
    packet = getattr(torch.ops.aten, match.group(1), None)
    op = getattr(packet, match.group(2), None) if isinstance(packet, torch._ops.OpOverloadPacket) else None
    if not isinstance(op, torch._ops.OpOverload):
        raise ProgramError(f"operator {name!r} does not exist in this torch.")
    if torch.Tag.core not in op.tags and f"{match.group(1)}.{match.group(2)}" not in EXTRA_ATEN:
        raise ProgramError(f"operator {name!r} is not in the Core ATen opset.")
    return op


def _decode(value, nodes: list):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        if key == "node" and type(inner) is int and 0 <= inner < len(nodes) and nodes[inner] is not None:
            return nodes[inner]
        if key == "tuple" and isinstance(inner, list):
            return tuple(_decode(v, nodes) for v in inner)
        if key == "dict" and isinstance(inner, dict):
            return {str(k): _decode(v, nodes) for k, v in inner.items()}
        if key == "float" and inner in ("inf", "-inf", "nan"):
            return float(inner)
        if key in ("dtype", "layout", "memory_format") and isinstance(inner, str) and inner.isidentifier():
            found = getattr(torch, inner, None)
            kind = {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}[key]
            if isinstance(found, kind):
                return found
        if key == "device" and inner in ("cpu", "cuda", "mps", "xpu", "meta"):
            return torch.device(inner)
    raise ProgramError(f"argument {str(value)[:80]!r} is not one the program format allows.")


def check_tensor_name(name) -> str:
    """A dotted path of identifiers, indices or hyphenated names; fx writes these names into
    generated code."""
    if not isinstance(name, str) or not all(_NAME_ATOM.match(a) for a in name.split(".")):
        raise ProgramError(f"tensor name {str(name)[:80]!r} is not a dotted Python path.")
    return name


def build_module(description: dict, tensors: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """Rebuild the GraphModule from `serialize_program`'s description and the loaded tensors."""
    if not isinstance(description, dict) or description.get("format") != PROGRAM_FORMAT:
        raise ProgramError(f"it is not a {PROGRAM_FORMAT} description.")
    if description.get("version") != PROGRAM_VERSION:
        raise ProgramError(f"it has program version {description.get('version')!r}; this jointprune reads "
                           f"version {PROGRAM_VERSION}.")
    entries = description.get("nodes")
    if not isinstance(entries, list) or not entries:
        raise ProgramError("it lists no nodes.")
    root = nn.Module()
    graph = torch.fx.Graph()
    nodes: list = []
    inputs = 0
    for entry in entries:
        if not isinstance(entry, dict):
            raise ProgramError("a node is not a JSON object.")
        op = entry.get("op")
        if op == "input":
            inputs += 1
            node = graph.placeholder(f"input_{inputs - 1}" if inputs > 1 else "input")
        elif op == "tensor":
            name = check_tensor_name(entry.get("name"))
            if name not in tensors:
                raise ProgramError(f"tensor {name!r} is missing from the weights file.")
            _register(root, name, tensors[name], bool(entry.get("parameter")))
            node = graph.get_attr(name)
        elif op == "call":
            target = _check_operator(entry.get("target"))
            args, kwargs = _decode(entry.get("args"), nodes), _decode(entry.get("kwargs"), nodes)
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ProgramError("a call's args or kwargs have the wrong type.")
            node = graph.call_function(target, tuple(args), kwargs)
        elif op == "output":
            outputs = _decode(entry.get("args"), nodes)
            if not isinstance(outputs, list) or not outputs:
                raise ProgramError("the output node names no outputs.")
            graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
            node = None
        else:
            raise ProgramError(f"node kind {str(op)[:40]!r} is not one the program format allows.")
        nodes.append(node)
    if inputs != 1 or entries[-1].get("op") != "output":
        raise ProgramError("it must take exactly one input and end with its output.")
    graph.lint()
    return torch.fx.GraphModule(root, graph, class_name="PrunedNetwork")


def _register(root: nn.Module, name: str, tensor: torch.Tensor, parameter: bool) -> None:
    *path, leaf = name.split(".")
    module = root
    for atom in path:  # the original module tree, so state_dict keys match the trained network's
        if atom not in module._modules:
            module.add_module(atom, nn.Module())
        module = module._modules[atom]
    if parameter:
        module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
    else:
        module.register_buffer(leaf, tensor)
