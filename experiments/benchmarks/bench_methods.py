"""Paired evidence: does jointprune beat uniform, random and Torch-Pruning at equal FLOPs and epochs?

A *cell* is task x network x FLOPs budget. In every cell each method trains for the same total
epochs with the same SGD options, and the final network is scored on the task's test split:

  jointprune    JointPruneModule with agent.policy="sac" (the method)
  uniform       the same module and schedule with agent.policy="uniform" (one ratio everywhere)
  random        the same module and schedule with agent.policy="random" (one random episode)
  tp_magnitude  Torch-Pruning's own pipeline: dense training until the module's extraction epoch,
                one MetaPruner step with GroupMagnitudeImportance(p=1) (local, one common ratio
                found by bisection so FLOPs <= budget x dense, offered exactly the groups the
                module prunes), then fine-tuning for the remaining epochs (momentum sliced, the
                cosine schedule continues)
  dense         optional reference: no pruning, same epochs

The module's options are the shipped short-run config, experiments/quickstart.yaml's `model:`
section (alignment, schedule fractions, agent/reward sizes), so the benchmark follows whatever
that config says after a merge; `--set section.field=value` overrides one option for every
jointprune-type method (and `optim.*` for every method).

Pairing. Within a seed every method starts from the same initial weights (the CNN is built right
after seed_everything(seed), before anything else draws random numbers) and sees the same batches
in the same order with the same augmentation (the DataModule's order and augmentation are a
function of its seed and the epoch only; the DataModule seed is the run seed). This is CHECKED,
not assumed: each run records a SHA-1 of the initial state_dict and a SHA-1 of every training
batch's labels plus each epoch's first batch of images, as seen by the training step (a
Lightning callback for the module, the loop itself for tp_magnitude/dense). The report lists any
(cell, seed) whose methods disagree. The statistic is the per-seed difference jointprune minus
baseline, with a 95 % Student-t interval over seeds.

Each run is saved as one JSON file under results/<stem>_runs/, so a run can be split into pieces
(any subset of tasks, nets, budgets, methods, seeds), interrupted, resumed and merged: a run
whose file exists with the same settings is skipped. `--report` only rebuilds the table, JSON
and plot from the run files present.

    python experiments/benchmarks/bench_methods.py --pilot --epochs 4   # 2 seeds of one cell
    python experiments/benchmarks/bench_methods.py --tasks clutter20 --nets r20w8 --budgets 0.3 --seeds 0 1 2
    python experiments/benchmarks/bench_methods.py --report

Settings and cost (CPU seconds measured by the pilot, 4 epochs, on a 2-core machine shared by
~9 jobs: jointprune 36, uniform 36, Torch-Pruning 24 per run on clutter20 x r20w8). The paired
design removes the init and data-order part of the seed-to-seed spread; what remains is how
differently two allocations train, so the epochs go where runs stop being on the steep part of
the learning curve (8 on clutter20: a dense ResNet-20 w8 is at ~84 % there; 16 on digits, where
the issue measured a MobileNetV2 seed std of 15-18 points at 8 epochs and 4-6 at 16), and the
5,000-image cluttered test set removes test-sampling noise (0.02 points per image, against 0.28
on digits). Within ~40 min of 2 processes the grid is run in two pieces, each a ~40 min run:

    # piece 1 (the evidence): cluttered x ResNet-20 and digits x MobileNetV2, budgets 0.5/0.3, 5 seeds
    python experiments/benchmarks/bench_methods.py --tasks clutter20 --nets r20w8 --jobs 2
    python experiments/benchmarks/bench_methods.py --tasks digits16 --nets mbv2w25 --jobs 2
    # (measured: mbv2w25 does not learn digits16 in 16 epochs, its stride-2 stem on 16x16 inputs:
    # test top-1 9.8 % for uniform and 16.2 % for jointprune, seed 0 at 0.5; use vgg6 or r20w8)
    # piece 2 (the check on the other pairings), when time allows
    python experiments/benchmarks/bench_methods.py --tasks clutter20 --nets mbv2w25 --jobs 2
    python experiments/benchmarks/bench_methods.py --tasks digits16 --nets r20w8 --jobs 2
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_pruning as tp  # noqa: E402
import yaml  # noqa: E402

from jointprune.callbacks.report import evaluate  # noqa: E402
from jointprune.data import ClutteredDigitsDataModule, DigitsDataModule  # noqa: E402
from jointprune.models import CifarResNet  # noqa: E402
from jointprune.models.mobilenet_v2 import MobileNetV2  # noqa: E402
from jointprune.module import JointPruneModule  # noqa: E402
from jointprune.options import OptimOptions, PruningOptions, ScheduleOptions, resolve_epoch  # noqa: E402
from jointprune.pruning import ChannelStructure  # noqa: E402
from jointprune.pruning.extract import prune_keeping_momentum  # noqa: E402

RESULTS = HERE / "results"
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"

# Tasks: the DataModule and its options (seed added per run), and the epochs every method gets.
# digits16: scikit-learn digits at 16x16, 1438 training images, 359 test images (0.28 points each).
# clutter20: ClutteredDigitsDataModule on a 20x20 canvas (the package default is 32x32; 20 keeps a
#   run within the CPU budget at 1.6x the pixels of digits16): digits of side 10-16 px at random
#   positions, 3 fragments of 5x5 px from other digits, test digits from held-out glyphs,
#   5,000 test images (0.02 points each).
TASKS = {
    "digits16": dict(data=dict(kind="digits", resize=16, batch_size=64, reward_size=64), epochs=16),
    "clutter20": dict(data=dict(kind="cluttered", canvas=20, min_side=10, max_side=16, clutter=3, clutter_side=5,
                                train_size=2500, test_size=5000, batch_size=64, reward_size=128), epochs=8),
    # clutter20 with a 5x larger reward split (640 images) and the same 2,372 training images' count:
    # the allocation study found 128 reward images (SE about 4 points) noisier than the headroom.
    "clutter20r": dict(data=dict(kind="cluttered", canvas=20, min_side=10, max_side=16, clutter=3, clutter_side=5,
                                 train_size=3012, test_size=5000, batch_size=64, reward_size=640), epochs=8),
}
# Networks kept small so a run costs tens of seconds on one CPU core.
NETS = {
    "r20w8": dict(arch="resnet", depth=20, width=8),           # CIFAR ResNet-20, width 8/16/32
    # MobileNetV2 x0.25 with its ImageNet stem (stride 2 first conv): on CPU the CIFAR stem made
    # a step 4.5x slower than ResNet-20 w8 at the same input (depthwise convs at full resolution).
    "mbv2w25": dict(arch="mobilenetv2", width_mult=0.25, stem="imagenet"),
    # A plain VGG-style stack (a user CNN, not in the zoo): no residual coupling, and its layers'
    # FLOPs per channel differ by up to 5x, where a uniform ratio is less likely to be the best.
    "vgg6": dict(arch="vgg", widths=[16, "M", 32, "M", 64, 64, "M", 128, 128]),
}
BUDGETS = [0.5, 0.3]
METHODS = ["jointprune", "uniform", "random", "tp_magnitude"]
BASELINES = METHODS[1:]
POLICY = {"jointprune": "sac", "uniform": "uniform", "random": "random"}
LABELS = {"jointprune": "jointprune (SAC)", "uniform": "uniform ratio", "random": "random ratios",
          "tp_magnitude": "Torch-Pruning magnitude", "dense": "dense (no pruning)"}
# The pilot: 2 seeds of one cell, every method, to check the harness and time a run.
PILOT = dict(tasks=["clutter20"], nets=["r20w8"], budgets=[0.3], seeds=[0, 1])


# --------------------------------------------------------------------------- settings
def module_options(overrides: list[str]) -> dict:
    """The quickstart config's model options (minus the network and budget), then --set overrides."""
    model = yaml.safe_load(QUICKSTART.read_text())["model"]
    opts = {k: dict(v) for k, v in model.items() if isinstance(v, dict) and k != "cnn"}
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if not field or not _:
            raise SystemExit(f"--set {item!r}: give section.field=value, e.g. alignment.weight=0.01")
        opts.setdefault(section, {})[field] = yaml.safe_load(value)
    return opts


