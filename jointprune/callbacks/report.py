"""What a finished run reports: pruned.json's content, the final table, the width plot."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch_pruning as tp

from ..pruning.masks import eval_mode
from ..utils.atomic import atomic_write_bytes


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, masks=None, plan=None) -> float:
    """Top-1 accuracy of `model` (optionally masked) over a loader."""
    correct = total = 0
    with eval_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = plan.forward(model, x, masks) if masks is not None else model(x)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    return correct / max(total, 1)


@torch.no_grad()
def cpu_latencies_ms(models: dict, input_shape, batch: int = 64, runs: int = 3) -> dict:
    """Median CPU latency per model, the runs interleaved (a, b, a, b, ...) after one warm-up
    each, so drift on a busy machine hits every model alike with fewer runs in all."""
    import copy
    live = {k: copy.deepcopy(m).cpu().eval() for k, m in models.items() if m is not None}
    x = torch.randn(batch, *input_shape)
    times = {k: [] for k in live}
    for m in live.values():
        m(x)  # warm-up
    for _ in range(runs):
        for k, m in live.items():
            start = time.perf_counter()
            m(x)
            times[k].append((time.perf_counter() - start) * 1000)
    return {k: (statistics.median(times[k]) if k in times else None) for k in models}


def final_report(trainer, pm, dense_arch: nn.Module | None, dense_test_acc: float | None) -> dict:
    example = torch.zeros(1, *pm.input_shape, device=pm.device)
    with eval_mode(pm.cnn):
        pruned_flops, pruned_params = tp.utils.count_ops_and_params(pm.cnn, example)
    limit = pm.flops_budget * pm.flops.dense
    if pruned_flops > limit:  # the hard guarantee, checked with the independent counter
        raise AssertionError(f"extracted network has {pruned_flops} FLOPs > budget {limit:.0f}")
    dm = trainer.datamodule
    test_acc = evaluate(pm.cnn, dm.test_dataloader(), pm.device)
    val_is_test = getattr(dm, "splits", None) is not None and len(dm.splits.get("val", ())) == 0
    val_acc = test_acc if val_is_test else evaluate(pm.cnn, dm.val_dataloader(), pm.device)  # one pass when same set
    kept = [int(m.sum()) for m in pm.incumbent_masks]
    return {
        "dense_flops": int(pm.flops.dense),
        "pruned_flops": int(pruned_flops),
        "flops_ratio": pruned_flops / pm.flops.dense,
        "flops_budget": pm.flops_budget,
        "dense_params": int(pm.dense_params),
        "pruned_params": int(pruned_params),
        "groups": [{"name": g.name, "dense": g.size, "kept": k} for g, k in zip(pm.structure.groups, kept)],
        "val_acc": val_acc,
        "test_acc": test_acc,
        "dense_test_acc_at_extraction": dense_test_acc,
        "extracted_at_epoch": getattr(pm, "extracted_at", None),
        "epochs": int(trainer.current_epoch),
        "input_shape": list(pm.input_shape),
        "num_classes": pm.num_classes,
        "latency_ms_batch64_cpu": cpu_latencies_ms({"dense": dense_arch, "pruned": pm.cnn}, pm.input_shape,
                                                   runs=pm.export_opts.latency_runs),
        "history": pm.history,
    }


def print_final_table(report: dict, dirpath: Path) -> None:
    lat = report["latency_ms_batch64_cpu"]
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    rows = [
        ("FLOPs", f"{report['dense_flops']:,}", f"{report['pruned_flops']:,}",
         f"{report['flops_ratio']:.3f} (budget {report['flops_budget']})"),
        ("parameters", f"{report['dense_params']:,}", f"{report['pruned_params']:,}",
         f"{report['pruned_params'] / report['dense_params']:.3f}"),
        ("test top-1", fmt(report["dense_test_acc_at_extraction"], ".4f"), f"{report['test_acc']:.4f}", ""),
        ("CPU latency ms (batch 64)", fmt(lat["dense"], ".1f"), f"{lat['pruned']:.1f}",
         "" if lat["dense"] is None else f"{lat['dense'] / lat['pruned']:.2f}x faster"),
    ]
    lines = ["", "| | dense | pruned | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append(f"(dense test top-1 = the dense weights just before extraction; files in {dirpath})")
    print("\n".join(lines), flush=True)


def save_width_plot(report: dict, path: Path) -> None:
    """Bar chart of dense vs kept channels per group, next to pruned.json (Pillow: width_chart.py)."""
    from .width_chart import save_width_chart
    save_width_chart(report, path)


def log_width_plot(trainer, path: Path) -> None:
    """Send the width chart to W&B when a WandbLogger is configured (offline runs included)."""
    from lightning.pytorch.loggers import WandbLogger
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key="pruned_widths", images=[str(path)])
