"""Exact FLOPs of any choice of kept channels, in torch-pruning's counting convention.

torch-pruning's counter (`tp.utils.count_ops_and_params`) adds, per counted module call, terms
that are products of at most two channel counts (conv: in x out / groups x spatial, plus bias,
BN, activation and pooling terms linear in channels). Each channel count is affine in the kept
channels of the groups, so the whole figure is a quadratic polynomial of the kept-channel vector
k: F(k) = c + a.k + k'Bk. We *measure* the affine maps instead of deriving them: remove one
channel of each group in turn with torch-pruning's own surgery on a copy and record every counted
call's channel counts. That makes the model match the counter on the extracted network by
construction, for any CNN the counter and the dependency graph understand.
"""
from __future__ import annotations

from ..errors import JointPruneError

import copy
import math

import numpy as np
import torch
import torch.nn as nn
from torch_pruning.utils import op_counter

from .latency import probe_from_steps, timed_call
from .masks import MaskPlan
from .structure import ChannelStructure, StructureError, forward_with_hooks

_NUMEL_IN = (tuple(k for k, v in op_counter.MODULES_MAPPING.items()
                   if v in (op_counter.pool_flops_counter_hook, op_counter.bn_flops_counter_hook,
                            op_counter.ln_flops_counter_hook)))
_NUMEL_OUT = (tuple(k for k, v in op_counter.MODULES_MAPPING.items()
                    if v in (op_counter.relu_flops_counter_hook, op_counter.upsample_flops_counter_hook)))


