"""Does the learned agent beat simpler ways to reach the same FLOPs? (issue "Evidence")

For each task x FLOPs budget x seed, every method gets the SAME total epoch budget and the same
SGD schedule (lr 0.1, momentum 0.9, wd 1e-4, cosine over all epochs), then the final pruned
network is scored on the DataModule's test split:

  jointprune    JointPruneModule, agent.policy="sac" (the method)
  uniform       same run, AgentOptions(policy="uniform"): one common ratio in every group
  random        same run, AgentOptions(policy="random"): one random feasible episode
  tp_magnitude  Torch-Pruning's own pipeline: train dense until jointprune's extraction epoch,
                prune once with tp.pruner.MetaPruner + GroupMagnitudeImportance(p=1) (local,
                isomorphic=False), fine-tune for the remaining epochs (SGD momentum sliced, LR
                schedule continues). Only the groups jointprune prunes by default are offered:
                every conv/linear that is not the root of a jointprune group (stem, residual-
                coupled convs, shortcuts, classifier) is in `ignored_layers`, so residual
                channels stay intact. One common `pruning_ratio` is found by bisection so that
                tp.utils.count_ops_and_params lands at or under budget x dense.
  no_envrepr    jointprune with EnvReprOptions(enabled=False) (z fixed)
  no_align      jointprune with AlignmentOptions(weight=0.0)
  dense         no pruning, same total epochs (reference row)

FLOPs and parameters are counted with torch-pruning's counter on the final network (for
jointprune-type runs: the exported pruned.pt, reloaded) and asserted <= budget x dense.

    python experiments/benchmarks/bench_methods.py --quick          # smoke run, ~1-2 min
    python experiments/benchmarks/bench_methods.py                  # full run, see results/
    python experiments/benchmarks/bench_methods.py --tasks digits16-r20w8 --budgets 0.3 0.2 --seeds 0 1

Results go to experiments/benchmarks/results/bench_methods{,_quick}.{json,md,png}. The JSON is
rewritten after every run; a rerun with the same settings skips the runs already in it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
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
sys.path.insert(0, str(HERE.parents[1]))  # run from anywhere without installing

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_pruning as tp  # noqa: E402

from jointprune import load_pruned  # noqa: E402
from jointprune.callbacks.report import evaluate  # noqa: E402
from jointprune.data import DigitsDataModule  # noqa: E402
from jointprune.models import CifarResNet  # noqa: E402
from jointprune.module import JointPruneModule  # noqa: E402
from jointprune.options import (AgentOptions, AlignmentOptions, EnvReprOptions, ExportOptions,  # noqa: E402
                                OptimOptions, RewardOptions, ScheduleOptions)
from jointprune.pruning import ChannelStructure  # noqa: E402
from jointprune.pruning.extract import prune_keeping_momentum  # noqa: E402

RESULTS = HERE / "results"

# Two offline tasks, both scikit-learn digits upsampled to 16x16 (3 channels):
#  - "digits16-r20w16": CIFAR ResNet-20 at its usual width 16 (the quickstart network);
#  - "digits16-r20w8":  the same depth at width 8 (inner groups of 8/16/32 channels), so every
#    removed channel matters more. Budget 0.2 is NOT offered there: with jointprune's default
#    max_ratio=0.8 (and residual channels never pruned) the smallest reachable network already
#    has 0.273 of the dense FLOPs, so JointPruneModule rightly refuses flops_budget=0.2.
TASKS = {
    "digits16-r20w16": dict(resize=16, depth=20, width=16, budgets=[0.7, 0.5, 0.3]),
    "digits16-r20w8": dict(resize=16, depth=20, width=8, budgets=[0.7, 0.5, 0.3]),
}
METHODS = ["jointprune", "uniform", "random", "tp_magnitude", "no_envrepr", "no_align"]
# Optional diagnostics, run only when named in --methods: the method with an alignment weight
# large enough to act within a 10-epoch run. The default lambda = 1e-4 comes from 200-epoch CIFAR
# schedules; with lr <= 0.1 and ~50 SGD steps between the first incumbent and extraction it moves
# a removed filter's norm by ~1e-3, i.e. not at all (no_align ~ jointprune in the table).
STRONG_ALIGN = 2e-2
EXTRA_METHODS = ["jointprune_strong_align", "uniform_strong_align"]
LABELS = {"jointprune": "jointprune (SAC)", "uniform": "uniform ratio", "random": "random ratios",
          "tp_magnitude": "Torch-Pruning magnitude", "no_envrepr": "jointprune, no env. repr.",
          "no_align": "jointprune, no alignment", "dense": "dense (no pruning)",
          "jointprune_strong_align": f"jointprune, λ={STRONG_ALIGN:g} (extra)",
          "uniform_strong_align": f"uniform ratio, λ={STRONG_ALIGN:g} (extra)"}

# Epoch schedule shared by all methods. Full: 10 epochs; agent acts at the end of epochs 1..4,
# incumbent frozen from 5 (alignment continues), physical pruning at the start of epoch 7,
# small network trains epochs 7..9. tp_magnitude trains dense epochs 0..6 and fine-tunes 7..9.
FULL = dict(max_epochs=10, warmup=1, agent_until=5, extract_at=7,
            episodes=5, sac_updates=50, decoder_steps=50, env_dim=32, reward_size=128)
QUICK = dict(max_epochs=4, warmup=1, agent_until=3, extract_at=3,
             episodes=3, sac_updates=10, decoder_steps=10, env_dim=16, reward_size=64)


# --------------------------------------------------------------------------- shared pieces
def make_data(task: dict, cfg: dict) -> DigitsDataModule:
    # The split seed is fixed (0): every method and seed sees the same 360 test images, so
    # differences between methods are paired; the run seed changes init, data order, agent.
    dm = DigitsDataModule(resize=task["resize"], batch_size=128, reward_size=cfg["reward_size"], seed=0)
    dm.setup("fit")
    return dm


def make_cnn(task: dict) -> nn.Module:
    return CifarResNet(depth=task["depth"], width=task["width"], num_classes=10, in_channels=3)


def count(model: nn.Module, input_shape) -> tuple[int, int]:
    was = model.training
    model.eval()
    try:
        flops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    finally:
        model.train(was)
    return int(flops), int(params)


def make_optimizer(model: nn.Module, max_epochs: int):
    o = OptimOptions()  # the same defaults JointPruneModule uses
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                          nesterov=o.nesterov)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)


def train_epoch(model: nn.Module, opt, loader) -> None:
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


# --------------------------------------------------------------------------- jointprune family
def run_jointprune(method: str, task: dict, budget: float, seed: int, cfg: dict) -> dict:
    L.seed_everything(seed, verbose=False)
    dm = make_data(task, cfg)
    cnn = make_cnn(task)
    dense_flops, dense_params = count(cnn, dm.input_shape)
    policy = {"uniform": "uniform", "uniform_strong_align": "uniform", "random": "random"}.get(method, "sac")
    agent = AgentOptions(policy=policy,
                         episodes_per_epoch=cfg["episodes"], sac_updates=cfg["sac_updates"], random_epochs=1)
    env = EnvReprOptions(enabled=method != "no_envrepr", dim=cfg["env_dim"], decoder_steps=cfg["decoder_steps"])
    align = AlignmentOptions(weight=0.0) if method == "no_align" else AlignmentOptions()
    if method.endswith("_strong_align"):
        align = AlignmentOptions(weight=STRONG_ALIGN)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        model = JointPruneModule(
            cnn, flops_budget=budget, input_shape=dm.input_shape, num_classes=dm.num_classes, seed=seed,
            schedule=ScheduleOptions(warmup_epochs=cfg["warmup"], agent_until=cfg["agent_until"],
                                     extract_at=cfg["extract_at"]),
            agent=agent, env_repr=env, alignment=align, reward=RewardOptions(bn_recalibration=True),
            export=ExportOptions(dirpath=str(export)))
        trainer = L.Trainer(max_epochs=cfg["max_epochs"], accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp)
        chatter = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(chatter):  # per-epoch summaries and the final table
            trainer.fit(model, dm)
        wall = time.perf_counter() - start
        report = json.loads((export / "pruned.json").read_text())
        # Count and score the live network fit() leaves behind (physically pruned at extract_at).
        # Not the reloaded pruned.pt: load_pruned returns a torch.export GraphModule whose .eval()
        # raises NotImplementedError and whose aten-op graph has no nn.Conv2d modules for
        # torch-pruning's counter to hook; its outputs are checked against the live net instead.
        net = model.cnn.eval()
        flops, params = count(net, dm.input_shape)
        test_acc = evaluate(net, dm.test_dataloader(), torch.device("cpu"))
        x = torch.randn(8, *dm.input_shape)
        with torch.no_grad():
            torch.testing.assert_close(load_pruned(export)(x), net(x), atol=1e-4, rtol=1e-4)
    # Independent checks: torch-pruning's counter, the budget, and the reported accuracy.
    assert flops == report["pruned_flops"], (flops, report["pruned_flops"])
    assert flops <= budget * dense_flops, f"{method}: {flops} FLOPs > {budget} x {dense_flops}"
    assert abs(test_acc - report["test_acc"]) < 1e-6, (test_acc, report["test_acc"])
    hist = report.get("history", [])
    return dict(test_acc=report["test_acc"], val_acc=report["val_acc"], flops=flops, params=params,
                dense_flops=dense_flops, dense_params=dense_params, wall_s=wall,
                kept=[g["kept"] for g in report["groups"]], sizes=[g["dense"] for g in report["groups"]],
                dense_test_acc_at_extraction=report.get("dense_test_acc_at_extraction"),
                incumbent_reward=[h.get("incumbent_reward") for h in hist],
                reward_mean=[h.get("reward_mean") for h in hist])


# --------------------------------------------------------------------------- Torch-Pruning baseline
def prunable_roots(model: nn.Module, input_shape) -> set[str]:
    """Names of the producing layers of the groups jointprune prunes by default (no residual)."""
    return {g.name for g in ChannelStructure(model, torch.zeros(1, *input_shape)).groups}


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
        raise RuntimeError(f"torch-pruning cannot reach {limit:.0f} FLOPs with non-residual groups only")
    while lo < hi:
        mid = (lo + hi) // 2
        if flops_at(candidates[mid]) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return candidates[hi]


def run_plain(method: str, task: dict, budget: float, seed: int, cfg: dict) -> dict:
    """dense (no pruning) or tp_magnitude: a plain PyTorch loop with the same optimizer schedule."""
    L.seed_everything(seed, verbose=False)
    dm = make_data(task, cfg)
    model = make_cnn(task)
    dense_flops, dense_params = count(model, dm.input_shape)
    roots = prunable_roots(model, dm.input_shape) if method == "tp_magnitude" else set()
    opt, sched = make_optimizer(model, cfg["max_epochs"])
    loader = dm.train_dataloader()
    extra = {}
    start = time.perf_counter()
    for epoch in range(cfg["max_epochs"]):
        if method == "tp_magnitude" and epoch == cfg["extract_at"]:
            extra["dense_test_acc_at_extraction"] = evaluate(model, dm.test_dataloader(), torch.device("cpu"))
            t0 = time.perf_counter()
            ratio = tp_search_ratio(model, budget * dense_flops, roots, dm.input_shape)
            extra["search_s"] = time.perf_counter() - t0
            extra["tp_ratio"] = ratio
            # Momentum sliced to the kept channels, exactly as jointprune's own extraction does.
            prune_keeping_momentum(model, opt, lambda: tp_prune(model, ratio, roots, dm.input_shape))
        train_epoch(model, opt, loader)
        sched.step()
    test_acc = evaluate(model, dm.test_dataloader(), torch.device("cpu"))
    wall = time.perf_counter() - start
    flops, params = count(model, dm.input_shape)
    if method == "tp_magnitude":
        assert flops <= budget * dense_flops, f"tp_magnitude: {flops} FLOPs > {budget} x {dense_flops}"
        extra["kept"] = [m.out_channels for n, m in model.named_modules() if n in roots]
    return dict(test_acc=test_acc, flops=flops, params=params, dense_flops=dense_flops,
                dense_params=dense_params, wall_s=wall, **extra)


# --------------------------------------------------------------------------- bookkeeping
def run_key(r: dict) -> tuple:
    return (r["task"], r["budget"], r["method"], r["seed"])


def git_head() -> str:
    """HEAD commit plus ' (dirty)' when the working tree differs; read-only git calls."""
    import subprocess
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=30).stdout  # noqa: E731
        return run("rev-parse", "--short", "HEAD").strip() + (" (dirty)" if run("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict], tasks: list[str]) -> list[dict]:
    rows = []
    for task in tasks:
        budgets = sorted({r["budget"] for r in runs if r["task"] == task and r["method"] != "dense"}, reverse=True)
        for budget, methods in [(None, ["dense"])] + [(b, METHODS + EXTRA_METHODS) for b in budgets]:
            for method in methods:
                sel = [r for r in runs if r["task"] == task and r["method"] == method
                       and (method == "dense" or r["budget"] == budget)]
                if not sel:
                    continue
                acc_m, acc_s = mean_std([100 * r["test_acc"] for r in sel])
                rows.append(dict(task=task, budget=budget, method=method, n=len(sel), acc=acc_m, acc_std=acc_s,
                                 flops_ratio=statistics.fmean(r["flops"] / r["dense_flops"] for r in sel),
                                 params=statistics.fmean(r["params"] for r in sel),
                                 dense_params=sel[0]["dense_params"],
                                 wall=statistics.fmean(r["wall_s"] for r in sel),
                                 seeds=sorted(r["seed"] for r in sel)))
    return rows


def paired_deltas(runs: list[dict], tasks: list[str]) -> list[str]:
    """Reference minus each other method, paired by (budget, seed), in accuracy points. The
    reference is jointprune, except for the uniform-with-strong-alignment extra, which is
    compared with jointprune at the same strong alignment."""
    lines = ["", "Paired difference, reference minus method (test top-1 points, same task/budget/seed; "
             "wins/ties/losses of the reference counted per pair):", "",
             "| task | reference | method | mean Δ | wins / ties / losses |", "|---|---|---|---|---|"]
    for task in tasks:
        for method in METHODS[1:] + EXTRA_METHODS:
            ref = "jointprune_strong_align" if method == "uniform_strong_align" else "jointprune"
            base = {(r["budget"], r["seed"]): r["test_acc"] for r in runs if r["task"] == task and r["method"] == ref}
            pairs = [(base[(r["budget"], r["seed"])], r["test_acc"]) for r in runs
                     if r["task"] == task and r["method"] == method and (r["budget"], r["seed"]) in base]
            if not pairs:
                continue
            d = [100 * (a - b) for a, b in pairs]
            w, t, l = sum(x > 1e-9 for x in d), sum(abs(x) <= 1e-9 for x in d), sum(x < -1e-9 for x in d)
            lines.append(f"| {task} | {LABELS[ref]} | {LABELS[method]} | {statistics.fmean(d):+.2f} | {w} / {t} / {l} |")
    return lines


def markdown(rows: list[dict], runs: list[dict], tasks: list[str], cfg: dict, meta: dict) -> str:
    test_n = meta.get("test_images", 360)
    lines = [
        f"Test top-1 on scikit-learn digits (16x16, {test_n} test images: 1 image = {100 / test_n:.2f} points), "
        f"mean ± std over seeds; every method {cfg['max_epochs']} epochs in total. FLOPs/params from "
        "torch-pruning's counter on the final network, FLOPs ratio = pruned / dense (asserted <= budget). "
        "Wall time: whole run on a shared 2-core CPU (other jobs were running; times are inflated and noisy, "
        "compare them only loosely).", "",
        "| task | budget | method | test acc % (mean ± std) | FLOPs ratio | params | wall s | seeds |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = "—" if r["budget"] is None else f"{r['budget']:.1f}"
        params = f"{r['params'] / 1000:.1f}k ({r['params'] / r['dense_params']:.2f})"
        lines.append(f"| {r['task']} | {budget} | {LABELS[r['method']]} | {r['acc']:.2f} ± {r['acc_std']:.2f} | "
                     f"{r['flops_ratio']:.3f} | {params} | {r['wall']:.1f} | {r['n']} |")
    lines += paired_deltas(runs, tasks)
    sessions = meta.get("sessions", [])
    if len(sessions) > 1:
        lines += ["", "Runs come from several sessions; package code changed between them (other engineers "
                  "commit while the benchmark runs), so compare rows of the same session with each other:"]
        lines += [f"- {x['started']} at {x['git_head']}: {x['runs']} runs of {', '.join(x['methods'])}"
                  for x in sessions]
    lines += ["", f"Settings: {json.dumps(cfg)}; summed run time of all sessions in the JSON (incl. optional extras) {meta.get('total_s', float('nan')) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], tasks: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = [t for t in tasks if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.6), squeeze=False)
    markers = dict(zip(METHODS + EXTRA_METHODS, "o s ^ D v P X *".split()))
    for ax, task in zip(axes[0], tasks):
        for i, method in enumerate(METHODS + EXTRA_METHODS):
            sel = sorted((r for r in rows if r["task"] == task and r["method"] == method), key=lambda r: r["flops_ratio"])
            if not sel:
                continue
            # small horizontal jitter so overlapping error bars stay readable
            x = [r["flops_ratio"] + (i - 2.5) * 0.004 for r in sel]
            ax.errorbar(x, [r["acc"] for r in sel], yerr=[r["acc_std"] for r in sel], marker=markers[method],
                        capsize=3, lw=1.5 if method == "jointprune" else 1, label=LABELS[method])
        dense = [r for r in rows if r["task"] == task and r["method"] == "dense"]
        if dense:
            ax.axhline(dense[0]["acc"], color="k", ls="--", lw=1, label=f"dense ({dense[0]['acc']:.1f}%)")
        ax.set_title(task)
        ax.set_xlabel("FLOPs ratio (pruned / dense)")
        ax.set_ylabel("test top-1 % (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 budget, 4 epochs, first task")
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    ap.add_argument("--budgets", nargs="+", type=float, default=None, help="default: each task's own list")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2")
    ap.add_argument("--methods", nargs="+", choices=METHODS + EXTRA_METHODS + ["dense"], default=METHODS + ["dense"],
                    help=f"default: the six methods and dense; {', '.join(EXTRA_METHODS)} are optional extras")
    ap.add_argument("--out", default=None, help="file stem under results/ (default bench_methods[_quick])")
    ap.add_argument("--fresh", action="store_true", help="ignore runs already in the JSON")
    # 1, not 2: on this shared 2-core machine (tests running beside us) two intra-op threads
    # contend with the other processes and a ResNet-20 step took 2.07 s instead of 0.26 s.
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see comment)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    cfg = dict(QUICK if args.quick else FULL)
    tasks = args.tasks or (["digits16-r20w16"] if args.quick else list(TASKS))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    stem = args.out or ("bench_methods_quick" if args.quick else "bench_methods")
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{stem}.json"

    data = {"config": cfg, "runs": [], "meta": {}}
    if json_path.exists() and not args.fresh:
        old = json.loads(json_path.read_text())
        if old.get("config") == cfg:
            data = old
            print(f"resuming: {len(data['runs'])} runs already in {json_path}", flush=True)
    done = {run_key(r) for r in data["runs"]}

    plan = []
    for seed in seeds:  # seed outermost: a crash still leaves complete seeds
        for task in tasks:
            budgets = args.budgets or TASKS[task]["budgets"]
            if args.quick and not args.budgets:
                budgets = [0.5]
            if "dense" in args.methods:
                plan.append((task, None, "dense", seed))
            plan += [(task, b, m, seed) for b in budgets for m in METHODS + EXTRA_METHODS if m in args.methods]
    todo = [p for p in plan if p not in done]
    print(f"{len(plan)} runs planned, {len(todo)} to do; settings {cfg}", flush=True)

    bench_start = time.perf_counter()
    if todo:  # which package revision produced which runs: other people commit while this runs
        data["meta"].setdefault("sessions", []).append(
            {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "git_head": git_head(), "runs": len(todo),
             "methods": sorted({m for _, _, m, _ in todo}), "threads": args.threads})
    data["meta"]["elapsed_before_s"] = data["meta"].get("total_s", 0.0)  # time of earlier (resumed) sessions
    for i, (task, budget, method, seed) in enumerate(todo, 1):
        t = TASKS[task]
        fn = run_plain if method in ("dense", "tp_magnitude") else run_jointprune
        result = fn(method, t, budget if budget is not None else 1.0, seed, cfg)
        result.update(task=task, budget=budget, method=method, seed=seed)
        data["runs"].append(result)
        data["meta"]["total_s"] = data["meta"]["elapsed_before_s"] + time.perf_counter() - bench_start
        save_json(json_path, data)
        print(f"[{i}/{len(todo)}] {task} budget={budget} {method:13s} seed={seed}: test {100 * result['test_acc']:.2f}% "
              f"FLOPs {result['flops'] / result['dense_flops']:.3f} params {result['params']} "
              f"{result['wall_s']:.1f}s (elapsed {(time.perf_counter() - bench_start) / 60:.1f} min)", flush=True)
    data["meta"]["elapsed_before_s"] = data["meta"].get("total_s", 0.0)
    data["meta"]["test_images"] = len(make_data(TASKS[tasks[0]], cfg).test_dataloader().dataset)
    data["meta"]["torch_threads"] = torch.get_num_threads()
    save_json(json_path, data)

    runs = [r for r in data["runs"] if r["task"] in tasks]
    rows = summarize(runs, tasks)
    md = markdown(rows, runs, tasks, cfg, data["meta"])
    (RESULTS / f"{stem}.md").write_text(md)
    plot(rows, tasks, RESULTS / f"{stem}.png")
    print("\n" + md, flush=True)
    print(f"wrote {RESULTS / (stem + '.md')}, {json_path}, {RESULTS / (stem + '.png')}", flush=True)


if __name__ == "__main__":
    main()
