"""The reward: top-1 accuracy of a masked sub-network on the reward split (`reward.metric: top1`,
the paper's), or the mean probability it gives the true class (`true_prob`): top-1's smooth
counterpart on the same 0-1 scale, which tells two sub-networks apart on fewer images because
every image counts by how sure the network is, not only the few it classifies differently.

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

from ..errors import JointPruneError
from ..pruning.masks import MaskPlan, eval_mode

METRICS = ("top1", "true_prob")


def check_reward_metric(metric) -> None:
    if metric not in METRICS:
        raise JointPruneError(f"model.reward.metric={metric!r} is not a reward; use one of {list(METRICS)}.")


class RewardScorer:
    """`x` may be kept compact (uint8, 4x smaller than float32) with `normalize` turning each
    batch into the network's input on the device; `precision` is a context-manager factory (the
    trainer's autocast under bf16-mixed) that scoring and recalibration run under. `metric`:
    "top1" or "true_prob" (see the module's docstring)."""

    def __init__(self, plan: MaskPlan, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 precision: Callable[[], ContextManager] | None = None, metric: str = "top1"):
        check_reward_metric(metric)
        self.plan, self.x, self.y, self.batch_size, self.metric = plan, x, y, batch_size, metric
        self.all_reduce = all_reduce
        self.normalize = normalize or (lambda xb: xb)
        self.precision = precision or nullcontext

    @torch.no_grad()
    def __call__(self, model: nn.Module, masks: list[torch.Tensor] | None,
                 recalibrate: Iterable[torch.Tensor] | None = None, batch_stats: bool = False) -> float:
        """`recalibrate`: batches to re-estimate BN statistics on first; `batch_stats`: score with
        each reward batch's own BN statistics instead (one pass). Live statistics are restored."""
        return self.score(model, masks, recalibrate, batch_stats)[0]

    @torch.no_grad()
    def score(self, model: nn.Module, masks: list[torch.Tensor] | None,
              recalibrate: Iterable[torch.Tensor] | None = None, batch_stats: bool = False):
        """(the reward over every rank's images, this rank's per-image values: hits as a bool
        tensor for top1, the true class's probability as a float tensor for true_prob): they let
        two sub-networks be compared on the same images (`paired_gain`)."""
        with self.precision():
            return self._score(model, masks, recalibrate, batch_stats)

    def paired_gain(self, hits_a: torch.Tensor, hits_b: torch.Tensor) -> tuple[float, float]:
        """(reward of b minus reward of a, the standard error of that difference) on the same
        images. For hits (top1) this is McNemar's: only the images the two classify differently
        count, so two similar sub-networks are told apart with far fewer images than two separate
        top-1 errors would need, and the difference is shrunk by one image toward zero (the
        continuity correction: with few disagreements, 2 to 0 is no evidence). For probabilities
        (true_prob) it is the paired mean difference and its standard error."""
        if hits_a.dtype != torch.bool:
            return self._paired_mean_gain(hits_a, hits_b)
        counts = torch.stack([(hits_b & ~hits_a).sum(), (hits_a & ~hits_b).sum(),
                              torch.tensor(len(hits_a), device=hits_a.device)]).double()
        if self.all_reduce is not None:
            counts = self.all_reduce(counts)
        b_only, a_only, n = (float(v) for v in counts.cpu())
        if n <= 0:
            return 0.0, 0.0
        diff = (b_only - a_only) / n
        var = max((b_only + a_only) / n - diff * diff, 0.0)
        corrected = max(abs(b_only - a_only) - 1.0, 0.0) / n
        return (corrected if diff >= 0 else -corrected), (var / n) ** 0.5

    def _paired_mean_gain(self, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        d = (b - a).double()
        sums = torch.stack([d.sum(), (d * d).sum(), torch.tensor(float(len(d)), device=d.device, dtype=torch.double)])
        if self.all_reduce is not None:
            sums = self.all_reduce(sums)
        total, squares, n = (float(v) for v in sums.cpu())
        if n <= 0:
            return 0.0, 0.0
        mean = total / n
        var = max(squares / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)
        return mean, (var / n) ** 0.5

    def _score(self, model, masks, recalibrate, batch_stats):
        saved = recalibrate_bn(model, self.plan, masks, recalibrate) if recalibrate is not None else None
        if batch_stats and saved is None:
            saved = {k: v.clone() for k, v in model.named_buffers()}
        try:
            with eval_mode(model), bn_batch_stats(model, batch_stats):
                params = self.plan.masked_parameters(model, masks) if masks is not None else None
                correct = torch.zeros(2, device=self.x.device)
                hits = []
                for i in range(0, len(self.x), self.batch_size):
                    xb = self.normalize(self.x[i:i + self.batch_size])
                    if params is None:
                        logits = model(xb)
                    else:
                        logits = torch.func.functional_call(model, params, (xb,), strict=False)
                    yb = self.y[i:i + self.batch_size]
                    if self.metric == "top1":
                        hits.append(logits.argmax(1) == yb)
                    else:  # softmax in float32 whatever the autocast dtype: a sum of probabilities
                        hits.append(logits.float().softmax(1).gather(1, yb[:, None])[:, 0])
                    correct[0] += hits[-1].sum()
                correct[1] += len(self.x)
        finally:
            if saved is not None:
                restore_buffers(model, saved)
        if self.all_reduce is not None:
            correct = self.all_reduce(correct)
        empty_dtype = torch.bool if self.metric == "top1" else torch.float32
        hits = torch.cat(hits) if hits else torch.zeros(0, dtype=empty_dtype, device=self.x.device)
        return float(correct[0] / correct[1].clamp_min(1)), hits


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
