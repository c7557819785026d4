"""One torch.export capture per run: the start-of-fit check's capture of the dense network is
reused for the pruned network's program at the end, instead of tracing the network a second time.

Why this is sound: a non-strict capture records the forward's operators with the weights as
graph inputs (`conv2d(x, weight)`, `batch_norm(x, ..., running_mean, ...)`), so the same graph
runs the pruned network when it is handed the pruned weights under the same names. What could
differ is a size the forward computed from a channel count and baked into the graph (e.g.
`x.view(b, c // 2, 2, h, w)` with `c = x.size(1)`). So the retargeted program is turned into
Core ATen on the pruned weights (core_aten.py) and then run against the eager pruned network on a
fresh input with another batch size; any error or mismatch falls back to a fresh capture of the
pruned network (`fresh_program`), which is what was done before.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from .core_aten import core_aten, reproduces


@dataclass
class DenseCapture:
    """The parts of the dense network's ExportedProgram that do not hold weights, so that the
    dense weights are not kept alive (on the GPU) for the rest of the run."""
    graph_module: torch.fx.GraphModule
    graph_signature: object
    range_constraints: dict
    module_call_graph: list
    example_inputs: object
    constants: dict
    verifiers: list

    def device(self) -> Optional[torch.device]:
        inputs = [t for t in torch.utils._pytree.tree_leaves(self.example_inputs) if isinstance(t, torch.Tensor)]
        return inputs[0].device if inputs else None

    @classmethod
    def of(cls, program) -> "DenseCapture":
        return cls(program.graph_module, program.graph_signature, program.range_constraints,
                   program.module_call_graph, program.example_inputs, dict(program.constants), program.verifiers)

    def with_weights_of(self, module: nn.Module):
        """An ExportedProgram of this graph over `module`'s parameters and buffers (same names).
        Raises KeyError when a name the graph needs is gone."""
        from torch.export import ExportedProgram
        from torch.export.graph_signature import InputKind
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        state, constants = {}, dict(self.constants)
        for spec in self.graph_signature.input_specs:
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
                if spec.kind == InputKind.BUFFER and spec.persistent is False:
                    constants[spec.target] = tensors[spec.target]
                else:
                    state[spec.target] = tensors[spec.target]
        return ExportedProgram(root=self.graph_module, graph=self.graph_module.graph,
                               graph_signature=self.graph_signature, state_dict=state,
                               range_constraints=self.range_constraints, module_call_graph=self.module_call_graph,
                               example_inputs=self.example_inputs, constants=constants, verifiers=self.verifiers)


def retargeted_program(capture: Optional[DenseCapture], module: nn.Module, example: torch.Tensor):
    """The Core ATen program of `module` (eval mode) from the dense capture, or None when there is
    no capture or it does not reproduce `module` exactly on a fresh input."""
    if capture is None:
        return None
    try:
        device = capture.device()
        if device is not None and next(module.parameters()).device != device:
            # the check ran before Lightning moved the network (e.g. to the GPU): retarget a copy
            # on the capture's device, where the graph's example input lives
            module = copy.deepcopy(module).to(device).eval()
        program = core_aten(capture.with_weights_of(module))
        # a fresh input with another batch size, from its own generator (the run's RNG untouched)
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(example.shape[0] + 1, *example.shape[1:], generator=generator,
                            dtype=example.dtype).to(device or example.device)
        return program if reproduces(program, module, probe) else None
    except Exception:  # noqa: BLE001 - any failure just means: capture the pruned network afresh
        return None


def shared_or_fresh(capture: Optional[DenseCapture], module: nn.Module, example: torch.Tensor,
                    fresh_program: Callable):
    """(program, "dynamic"/"fixed" batch, reason) from the shared capture, else `fresh_program()`."""
    program = retargeted_program(capture, module, example)
    if program is not None:
        return program, "dynamic", None
    return fresh_program()
