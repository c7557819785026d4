"""The reward: top-1 accuracy of a masked sub-network on the reward split.

Under DDP each rank scores its own shard of the reward split and the counts are summed, so
every rank gets the same reward while the work is divided. Optional BN recalibration
re-estimates the BN statistics of the candidate on a few training batches first; the live
network's statistics are restored afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Iterable

import torch
import torch.nn as nn

from ..pruning.masks import MaskPlan, eval_mode


class RewardScorer:
    """`x` may be kept compact (uint8, 4x smaller than float32) with `normalize` turning each
    batch into the network's input on the device; `precision` is a context-manager factory (the
    trainer's autocast under bf16-mixed) that scoring and recalibration run under."""

    def __init__(self, plan: MaskPlan, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 precision: Callable[[], ContextManager] | None = None):
        self.plan, self.x, self.y, self.batch_size = plan, x, y, batch_size
        self.all_reduce = all_reduce
        self.normalize = normalize or (lambda xb: xb)
        self.precision = precision or nullcontext

    @torch.no_grad()
    def __call__(self, model: nn.Module, masks: list[torch.Tensor] | None,
                 recalibrate: Iterable[torch.Tensor] | None = None, batch_stats: bool = False) -> float:
        """`recalibrate`: batches to re-estimate BN statistics on first; `batch_stats`: score with
        each reward batch's own BN statistics instead (one pass). Live statistics are restored."""
        with self.precision():
            return self._score(model, masks, recalibrate, batch_stats)

    def _score(self, model, masks, recalibrate, batch_stats) -> float:
        saved = recalibrate_bn(model, self.plan, masks, recalibrate) if recalibrate is not None else None
        if batch_stats and saved is None:
            saved = {k: v.clone() for k, v in model.named_buffers()}
        try:
            with eval_mode(model), bn_batch_stats(model, batch_stats):
                params = self.plan.masked_parameters(model, masks) if masks is not None else None
                correct = torch.zeros(2, device=self.x.device)
                for i in range(0, len(self.x), self.batch_size):
                    xb = self.normalize(self.x[i:i + self.batch_size])
                    if params is None:
                        logits = model(xb)
                    else:
                        logits = torch.func.functional_call(model, params, (xb,), strict=False)
                    correct[0] += (logits.argmax(1) == self.y[i:i + self.batch_size]).sum()
                correct[1] += len(self.x)
        finally:
            if saved is not None:
                restore_buffers(model, saved)
        if self.all_reduce is not None:
            correct = self.all_reduce(correct)
        return float(correct[0] / correct[1].clamp_min(1))


@contextmanager
def bn_batch_stats(model: nn.Module, enabled: bool):
    """Only the BN layers in train mode (batch statistics); dropout and the rest stay in eval."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []
    for m in bns:
        m.train()
    try:
        yield
    finally:
        for m in bns:
            m.eval()


def recalibrate_bn(model: nn.Module, plan: MaskPlan, masks, batches) -> dict:
    """Re-estimate BN running statistics under `masks`; returns the buffers to restore."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    was = model.training
    model.train()
    try:
        for xb in batches:
            plan.forward(model, xb, masks)
    finally:
        model.train(was)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    return saved


def restore_buffers(model: nn.Module, saved: dict) -> None:
    for k, v in model.named_buffers():
        v.copy_(saved[k])