def _record_calls(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """The quantities each counted module call's FLOPs depend on, in call order."""
    calls: list[dict] = []

    def hook(module, inputs, output):
        kind = type(module)
        inp = inputs[0]
        rec = {"kind": kind, "module": module}
        if isinstance(module, nn.modules.conv._ConvNd):
            rec.update(cin=module.in_channels, cout=module.out_channels, groups=module.groups,
                       spatial=int(np.prod(output.shape[2:])) * inp.shape[0],
                       kernel=int(np.prod(module.kernel_size)), bias=module.bias is not None)
        elif isinstance(module, nn.Linear):
            rec.update(nin=inp.numel(), cout=output.shape[-1], bias=module.bias is not None)
        elif kind in _NUMEL_IN:  # pooling and norms count their input; affine norms twice
            affine = getattr(module, "affine", getattr(module, "elementwise_affine", False))
            rec.update(nin=inp.numel(), factor=2 if affine else 1)
        elif kind in _NUMEL_OUT:  # activations and upsampling count their output
            rec.update(nout=output.numel())
        else:
            raise StructureError(f"jointprune's FLOPs model does not support {kind.__name__} layers; "
                                 "use convolutions, linear layers, norms, activations and pooling.")
        rec["timed"] = timed_call(module, inputs, output)  # what the latency model reads (timed_probe)
        calls.append(rec)

    forward_with_hooks(model, x, hook, [m for m in model.modules() if op_counter.is_supported_instance(m)])
    return calls


class Affine:
    """v(k) = v0 + w . (k - n): a channel count as a function of the kept-channel vector."""

    def __init__(self, v0: float, w: np.ndarray):
        self.v0, self.w = float(v0), w


class Quadratic:
    """F(k) = const + lin . d + d' Q d with d = k - n (deviation from dense)."""

    def __init__(self, n_groups: int):
        self.const = 0.0
        self.lin = np.zeros(n_groups)
        self.quad = np.zeros((n_groups, n_groups))

    def add_linear(self, a: Affine, scale: float) -> None:
        self.const += scale * a.v0
        self.lin += scale * a.w

    def add_product(self, a: Affine, b: Affine, scale: float) -> None:
        self.const += scale * a.v0 * b.v0
        self.lin += scale * (a.v0 * b.w + b.v0 * a.w)
        self.quad += scale * np.outer(a.w, b.w)


class FlopsModel:
    """Vectorised exact FLOPs (and the budget bounds) for a ChannelStructure."""
    name = "flops"  # a cost model's name (BudgetClipper's cost interface)

    def __init__(self, structure: ChannelStructure):
        self.structure = structure
        x = structure.example_input[:1]
        model = structure.model
        was_training = model.training
        model.eval()
        try:
            while True:
                try:
                    self.poly, self.timed_probe = self._fit(model, structure, x)
                    break
                except _BrokenGroup as broken:  # leave it dense and measure the others again
                    structure.leave_dense(broken.index, broken.reason)
        finally:
            model.train(was_training)
        self.sizes = np.asarray(structure.sizes, dtype=np.float64)
        # Symmetrise so that batched evaluation is one einsum.
        self._quad = (self.poly.quad + self.poly.quad.T) / 2
        self.dense = self(self.sizes)

    @staticmethod
    def _fit(model: nn.Module, structure: ChannelStructure, x: torch.Tensor) -> Quadratic:
        # Surgery happens on a copy, so the live model stays untouched.
        probe = copy.deepcopy(model)
        probe_structure = ChannelStructure(probe, x, prune_coupled=structure.prune_coupled, quiet=True)
        base = _record_calls(probe, x)
        module_names = {m: name for name, m in probe.named_modules()}
        timed_steps = []  # the latency model's records of the same surgery (see `timed_probe`)
        names = [g.name for g in structure.groups]
        if not set(names) <= {g.name for g in probe_structure.groups}:
            raise StructureError("the network's channel groups changed between two traces; "
                                 "jointprune needs a deterministic forward pass.")
        probe_modules = dict(probe.named_modules())
        n = len(names)
        deltas = []
        plan = MaskPlan(structure)
        removed = [torch.ones(size, dtype=torch.bool) for size in structure.sizes]  # the probe's cuts as masks
        prev = [_quantities(c) for c in base]
        for g, name in enumerate(names):
            root = probe_modules[name]
            fn = probe_structure.graph.get_pruner_of_module(root).prune_out_channels
            # One step: the last channel of each segment (a grouped conv keeps equal conv groups,
            # and removing the same offset everywhere is what torch-pruning's surgery supports).
            multiple = structure.groups[g].multiple
            segment = probe_structure.graph.get_out_channels(root) // multiple
            step = [segment * (j + 1) - 1 for j in range(multiple)]
            probe_structure.graph.get_pruning_group(root, fn, step).prune()
            removed[g][step] = False
            _check_step(probe, model, plan, removed, x, g, name)
            calls = _record_calls(probe, x)
            timed_steps.append([c["timed"] for c in calls if c["timed"] is not None])
            now = [_quantities(c) for c in calls]
            if len(now) != len(prev):
                raise StructureError("the network's forward pass changed its layer calls after pruning; "
                                     "jointprune needs a static forward pass.")
            # One channel fewer in group g changes each quantity by -w_g: every count is affine in
            # the kept channels, so a step of `multiple` channels changes it by multiple x w_g.
            deltas.append([{k: (prev[i][k] - now[i][k]) / multiple for k in prev[i]} for i in range(len(now))])
            prev = now

        def affine(i: int, key: str) -> Affine:
            return Affine(_quantities(base[i])[key], np.array([deltas[g][i][key] for g in range(n)], dtype=np.float64))

        poly = Quadratic(n)
        for i, call in enumerate(base):
            kind = call["kind"]
            if "kernel" in call:  # convolution
                depthwise = call["groups"] > 1 and call["groups"] == call["cin"] == call["cout"]
                per_position = call["kernel"] * call["spatial"]
                if depthwise:  # in x out / groups == channels, and groups shrinks with them
                    poly.add_linear(affine(i, "cout"), per_position)
                else:
                    poly.add_product(affine(i, "cin"), affine(i, "cout"), per_position / call["groups"])
                if call["bias"]:
                    poly.add_linear(affine(i, "cout"), call["spatial"])
            elif kind is nn.Linear:
                poly.add_product(affine(i, "nin"), affine(i, "cout"), 1.0)
                if call["bias"]:
                    poly.add_linear(affine(i, "cout"), 1.0)
            elif "nin" in call:
                poly.add_linear(affine(i, "nin"), call["factor"])
            else:
                poly.add_linear(affine(i, "nout"), 1.0)
        timed_base = [c for c in base if c["timed"] is not None]
        timed = probe_from_steps(structure, [c["timed"] for c in timed_base], timed_steps,
                                 [g.multiple for g in structure.groups],
                                 [module_names[c["module"]] for c in timed_base])
        return poly, timed

    def __call__(self, kept) -> float | np.ndarray:
        """FLOPs for one kept-channel vector (shape [G]) or a batch (shape [N, G])."""
        k = np.asarray(kept, dtype=np.float64)
        d = k - self.sizes
        if d.ndim == 1:
            return float(self.poly.const + self.poly.lin @ d + d @ self._quad @ d)
        return self.poly.const + d @ self.poly.lin + ((d @ self._quad) * d).sum(1)

    def group_flops(self) -> np.ndarray:
        """FLOPs that disappear when a group alone is removed entirely (a state feature)."""
        k = np.tile(self.sizes, (len(self.sizes), 1))
        np.fill_diagonal(k, 0.0)
        return self.dense - self(k)


class _BrokenGroup(Exception):
    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index, self.reason = index, reason


def _check_step(probe: nn.Module, model: nn.Module, plan: MaskPlan, masks, x: torch.Tensor, g: int, name: str) -> None:
    """The probe, cut by torch-pruning, must compute what the live model masked the same way does:
    a group whose index mapping torch-pruning got wrong (it can, silently, around a channel
    shuffle) fails here and is left dense instead of giving a masked network that extraction
    does not reproduce."""
    with torch.no_grad():
        try:
            cut = probe(x)
        except RuntimeError as err:
            raise _BrokenGroup(g, f"torch-pruning's surgery on the channels of {{names}} breaks the forward pass "
                                  f"({type(err).__name__} in a later layer: its index mapping is wrong there), so they "
                                  "stay dense") from None
        masked = plan.forward(model, x, masks)
    scale = max(1.0, float(masked.abs().max()))
    if cut.shape != masked.shape or float((cut - masked).abs().max()) > 1e-4 * scale:
        raise _BrokenGroup(g, "torch-pruning maps the channels of {names} to the wrong slices of some layer "
                              "(the cut network differs from the masked one), so they stay dense")


def _quantities(call: dict) -> dict:
    return {k: float(call[k]) for k in ("cin", "cout", "groups", "nin", "nout") if k in call}


def check_budget(budget: float, name: str = "flops_budget") -> float:
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not (0.0 < budget <= 1.0) \
            or math.isnan(budget):
        raise JointPruneError(f"{name} must be a fraction of the dense FLOPs in (0, 1], got {budget!r}.")
    return float(budget)