def make_data(task: str, seed: int):
    spec = dict(TASKS[task]["data"])
    kind = spec.pop("kind")
    cls = {"digits": DigitsDataModule, "cluttered": ClutteredDigitsDataModule}[kind]
    dm = cls(seed=seed, **spec)
    dm.setup("fit")
    return dm


class PlainVGG(nn.Module):
    """conv3x3-BN-ReLU per width, 2x2 max pool per "M", global average pool, linear."""

    def __init__(self, widths: list, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            if w == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def make_cnn(net: str, num_classes: int) -> nn.Module:
    spec = dict(NETS[net])
    arch = spec.pop("arch")
    if arch == "resnet":
        return CifarResNet(num_classes=num_classes, in_channels=3, **spec)
    if arch == "vgg":
        return PlainVGG(num_classes=num_classes, **spec)
    return MobileNetV2(num_classes=num_classes, in_channels=3, dropout=0.0, **spec)


def count(model: nn.Module, input_shape) -> tuple[int, int]:
    was = model.training
    model.eval()
    try:
        flops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    finally:
        model.train(was)
    return int(flops), int(params)


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class BatchHash:
    """SHA-1 of what the training step sees: every batch's labels, each epoch's first images."""

    def __init__(self) -> None:
        self.h, self.batches = hashlib.sha1(), 0

    def add(self, x: torch.Tensor, y: torch.Tensor, first: bool) -> None:
        self.h.update(y.cpu().numpy().tobytes())
        if first:
            self.h.update(x.detach().cpu().contiguous().numpy().tobytes())
        self.batches += 1

    def digest(self) -> str:
        return f"{self.h.hexdigest()[:16]}/{self.batches}"


class HashBatches(L.Callback):
    def __init__(self, hasher: BatchHash) -> None:
        self.hasher = hasher

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.hasher.add(batch[0], batch[1], batch_idx == 0)


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --------------------------------------------------------------------------- jointprune family
def run_module(method: str, task: str, net: str, budget: float, seed: int, epochs: int, opts: dict) -> dict:
    L.seed_everything(seed, verbose=False)
    dm = make_data(task, seed)
    cnn = make_cnn(net, dm.num_classes)
    init = state_hash(cnn)
    dense_flops, dense_params = count(cnn, dm.input_shape)
    kw = copy.deepcopy(opts)
    kw.setdefault("agent", {})["policy"] = POLICY[method]
    hasher = BatchHash()
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        kw.setdefault("export", {})["dirpath"] = str(export)
        model = JointPruneModule(cnn, flops_budget=budget, input_shape=dm.input_shape,
                                 num_classes=dm.num_classes, seed=seed, **kw)
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp, callbacks=[HashBatches(hasher)])
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # per-epoch summaries and the final table
            trainer.fit(model, dm)
        wall = time.perf_counter() - start
        report = json.loads((export / "pruned.json").read_text())
        net_ = model.cnn.eval()
        flops, params = count(net_, dm.input_shape)
        test_acc = evaluate(net_, dm.test_dataloader(), torch.device("cpu"))
    # independent checks: torch-pruning's counter, the budget, the reported accuracy
    assert flops == report["pruned_flops"], (flops, report["pruned_flops"])
    assert flops <= budget * dense_flops, f"{method}: {flops} FLOPs > {budget} x {dense_flops}"
    assert abs(test_acc - report["test_acc"]) < 1e-6, (test_acc, report["test_acc"])
    return dict(test_acc=test_acc, flops=flops, params=params, dense_flops=dense_flops, dense_params=dense_params,
                wall_s=wall, init_hash=init, data_hash=hasher.digest(),
                kept=[g["kept"] for g in report.get("groups", [])],
                dense_test_acc_at_extraction=report.get("dense_test_acc_at_extraction"),
                # added by the alignment work; absent on older code
                removed_mass_at_cut=report.get("removed_mass_at_cut"),
                top1_before_cut=report.get("top1_before_cut"), top1_after_cut=report.get("top1_after_cut"))


