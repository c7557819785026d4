"""Does a latency budget buy the measured speed-up it promises, and is it better than a FLOPs
budget at the same measured latency?

For each model, latency budget b and seed: (1) jointprune with `latency_budget: b` (no FLOPs
limit); (2) jointprune with a FLOPs budget f(b) instead, where f(b) is the FLOPs fraction at which
pruning every group by one common ratio reaches latency b by the same latency model (so the two
runs aim at the same latency; each is then measured). Same seed, data, schedule and initial
weights in both runs of a pair. Afterwards both extracted networks are timed against the dense
network, interleaved (median of --runs pairs), on CPU at the data's batch size and --threads.

The latency-budgeted run closes the loop itself (`model.latency.verify_rounds`, default 3): after
the agent's last epoch it measures its incumbent and shrinks it while the measurement misses the
budget; the table counts the rounds it took. f(b) is aimed at the same *measured* latency: the
common pruning ratio is found by bisection on networks cut uniformly and timed (as the final
measurement is), not by the latency model alone.

speed-up = dense / pruned measured latency. Goals: (a) speed-up of the latency-budgeted net >=
0.95 / b; (b) at equal measured latency the latency-budgeted net at least as accurate (compare
the two curves of test top-1 against measured latency ratio; the table gives both points).

Residual-coupled groups are pruned too (--no-prune-coupled to switch off): without them ResNet-56
cannot reach 0.5 of its CPU latency (smallest reachable 0.57). Sizes are reduced for a shared 2-core CPU: digits at --resize (default 16), --epochs (default 4),
few agent episodes. A plot goes to --plot.

    python experiments/benchmarks/bench_latency_budget.py [--models cifar_resnet56 cifar_mobilenet_v2]
        [--budgets 0.7 0.5 0.3] [--seeds 0 1 2] [--epochs 4] [--resize 16] [--jobs 2]
        [--max-ratio-cell cifar_resnet56:0.3=0.9]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jointprune.data import DigitsDataModule  # noqa: E402
from jointprune.errors import JointPruneError  # noqa: E402
from jointprune.models import create_model  # noqa: E402
from jointprune.module import JointPruneModule  # noqa: E402
from jointprune.options import (AgentOptions, EnvReprOptions, ExportOptions, LatencyOptions,  # noqa: E402
                                PruningOptions, RewardOptions, ScheduleOptions)
from jointprune.pruning import ChannelStructure, FlopsModel, KeepRule  # noqa: E402
from jointprune.pruning import group_importance, top_k_masks  # noqa: E402
from jointprune.pruning.extract import extract_subnetwork  # noqa: E402
from jointprune.pruning.latency import measure_pair  # noqa: E402

CPU = torch.device("cpu")
KWARGS = {"cifar_mobilenet_v2": {"width_mult": 0.5}}  # thinner MobileNetV2: affordable on a shared CPU


def make_cnn(name: str, seed: int):
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, **KWARGS.get(name, {}))


def matched_flops_budget(name, input_shape, batch, threads, budget, coupled, max_ratio, runs) -> float:
    """FLOPs fraction at which one common pruning ratio *measures* `budget` of the dense latency
    (bisection on the ratio; each step cuts the network uniformly and times it interleaved)."""
    cnn = make_cnn(name, 0).eval()
    st = ChannelStructure(cnn, torch.zeros(1, *input_shape), prune_coupled=coupled)
    rule = KeepRule(max_ratio=max_ratio)
    fm = FlopsModel(st)

    def kept_at(r):
        return [rule.keep(g.size, r, g.multiple) for g in st.groups]

    scores = group_importance(cnn, st, "l1")

    def measured(r):
        small = extract_subnetwork(cnn, st, top_k_masks(scores, kept_at(r)))
        return measure_pair(cnn, small, input_shape, CPU, batch, threads, 1, runs)["ratio"]

    lo, hi = 0.0, rule.max_ratio  # measured(lo) = 1 > budget
    if measured(hi) > budget:
        return float(fm(kept_at(hi)) / fm.dense)
    for _ in range(6):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if measured(mid) > budget else (lo, mid)
    return float(fm(kept_at(hi)) / fm.dense)


def run(name, seed, args, cache_dir, *, latency_budget=None, flops_budget=None, max_ratio=0.8):
    L.seed_everything(seed)
    dm = DigitsDataModule(resize=args.resize, batch_size=args.batch, reward_size=64, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        model = JointPruneModule(
            make_cnn(name, seed), flops_budget=flops_budget, latency_budget=latency_budget,
            input_shape=dm.input_shape, num_classes=dm.num_classes, seed=seed,
            pruning=PruningOptions(prune_coupled=args.prune_coupled, max_ratio=max_ratio),
            schedule=ScheduleOptions(warmup_epochs=1, agent_until=0.5, extract_at=0.5),
            agent=AgentOptions(episodes_per_epoch=4, sac_updates=30, hidden=64),
            env_repr=EnvReprOptions(dim=32, decoder_steps=30),
            reward=RewardOptions(bn_recalibration=True, recalibration_source="reward"),
            latency=LatencyOptions(device="cpu", cache_dir=cache_dir, verify_rounds=args.verify_rounds),
            export=ExportOptions(dirpath=str(Path(tmp) / "export")))
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(model, dm)
        report = json.loads((Path(tmp) / "export" / "pruned.json").read_text())
    report["wall_s"] = time.perf_counter() - start
    return model.cnn.eval(), report, dm.input_shape


def pair(job, args, cache_dir) -> dict:
    """One seed of one cell: the latency-budgeted run, the FLOPs-budgeted run, both timed."""
    name, b, seed, f, max_ratio = job
    shape = (3, args.resize, args.resize)
    try:
        lat_net, lat_rep, _ = run(name, seed, args, cache_dir, latency_budget=b, max_ratio=max_ratio)
    except JointPruneError as err:  # refused at start: say so in the table, go on
        return {"model": name, "budget": b, "seed": seed, "max_ratio": max_ratio, "refused": str(err)}
    flo_net, flo_rep, _ = run(name, seed, args, cache_dir, flops_budget=f, max_ratio=max_ratio)
    dense = make_cnn(name, seed).eval()
    lat_t = measure_pair(dense, lat_net, shape, CPU, args.batch, args.threads, 1, args.runs)
    flo_t = measure_pair(dense, flo_net, shape, CPU, args.batch, args.threads, 1, args.runs)
    verify = lat_rep.get("latency_verify") or []
    return {"model": name, "budget": b, "seed": seed, "max_ratio": max_ratio, "flops_budget_matched": f,
            "lat_ratio": lat_t["ratio"], "lat_noise": lat_t["noise"], "lat_acc": lat_rep["test_acc"],
            "lat_flops": lat_rep["flops_ratio"], "lat_model": lat_rep.get("latency_model_ratio"),
            "lat_met_in_run": lat_rep.get("latency_budget_met"), "lat_in_run_ratio": lat_rep.get("latency_ratio"),
            "lat_verify": verify, "lat_verify_status": lat_rep.get("latency_verify_status"),
            "flo_ratio": flo_t["ratio"], "flo_noise": flo_t["noise"], "flo_acc": flo_rep["test_acc"],
            "flo_flops": flo_rep["flops_ratio"], "wall_s": lat_rep["wall_s"] + flo_rep["wall_s"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cifar_resnet56", "cifar_mobilenet_v2"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--resize", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prune-coupled", action=argparse.BooleanOptionalAction, default=True,
                   help="also prune residual-coupled groups (without, ResNet-56 cannot reach 0.5 of its latency)")
    p.add_argument("--runs", type=int, default=11, help="interleaved timing pairs per network (median)")
    p.add_argument("--plot", default=str(ROOT / "experiments/benchmarks/results/bench_latency_budget.png"))
    p.add_argument("--json", default=str(ROOT / "experiments/benchmarks/results/bench_latency_budget.json"))
    p.add_argument("--jobs", type=int, default=1, help="pairs of runs in parallel (processes)")
    p.add_argument("--max-ratio", type=float, default=0.8, help="model.pruning.max_ratio")
    p.add_argument("--max-ratio-cell", nargs="*", help="model:budget=max_ratio for one cell, e.g. cifar_resnet56:0.3=0.9")
    p.add_argument("--verify-rounds", type=int, default=3, help="model.latency.verify_rounds (0: no closed loop)")
    p.add_argument("--flops-budget-cell", nargs="*", help="model:budget=f: f(b) given, not measured again")
    p.add_argument("--rows-out", help="append each finished row to this JSON-lines file")
    p.add_argument("--extra-rows", help="JSON lines of rows from an earlier run to include in the table and plot")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in Path(args.extra_rows).read_text().splitlines()] if args.extra_rows else []
    cells = [(name, b) for name in args.models for b in args.budgets]
    ratios = {cell: args.max_ratio for cell in cells}
    for spec in args.max_ratio_cell or []:  # model:budget=max_ratio
        where, ratio = spec.split("=")
        name, b = where.split(":")
        ratios[(name, float(b))] = float(ratio)
    with tempfile.TemporaryDirectory() as cache_dir:
        matched = {}
        for spec in args.flops_budget_cell or []:  # model:budget=f, from an earlier run's output
            where, f = spec.split("=")
            name, b = where.split(":")
            matched[(name, float(b))] = float(f)
        for name, b in cells:
            if (name, b) in matched:
                continue
            matched[(name, b)] = matched_flops_budget(name, (3, args.resize, args.resize), args.batch, args.threads,
                                                      b, args.prune_coupled, ratios[(name, b)], args.runs)
            print(f"{name} b={b}: f(b)={matched[(name, b)]:.3f} (max_ratio {ratios[(name, b)]})", flush=True)
        done = {(r["model"], r["budget"], r["seed"]) for r in rows}  # rows from --extra-rows are not run again
        jobs = [(name, b, seed, matched[(name, b)], ratios[(name, b)]) for name, b in cells for seed in args.seeds
                if (name, b, seed) not in done]
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=torch.set_num_threads,
                                 initargs=(args.threads,)) as pool:
            for row in pool.map(partial(pair, args=args, cache_dir=cache_dir), jobs):
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.rows_out:  # each finished pair kept at once: a killed run loses only what ran
                    with open(args.rows_out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")

    print(f"\n### Latency budget (closed loop, verify_rounds {args.verify_rounds}) vs FLOPs budget at matched measured latency (CPU, {args.threads} thread(s), batch {args.batch}, "
          f"digits {args.resize}x{args.resize}, {args.epochs} epochs, seeds {args.seeds}; medians over seeds)\n")
    print("| model | latency budget | measured latency ratio | speed-up (goal >= 0.95/b) | test top-1 | shrink rounds "
          "| FLOPs budget f(b) | its measured latency ratio | its test top-1 | latency-budgeted at least as accurate "
          "| ... and at most as slow |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in dict.fromkeys(r["model"] for r in rows):
        for b in args.budgets:
            cell = [r for r in rows if r["model"] == name and r["budget"] == b]
            if not cell:
                continue
            if "refused" in cell[0]:
                print(f"| {name} | {b} | refused at start: {cell[0]['refused']} | | | | | | | | |")
                continue
            med = lambda k: statistics.median(r[k] for r in cell)  # noqa: E731
            speed = 1 / med("lat_ratio")
            wins = sum(r["lat_acc"] >= r["flo_acc"] for r in cell)
            dominates = sum(r["lat_acc"] >= r["flo_acc"] and r["lat_ratio"] <= r["flo_ratio"] for r in cell)
            rounds = "/".join(str(max(len(r.get("lat_verify") or []) - 1, 0)) for r in cell)
            label = name if cell[0].get("max_ratio", args.max_ratio) == args.max_ratio \
                else f"{name} (max_ratio {cell[0]['max_ratio']})"
            print(f"| {label} | {b} | {med('lat_ratio'):.3f} | {speed:.2f}x ({'met' if speed >= 0.95 / b else 'MISSED'}) "
                  f"| {med('lat_acc'):.3f} | {rounds} | {cell[0]['flops_budget_matched']:.3f} | {med('flo_ratio'):.3f} "
                  f"| {med('flo_acc'):.3f} | {wins} of {len(cell)} seeds | {dominates} of {len(cell)} |")
    plot(rows, args)


def plot(rows, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, name in zip(axes[0], models):
        cell = [r for r in rows if r["model"] == name and "refused" not in r]
        ax.scatter([r["lat_ratio"] for r in cell], [r["lat_acc"] for r in cell], label="latency budget", marker="o")
        ax.scatter([r["flo_ratio"] for r in cell], [r["flo_acc"] for r in cell], label="FLOPs budget f(b)", marker="x")
        for b in args.budgets:
            ax.axvline(b, color="#bbbbbb", lw=0.8, ls="--")
        ax.set_xlabel("measured latency / dense (CPU)")
        ax.set_ylabel("test top-1")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
