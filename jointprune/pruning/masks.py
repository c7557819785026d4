"""Channel masks on the live network, without copying it and without touching its weights.

A mask zeroes every *produced* slice of the removed channels (the producing filters, their
biases, their BN's gamma and beta). Activations of CNNs map 0 to 0, so the removed channels
carry exact zeros to every consumer: the masked network computes what the physically extracted
one does. The masked parameters are passed with `torch.func.functional_call`, so the module's
own parameters are never mutated and gradients still reach them through the multiplication.
"""
from __future__ import annotations

from ..errors import JointPruneError

from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.func import functional_call

from .structure import ChannelStructure


class MaskError(JointPruneError):
    pass


class MaskPlan:
    """Precomputed per-parameter indexing so that applying masks is a few vector ops."""

    def __init__(self, structure: ChannelStructure):
        self.structure = structure
        # param name -> list of (group index, dim, local idx, root idx)
        self.by_param: dict[str, list] = {}
        for g in structure.groups:
            for s in g.out_slices:
                self.by_param.setdefault(s.param_name, []).append((g.index, s.dim, s.local_idx, s.root_idx))

    def validate(self, masks: list[torch.Tensor]) -> None:
        sizes = self.structure.sizes
        if len(masks) != len(sizes):
            raise MaskError(f"expected one mask per prunable group ({len(sizes)}), got {len(masks)}.")
        for i, (m, n) in enumerate(zip(masks, sizes)):
            if m.shape != (n,):
                raise MaskError(f"mask {i} must have shape ({n},) for group '{self.structure.groups[i].name}', "
                                f"got {tuple(m.shape)}.")
            if not bool(m.any()):
                raise MaskError(f"mask {i} removes every channel of group '{self.structure.groups[i].name}'; keep at least one.")

    def masked_parameters(self, model: nn.Module, masks: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The parameters that change under `masks`, multiplied by them (differentiable)."""
        self.validate(masks)
        params = dict(model.named_parameters())
        out = {}
        for name, slices in self.by_param.items():
            p = params[name]
            factor = None
            for g, dim, local, root in slices:
                size = p.shape[dim]
                f = torch.ones(size, device=p.device, dtype=p.dtype)
                f[local.to(p.device)] = masks[g].to(device=p.device, dtype=p.dtype)[root.to(p.device)]
                shape = [1] * p.dim()
                shape[dim] = size
                f = f.view(shape)
                factor = f if factor is None else factor * f
            out[name] = p * factor
        return out

    def forward(self, model: nn.Module, x: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
        if masks is None:
            return model(x)
        return functional_call(model, self.masked_parameters(model, masks), (x,), strict=False)


def full_masks(structure: ChannelStructure, device=None) -> list[torch.Tensor]:
    return [torch.ones(n, dtype=torch.bool, device=device) for n in structure.sizes]


@contextmanager
def eval_mode(model: nn.Module):
    """Evaluate in eval mode and restore the caller's mode afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