# --------------------------------------------------------------------------- Torch-Pruning baseline
def prunable_roots(model: nn.Module, input_shape, prune_coupled: bool) -> set[str]:
    """Names of every layer that produces the channels of a group the module prunes with the same
    options: the groups' roots plus layers tied to them (a MobileNetV2 depthwise conv produces its
    expansion conv's channels; leaving it in `ignored_layers` would make torch-pruning skip the group)."""
    groups = ChannelStructure(model, torch.zeros(1, *input_shape), prune_coupled=prune_coupled).groups
    return {g.name for g in groups} | {s.param_name.rsplit(".", 1)[0] for g in groups for s in g.filter_slices}


def tp_prune(model: nn.Module, ratio: float, roots: set[str], input_shape) -> nn.Module:
    """One local magnitude-pruning step of torch-pruning on `model` (in place)."""
    ignored = [m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in roots]
    pruner = tp.pruner.MetaPruner(
        model, torch.zeros(1, *input_shape), importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio, ignored_layers=ignored, global_pruning=False, isomorphic=False)
    was = model.training
    model.eval()
    pruner.step()
    model.train(was)
    return model


def tp_search_ratio(model: nn.Module, limit: float, roots: set[str], input_shape) -> float:
    """Smallest common `pruning_ratio` whose pruned copy has <= limit FLOPs.

    Local pruning keeps int(n * (1 - r)) channels of a group of n, so FLOPs are a step function
    of r that only changes at r = 1 - k/n. Bisection over one point inside each step (FLOPs fall
    as r grows) needs ~log2(#steps) real torch-pruning runs instead of a fine bisection over r."""
    sizes = sorted({m.out_channels for n, m in model.named_modules() if n in roots})
    top = 1.0 - 1.0 / sizes[0]  # beyond this the smallest group would keep int(n * (1 - r)) = 0
    edges = sorted({0.0, top} | {1.0 - k / n for n in sizes for k in range(1, n + 1) if 1.0 - k / n < top})
    candidates = [(a + b) / 2 for a, b in zip(edges, edges[1:])]  # inside each step: no rounding edge
    flops_at = lambda r: count(tp_prune(copy.deepcopy(model), r, roots, input_shape), input_shape)[0]  # noqa: E731
    lo, hi = 0, len(candidates) - 1
    if flops_at(candidates[hi]) > limit:
        raise RuntimeError(f"torch-pruning cannot reach {limit:.0f} FLOPs with the groups jointprune prunes")
    while lo < hi:
        mid = (lo + hi) // 2
        if flops_at(candidates[mid]) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return candidates[hi]


