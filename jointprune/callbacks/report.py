"""What a finished run reports: pruned.json's content, the final table, the width plot."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import JointPruneError
from ..pruning.export import ExportError, load_report
from ..pruning.latency_table import time_ms
from ..pruning.masks import eval_mode
from .latency_report import latency_fields, latency_rows


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
    each, so drift on a busy machine hits every model alike with fewer runs in all. Inference as
    deployed: no autograd, a steady host allocator (utils/allocator.py)."""
    import copy
    live = {k: copy.deepcopy(m).to("cpu", memory_format=torch.contiguous_format).eval()
            for k, m in models.items() if m is not None}
    x = torch.randn(batch, *input_shape)
    times = {k: [] for k in live}
    cpu = torch.device("cpu")
    for m in live.values():
        time_ms(lambda: m(x), cpu, 1, 0)  # warm-up
    for _ in range(runs):
        for k, m in live.items():
            times[k] += time_ms(lambda: m(x), cpu, 0, 1)
    return {k: (statistics.median(times[k]) if k in times else None) for k in models}


def final_report(trainer, pm, dense_arch: nn.Module | None, dense_test_acc: float | None,
                 pruned_test_acc_at_cut: float | None = None, baseline: dict | None = None) -> dict:
    """pruned.json's content, built in this one place (other callbacks add keys by name)."""
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
    masks = [m.cpu() for m in pm.incumbent_masks]
    kept = [int(m.sum()) for m in masks]
    shares = flops_shares(pm.flops, kept)
    return {
        "dense_flops": int(pm.flops.dense),
        "pruned_flops": int(pruned_flops),
        "flops_ratio": pruned_flops / pm.flops.dense,
        "flops_budget": pm.flops_budget,
        "dense_params": int(pm.dense_params),
        "pruned_params": int(pruned_params),
        # kept_indices: the dense channel indices kept, so load_pruned(path, into=net) can replay the cut
        "groups": [{"name": g.name, "dense": g.size, "kept": k, "kept_fraction": k / g.size, "flops_share": s,
                    "kept_indices": torch.nonzero(m).flatten().tolist()}
                   for g, k, s, m in zip(pm.structure.groups, kept, shares, masks)],
        "model_class": type(pm.cnn).__qualname__,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "dense_test_acc_at_extraction": dense_test_acc,
        "pruned_test_acc_at_extraction": pruned_test_acc_at_cut,
        "extracted_at_epoch": getattr(pm, "extracted_at", None),
        **{k: getattr(pm, "cut_stats", {}).get(k) for k in ("removed_mass_at_cut", "top1_before_cut", "top1_after_cut")},
        "epochs": int(trainer.current_epoch),
        "baseline": baseline,
        "input_shape": list(pm.input_shape),
        "num_classes": pm.num_classes,
        **data_description(dm),
        "latency_ms_batch64_cpu": cpu_latencies_ms({"dense": dense_arch, "pruned": pm.cnn}, pm.input_shape,
                                                   runs=pm.export_opts.latency_runs),
        "history": pm.history,
        **latency_fields(pm, dense_arch),
    }


def baseline_summary(path) -> dict | None:
    """The figures the final table compares against, from `model.export.baseline` (an export
    folder, e.g. of the same config run dense: flops_budget 1.0, agent.policy uniform)."""
    if not path:
        return None
    try:
        report = load_report(path)
    except ExportError as err:
        raise JointPruneError(f"model.export.baseline={str(path)!r}: {err}") from None
    ratio = report["pruned_flops"] / report["dense_flops"] if report.get("dense_flops") else None
    return {"path": str(path), "test_acc": report.get("test_acc"), "val_acc": report.get("val_acc"),
            "flops_ratio": ratio, "pruned_flops": report.get("pruned_flops")}


def flops_shares(flops, kept: list[int]) -> list[float]:
    """Per group, the fraction of the pruned network's FLOPs that depend on its channels (what
    would vanish if the group were removed). A layer between two groups counts for both, so the
    shares overlap and need not sum to 1."""
    k = np.asarray(kept, dtype=np.float64)
    total = flops(k)
    trial = np.tile(k, (len(k), 1))
    np.fill_diagonal(trial, 0.0)
    return [float(v) for v in (total - flops(trial)) / total]


def data_description(dm) -> dict:
    """What a user needs to feed the pruned network new images: normalisation, preprocessing
    and class names, read from the DataModule when it offers them (None otherwise)."""
    norm = getattr(dm, "normalization", None)
    classes = getattr(dm, "classes", None)
    return {
        "normalization": None if norm is None else {"mean": [float(v) for v in norm["mean"]],
                                                    "std": [float(v) for v in norm["std"]],
                                                    "input_range": [0.0, 1.0]},
        "preprocess": getattr(dm, "preprocess", None),
        "classes": None if classes is None else [str(c) for c in classes],
        "data": type(dm).__name__ if dm is not None else None,
    }


def _latency(report: dict) -> tuple[float | None, float | None, str]:
    """(dense ms, pruned ms, what was timed) from whichever latency fields the report carries."""
    if report.get("pruned_latency_ms") is not None:
        where = ", ".join(str(report[k]) for k in ("device", "batch", "threads") if report.get(k) is not None)
        return report.get("dense_latency_ms"), report["pruned_latency_ms"], f"latency ms ({where})" if where else "latency ms"
    lat = report.get("latency_ms_batch64_cpu") or {}
    return lat.get("dense"), lat.get("pruned"), "CPU latency ms (batch 64)"


