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
def cpu_latency_ms(model: nn.Module, input_shape, batch: int = 64, runs: int = 5) -> float:
    """Median CPU latency of one eval forward pass over `batch` inputs."""
    import copy
    model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch, *input_shape)
    model(x)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def final_report(trainer, pm, dense_arch: nn.Module | None, dense_test_acc: float | None) -> dict:
    example = torch.zeros(1, *pm.input_shape, device=pm.device)
    with eval_mode(pm.cnn):
        pruned_flops, pruned_params = tp.utils.count_ops_and_params(pm.cnn, example)
    limit = pm.flops_budget * pm.flops.dense
    if pruned_flops > limit:  # the hard guarantee, checked with the independent counter
        raise AssertionError(f"extracted network has {pruned_flops} FLOPs > budget {limit:.0f}")
    dm = trainer.datamodule
    val_acc = evaluate(pm.cnn, dm.val_dataloader(), pm.device)
    test_acc = evaluate(pm.cnn, dm.test_dataloader(), pm.device)
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
        **{k: getattr(pm, "cut_stats", {}).get(k) for k in ("removed_mass_at_cut", "top1_before_cut", "top1_after_cut")},
        "epochs": int(trainer.current_epoch),
        "input_shape": list(pm.input_shape),
        "num_classes": pm.num_classes,
        "latency_ms_batch64_cpu": {
            "dense": cpu_latency_ms(dense_arch, pm.input_shape) if dense_arch is not None else None,
            "pruned": cpu_latency_ms(pm.cnn, pm.input_shape),
        },
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
    """Bar chart of dense vs kept channels per group, next to pruned.json."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = report["groups"]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(groups)), 3.5))
    idx = range(len(groups))
    ax.bar(idx, [g["dense"] for g in groups], color="#cccccc", label="dense")
    ax.bar(idx, [g["kept"] for g in groups], color="#1f77b4", label="kept")
    ax.set_xlabel("prunable group (input to output)")
    ax.set_ylabel("channels")
    ax.set_title(f"widths at {report['flops_ratio']:.2f} of dense FLOPs (budget {report['flops_budget']})")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def log_width_plot(trainer, path: Path) -> None:
    """Send the width chart to W&B when a WandbLogger is configured (offline runs included)."""
    from lightning.pytorch.loggers import WandbLogger
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key="pruned_widths", images=[str(path)])