def run_plain(method: str, task: str, net: str, budget: float, seed: int, epochs: int, opts: dict) -> dict:
    """dense or tp_magnitude: a plain PyTorch loop with the module's optimizer and LR schedule."""
    L.seed_everything(seed, verbose=False)
    dm = make_data(task, seed)
    model = make_cnn(net, dm.num_classes)
    init = state_hash(model)
    dense_flops, dense_params = count(model, dm.input_shape)
    o = OptimOptions(**opts.get("optim", {}))
    if o.scheduler != "cosine":
        raise SystemExit(f"optim.scheduler={o.scheduler!r}: the plain loop mirrors only the cosine schedule.")
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                          nesterov=o.nesterov)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    extract_at = ScheduleOptions(**opts.get("schedule", {})).extract_at
    extract_at = epochs if extract_at is None else resolve_epoch("extract_at", extract_at, epochs)
    coupled = PruningOptions(**opts.get("pruning", {})).prune_coupled
    roots = prunable_roots(model, dm.input_shape, coupled) if method == "tp_magnitude" else set()
    loader = dm.train_dataloader()
    hasher, extra = BatchHash(), {}
    start = time.perf_counter()
    for epoch in range(epochs):
        if method == "tp_magnitude" and epoch == extract_at:
            extra["top1_before_cut"] = evaluate(model, dm.test_dataloader(), torch.device("cpu"))
            ratio = tp_search_ratio(model, budget * dense_flops, roots, dm.input_shape)
            extra["tp_ratio"] = ratio
            # momentum sliced to the kept channels, exactly as jointprune's own extraction does
            prune_keeping_momentum(model, opt, lambda: tp_prune(model, ratio, roots, dm.input_shape))
            extra["top1_after_cut"] = evaluate(model, dm.test_dataloader(), torch.device("cpu"))
        loader.sampler.set_epoch(epoch)  # what Lightning does: a new order every epoch
        model.train()
        for i, (x, y) in enumerate(loader):
            hasher.add(x, y, i == 0)
            loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    wall = time.perf_counter() - start
    test_acc = evaluate(model, dm.test_dataloader(), torch.device("cpu"))
    flops, params = count(model, dm.input_shape)
    if method == "tp_magnitude":
        if extract_at >= epochs:
            raise SystemExit("schedule.extract_at is the end of the run: tp_magnitude needs a fine-tuning phase.")
        assert flops <= budget * dense_flops, f"tp_magnitude: {flops} FLOPs > {budget} x {dense_flops}"
        extra["kept"] = [m.out_channels for n, m in model.named_modules() if n in roots]
    return dict(test_acc=test_acc, flops=flops, params=params, dense_flops=dense_flops, dense_params=dense_params,
                wall_s=wall, init_hash=init, data_hash=hasher.digest(), **extra)