def speed_words(dense_ms: float, pruned_ms: float) -> str:
    """'1.52x faster' or '1.25x slower': never a ratio below 1 called faster."""
    if pruned_ms <= dense_ms:
        return f"{dense_ms / pruned_ms:.2f}x faster"
    return f"{pruned_ms / dense_ms:.2f}x slower"


def table_lines(report: dict, dirpath: Path) -> list[str]:
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    diff = lambda a, b: "" if a is None or b is None else f"{b - a:+.4f}"  # noqa: E731
    dense_ms, pruned_ms, lat_label = _latency(report)
    rows = [
        ("FLOPs", f"{report['dense_flops']:,}", f"{report['pruned_flops']:,}",
         f"{report['pruned_flops'] / report['dense_flops']:.3f} (budget {report['flops_budget']})"),
        ("parameters", f"{report['dense_params']:,}", f"{report['pruned_params']:,}",
         f"{report['pruned_params'] / report['dense_params']:.3f}"),
        (lat_label, fmt(dense_ms, ".1f"), fmt(pruned_ms, ".1f"),
         "" if dense_ms is None or pruned_ms is None else f"{pruned_ms / dense_ms:.2f} ({speed_words(dense_ms, pruned_ms)})"),
    ]
    cut = report.get("extracted_at_epoch")
    dense_cut, pruned_cut = report.get("dense_test_acc_at_extraction"), report.get("pruned_test_acc_at_extraction")
    if dense_cut is not None:  # like with like: the same weights, just before and just after the cut
        rows.append((f"test top-1 at the cut (epoch {cut})", f"{dense_cut:.4f}", fmt(pruned_cut, ".4f"),
                     diff(dense_cut, pruned_cut)))
    base = report.get("baseline")
    end = f"test top-1 at the end (epoch {report.get('epochs')})"
    if base and base.get("test_acc") is not None:
        rows.append((end, f"{base['test_acc']:.4f} (baseline run)", f"{report['test_acc']:.4f}",
                     diff(base["test_acc"], report["test_acc"])))
    else:
        rows.append((end, "not measured", f"{report['test_acc']:.4f}", ""))
    rows += latency_rows(report)
    lines = ["", "| | dense | pruned | pruned / dense |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    notes = []
    if dense_cut is not None:
        notes.append("at the cut: the dense weights and the network just cut from them, before the small "
                     "network trained on")
    if base and base.get("test_acc") is not None:
        notes.append(f"baseline: the export at {base.get('path')} ({base.get('flops_ratio', 1.0):.3f} of dense FLOPs)")
    elif report["pruned_flops"] == report["dense_flops"]:
        notes.append("this run kept every channel: it is itself a dense baseline for runs of the same config "
                     "(pass this folder as --model.export.baseline)")
    else:
        notes.append("no dense network was trained to the end; for one, run the same config with "
                     "--model.flops_budget 1.0 --model.agent.policy uniform and pass its export as "
                     "--model.export.baseline")
    if dense_ms is not None:
        notes.append("the dense latency is timed on an untrained copy of the same architecture")
    lines.append("(" + "; ".join(notes) + f". Files in {dirpath}.)")
    return lines


def print_final_table(report: dict, dirpath: Path) -> None:
    print("\n".join(table_lines(report, dirpath)), flush=True)


def width_plot_png(report: dict) -> bytes:
    """Per group (by index and name, input to output): the kept fraction of its channels, and the
    share of the pruned network's FLOPs (and latency, when budgeted) that depends on it."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = report["groups"]
    n = len(groups)
    idx = np.arange(n)
    latency = report.get("latency_budget") is not None and all(g.get("latency_share") is not None for g in groups)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(max(6.0, 0.28 * n + 2), 5.5),
                                      gridspec_kw={"height_ratios": [3, 2]})
    fraction = [g.get("kept_fraction", g["kept"] / g["dense"]) for g in groups]
    top.bar(idx, [1.0] * n, color="#dddddd", label="dense")
    top.bar(idx, fraction, color="#1f77b4", label="kept")
    for i, g in enumerate(groups):
        if n <= 40:
            top.text(i, min(fraction[i] + 0.02, 1.02), f"{g['kept']}/{g['dense']}", ha="center", va="bottom",
                     fontsize=6, rotation=90)
    top.set_ylim(0, 1.25)
    top.set_ylabel("kept fraction")
    top.legend(loc="upper right", fontsize=7, ncol=2)
    width = 0.4 if latency else 0.8
    shares = [g.get("flops_share") for g in groups]
    if all(s is not None for s in shares):
        bottom.bar(idx - (width / 2 if latency else 0), shares, width, color="#ff7f0e", label="FLOPs share")
    if latency:
        bottom.bar(idx + width / 2, [g["latency_share"] for g in groups], width, color="#2ca02c", label="latency share")
    bottom.set_ylabel("share of pruned\nnetwork")
    bottom.legend(loc="upper right", fontsize=7)
    step = max(1, int(np.ceil(n / 40)))
    bottom.set_xticks(idx[::step])
    bottom.set_xticklabels([f"{i}: {groups[i]['name']}" for i in idx[::step]], rotation=90, fontsize=6)
    bottom.set_xlabel("prunable group (index: root layer), input to output")
    title = f"kept channels per group: {report['pruned_flops'] / report['dense_flops']:.3f} of dense FLOPs " \
            f"(budget {report['flops_budget']})"
    if report.get("latency_budget") is not None:
        title += f", latency budget {report['latency_budget']}"
    top.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def log_width_plot(trainer, path: Path) -> None:
    """Send the width chart to W&B when a WandbLogger is configured (offline runs included)."""
    from lightning.pytorch.loggers import WandbLogger
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key="pruned_widths", images=[str(path)])