def run_one(job: dict) -> dict:
    """One run in this process (also the entry point of --jobs worker processes)."""
    torch.set_num_threads(job["threads"])
    quiet()
    fn = run_plain if job["method"] in ("dense", "tp_magnitude") else run_module
    budget = 1.0 if job["budget"] is None else job["budget"]
    cpu = time.process_time()  # CPU seconds: a cost estimate that a loaded machine inflates less than wall time
    result = fn(job["method"], job["task"], job["net"], budget, job["seed"], job["epochs"], job["opts"])
    result["cpu_s"] = time.process_time() - cpu
    return {**{k: job[k] for k in ("task", "net", "budget", "method", "seed")}, **result,
            "settings": job["settings"], "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "git_head": git_head()}


# --------------------------------------------------------------------------- bookkeeping
def git_head() -> str:
    """HEAD commit plus ' (dirty)' when tracked files differ; read-only git calls."""
    import subprocess
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=30).stdout  # noqa: E731
        return run("rev-parse", "--short", "HEAD").strip() + (" (dirty)" if run("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_name(task, net, budget, method, seed) -> str:
    return f"{task}-{net}-{'dense' if budget is None else f'b{budget:g}'}-{method}-s{seed}.json"


def settings_of(task: str, net: str, opts: dict) -> dict:
    """Everything that makes two runs of the same cell/method/seed comparable."""
    return dict(task=TASKS[task], net=NETS[net], module_options=opts)


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- statistics
def t_interval(d: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval of the mean; (mean, nan, nan) below 2 values."""
    from scipy import stats
    m = statistics.fmean(d)
    if len(d) < 2:
        return m, math.nan, math.nan
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - half, m + half


def mean_of(runs: list[dict], key: str):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def analyse(runs: list[dict]) -> dict:
    cells = sorted({(r["task"], r["net"], r["budget"]) for r in runs if r["budget"] is not None},
                   key=lambda c: (c[0], c[1], -c[2]))
    out = {"cells": [], "pairing": {"checked": 0, "mismatches": []}}
    # pairing: every run of a (task, net, seed), whatever its method and budget, must have
    # started from the same weights and trained on the same batches
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["net"], r["seed"]), []).append(r)
    for key, rs in sorted(groups.items()):
        out["pairing"]["checked"] += 1
        for field in ("init_hash", "data_hash"):
            seen = {r.get(field) for r in rs}
            if len(seen) > 1:
                out["pairing"]["mismatches"].append(
                    f"{key}: {field} differs: " + ", ".join(f"{r['method']}@{r['budget']}={r.get(field)}" for r in rs))
    for task, net, budget in cells:
        sel = {m: sorted((r for r in runs if (r["task"], r["net"], r["budget"], r["method"]) == (task, net, budget, m)),
                         key=lambda r: r["seed"]) for m in METHODS}
        methods = {}
        for m, rs in sel.items():
            if not rs:
                continue
            accs = [100 * r["test_acc"] for r in rs]
            methods[m] = dict(n=len(rs), seeds=[r["seed"] for r in rs], acc=statistics.fmean(accs),
                              acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                              flops_ratio=statistics.fmean(r["flops"] / r["dense_flops"] for r in rs),
                              params_ratio=statistics.fmean(r["params"] / r["dense_params"] for r in rs),
                              wall_s=statistics.fmean(r["wall_s"] for r in rs), cpu_s=mean_of(rs, "cpu_s"),
                              removed_mass_at_cut=mean_of(rs, "removed_mass_at_cut"),
                              top1_before_cut=mean_of(rs, "top1_before_cut"),
                              top1_after_cut=mean_of(rs, "top1_after_cut"))
        paired = {}
        ref = {r["seed"]: r["test_acc"] for r in sel["jointprune"]}
        ref_kept = {r["seed"]: r.get("kept") for r in sel["jointprune"]}
        for b in BASELINES:
            d = [100 * (ref[r["seed"]] - r["test_acc"]) for r in sel[b] if r["seed"] in ref]
            if d:
                m, lo, hi = t_interval(d)
                verdict = "ahead" if lo > 0 else "behind" if hi < 0 else "not separated"
                # pairs where jointprune kept exactly the baseline's channel counts: there the
                # comparison says nothing about the allocation (e.g. a budget near the floor)
                same = sum(1 for r in sel[b] if r["seed"] in ref and r.get("kept") and r.get("kept") == ref_kept[r["seed"]])
                paired[b] = dict(n=len(d), mean=m, lo=lo, hi=hi, verdict=verdict, diffs=d, same_allocation=same)
        dense = [100 * r["test_acc"] for r in runs if (r["task"], r["net"], r["method"]) == (task, net, "dense")]
        out["cells"].append(dict(task=task, net=net, budget=budget, methods=methods, paired=paired,
                                 dense_acc=statistics.fmean(dense) if dense else None))
    return out


def fmt(x, spec=".2f", scale=1.0) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(scale * x, spec)


def markdown(analysis: dict, runs: list[dict]) -> str:
    lines = ["Paired comparison, jointprune minus each baseline, test top-1 points, 95 % Student-t interval over "
             "seeds (same seed = same initial weights and the same training batches; checked by hash, see below). "
             "*ahead*/*behind*: the interval excludes 0.", "",
             "| task | net | budget | baseline | n | mean Δ | 95 % CI | verdict | same allocation |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in analysis["cells"]:
        for b, p in c["paired"].items():
            lines.append(f"| {c['task']} | {c['net']} | {c['budget']:g} | {LABELS[b]} | {p['n']} | {p['mean']:+.2f} | "
                         f"[{fmt(p['lo'], '+.2f')}, {fmt(p['hi'], '+.2f')}] | {p['verdict']} | "
                         f"{p.get('same_allocation', 0)} of {p['n']} |")
    tally = {b: [c["paired"][b]["verdict"] for c in analysis["cells"] if b in c["paired"]] for b in BASELINES}
    lines += ["", "Cells where jointprune is ahead / not separated / behind: " + "; ".join(
        f"vs {LABELS[b]} {v.count('ahead')} / {v.count('not separated')} / {v.count('behind')}"
        for b, v in tally.items() if v) + ".", "",
        "Per method (mean over seeds). Removed mass: share of the norm (filters + BN) still in the removed channels "
        "at the cut; top-1 before/after cut: test top-1 of the network just before and just after physical "
        "pruning (— where the run's pruned.json does not report it).", "",
        "| task | net | budget | method | n | test top-1 % (mean ± std) | FLOPs ratio | params ratio | removed mass at cut | "
        "top-1 before → after cut | wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in analysis["cells"]:
        if c["dense_acc"] is not None:
            lines.append(f"| {c['task']} | {c['net']} | — | dense | | {c['dense_acc']:.2f} | 1.000 | 1.00 | | | | |")
        for m, s in c["methods"].items():
            cut = f"{fmt(s['top1_before_cut'], '.2f', 100)} → {fmt(s['top1_after_cut'], '.2f', 100)}"
            lines.append(f"| {c['task']} | {c['net']} | {c['budget']:g} | {LABELS[m]} | {s['n']} | {s['acc']:.2f} ± "
                         f"{s['acc_std']:.2f} | {s['flops_ratio']:.3f} | {s['params_ratio']:.2f} | "
                         f"{fmt(s['removed_mass_at_cut'], '.3f')} | {cut} | {s['wall_s']:.0f} | {fmt(s['cpu_s'], '.0f')} |")
    pairing = analysis["pairing"]
    lines += ["", f"Pairing check: {pairing['checked']} (task, net, seed) groups; "
              + ("every run in a group started from the same weights (state_dict SHA-1) and trained on the same "
                 "batches (SHA-1 of all labels and each epoch's first images, as seen by the training step)."
                 if not pairing["mismatches"] else f"{len(pairing['mismatches'])} MISMATCHES:")]
    lines += [f"- {m}" for m in pairing["mismatches"]]
    heads = sorted({r.get("git_head", "?") for r in runs})
    total = sum(r["wall_s"] for r in runs)
    cpu = sum(r.get("cpu_s") or 0 for r in runs)
    lines += ["", f"{len(runs)} runs, code at {', '.join(heads)}; summed training wall time {total / 60:.1f} min, "
              f"summed CPU time {cpu / 60:.1f} min, on a shared 2-core CPU, one torch thread per run (loose).",
              "Settings per task/net/module options are in the JSON next to this file."]
    return "\n".join(lines) + "\n"


def plot(analysis: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells = analysis["cells"]
    if not cells:
        return
    fig, axes = plt.subplots(1, len(BASELINES), figsize=(4.2 * len(BASELINES), 0.45 * len(cells) + 1.6),
                             sharey=True, squeeze=False)
    names = [f"{c['task']} {c['net']} b={c['budget']:g}" for c in cells]
    for ax, b in zip(axes[0], BASELINES):
        for i, c in enumerate(cells):
            p = c["paired"].get(b)
            if not p:
                continue
            color = {"ahead": "tab:green", "behind": "tab:red"}.get(p["verdict"], "tab:gray")
            if not math.isnan(p["lo"]):
                ax.plot([p["lo"], p["hi"]], [i, i], color=color, lw=2)
            ax.plot(p["mean"], i, "o", color=color)
            ax.plot(p["diffs"], [i + 0.2] * len(p["diffs"]), ".", color=color, alpha=0.4, ms=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"jointprune − {LABELS[b]}", fontsize=10)
        ax.set_xlabel("Δ test top-1 (points), 95 % CI")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(cells)), names, fontsize=8)
    axes[0][0].set_ylim(len(cells) - 0.4, -0.6)  # first cell on top
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(stem: str) -> None:
    runs_dir = RESULTS / f"{stem}_runs"
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))] if runs_dir.exists() else []
    analysis = analyse(runs)
    md = markdown(analysis, runs)
    (RESULTS / f"{stem}.md").write_text(md)
    write_json(RESULTS / f"{stem}.json", {"tasks": TASKS, "nets": NETS, "analysis": analysis, "runs": runs})
    plot(analysis, RESULTS / f"{stem}.png")
    print("\n" + md, flush=True)
    print(f"wrote {RESULTS / (stem + '.md')}, .json, .png from {len(runs)} run files in {runs_dir}", flush=True)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    ap.add_argument("--budgets", nargs="+", type=float, default=BUDGETS)
    ap.add_argument("--methods", nargs="+", choices=METHODS + ["dense"], default=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=None, help="override every task's epochs")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a module option from quickstart.yaml, e.g. --set alignment.weight=0.02")
    ap.add_argument("--pilot", action="store_true", help=f"2 seeds of one cell: {PILOT}")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1: sequential)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--stem", default="bench_methods_paired", help="file stem under results/")
    ap.add_argument("--fresh", action="store_true", help="rerun runs whose file exists (overwrites them)")
    ap.add_argument("--report", action="store_true", help="only rebuild table/JSON/plot from the run files")
    ap.add_argument("--dry-run", action="store_true", help="list the runs to do and stop")
    args = ap.parse_args()
    quiet()
    if args.report:
        return report(args.stem)
    if args.pilot:
        args.tasks, args.nets, args.budgets, args.seeds = PILOT["tasks"], PILOT["nets"], PILOT["budgets"], PILOT["seeds"]
    opts = module_options(args.overrides)
    runs_dir = RESULTS / f"{args.stem}_runs"
    jobs = []
    for seed in args.seeds:  # seed outermost: an interrupted run still leaves complete seeds
        for task in args.tasks:
            for net in args.nets:
                settings = settings_of(task, net, opts)
                epochs = args.epochs or TASKS[task]["epochs"]
                settings["epochs"] = epochs
                cells = ([None] if "dense" in args.methods else []) + [(b, m) for b in args.budgets
                                                                         for m in args.methods if m != "dense"]
                for cell in cells:
                    budget, method = (None, "dense") if cell is None else cell
                    path = runs_dir / run_name(task, net, budget, method, seed)
                    if path.exists() and not args.fresh:
                        old = json.loads(path.read_text())["settings"]
                        if old == json.loads(json.dumps(settings)):
                            continue
                        raise SystemExit(f"{path.name} exists with other settings: pass --fresh to overwrite it, "
                                         "or --stem to keep both")
                    jobs.append(dict(task=task, net=net, budget=budget, method=method, seed=seed, epochs=epochs,
                                     opts=opts, settings=settings, threads=args.threads, path=str(path)))
    print(f"{len(jobs)} runs to do in {runs_dir} ({args.jobs} process(es)); module options {opts}", flush=True)
    if args.dry_run:
        for j in jobs:
            print("  ", Path(j["path"]).name)
        return
    runs_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def save(i: int, result: dict, path: str) -> None:
        write_json(Path(path), result)
        print(f"[{i}/{len(jobs)}] {Path(path).stem}: test {100 * result['test_acc']:.2f}% FLOPs "
              f"{result['flops'] / result['dense_flops']:.3f} {result['wall_s']:.0f}s "
              f"(elapsed {(time.perf_counter() - start) / 60:.1f} min)", flush=True)

    if args.jobs <= 1:
        for i, job in enumerate(jobs, 1):
            save(i, run_one(job), job["path"])
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, job): job for job in jobs}
            for i, fut in enumerate(as_completed(futures), 1):
                job = futures[fut]
                try:
                    save(i, fut.result(), job["path"])
                except Exception as err:  # one failed run must not lose the others; it stays to do
                    print(f"[{i}/{len(jobs)}] {Path(job['path']).stem} FAILED: {type(err).__name__}: {err}", flush=True)
    report(args.stem)


if __name__ == "__main__":
    main()
