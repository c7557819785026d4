"""Does a latency budget buy the measured speed-up it promises, and is it better than a FLOPs
budget at the same measured latency?

For each model, latency budget b and seed, three runs with the same seed, data, schedule and
initial weights: (1) jointprune with `latency_budget: b` (no FLOPs limit); (2) jointprune with a
FLOPs budget f(b), where f(b) is the FLOPs fraction at which pruning every group by one common
ratio *measures* latency b (bisection on networks cut uniformly and timed, as the final
measurement is); (3) jointprune with a FLOPs budget equal to the FLOPs run (1) ended with.
Afterwards the three extracted networks are timed against the dense network, interleaved (median
of --runs pairs), on CPU at the data's batch size and --threads.

Why two FLOPs runs: the agent's FLOPs-budgeted allocations measure slower than uniform cuts of the
same FLOPs, so (2) alone lands at a different latency than (1) and the two top-1s do not compare.
(2) and (3) give the FLOPs budget's top-1 against measured latency; its value at (1)'s measured
latency (linear between them; outside them only a dominating or dominated point decides, else
"open") is what (1) is compared with.

The latency-budgeted run closes the loop itself (`model.latency.verify_rounds`, default 3): after
the agent's last epoch it measures its incumbent and shrinks it while the measurement misses the
budget; the table counts the rounds it took. After every earlier agent epoch it also measures its
incumbent once and aims later episodes at what should measure the budget (`correct_each_epoch`,
the library's default; `--no-correct-each-epoch` for the aim fixed at the budget).

speed-up = dense / pruned measured latency. Goals: (a) speed-up of the latency-budgeted net >=
0.95 / b; (b) at equal measured latency the latency-budgeted net at least as accurate.

Residual-coupled groups are pruned too (--no-prune-coupled to switch off): without them ResNet-56
cannot reach 0.5 of its CPU latency (smallest reachable 0.57). Sizes are reduced for a shared
2-core CPU: digits at --resize (default 16), --epochs (default 12), few agent episodes, ResNet-56
at lr 0.05 (LR below). `--task clutter20` trains on bench_methods.py's cluttered digits instead
(20x20 canvas, 2,500 training and 5,000 test images), where capacity matters more than on digits,
which every network here nearly solves. A plot goes to --plot.

    python experiments/benchmarks/bench_latency_budget.py [--models cifar_resnet56 cifar_mobilenet_v2]
        [--budgets 0.7 0.5 0.3] [--seeds 0 1 2] [--epochs 12] [--resize 16] [--task digits] [--jobs 2]
        [--max-ratio-cell cifar_resnet56:0.3=0.9] [--round-to 8] [--round-to-cell cifar_resnet56:0.3=4]
        [--no-correct-each-epoch] [--extra-rows ROWS.jsonl] [--paired-with EARLIER_ROWS.jsonl]
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

from jointprune.data import ClutteredDigitsDataModule, DigitsDataModule  # noqa: E402
from jointprune.errors import JointPruneError  # noqa: E402
from jointprune.models import create_model  # noqa: E402
from jointprune.module import JointPruneModule  # noqa: E402
from jointprune.options import (AgentOptions, EnvReprOptions, ExportOptions, LatencyOptions,  # noqa: E402
                                OptimOptions, PruningOptions, RewardOptions, ScheduleOptions)
from jointprune.pruning import ChannelStructure, FlopsModel, KeepRule  # noqa: E402
from jointprune.pruning import group_importance, top_k_masks  # noqa: E402
from jointprune.pruning.extract import extract_subnetwork  # noqa: E402
from jointprune.pruning.latency import measure_pair  # noqa: E402
from bench_methods import TASKS, t_interval  # noqa: E402

CPU = torch.device("cpu")
KWARGS = {"cifar_mobilenet_v2": {"width_mult": 0.5}}  # thinner MobileNetV2: affordable on a shared CPU
# ResNet-56 at the library's lr 0.1 does not train on digits' 18 steps per epoch (plain SGD, no
# pruning: loss 2.2 and 10 % top-1 after 6 epochs; at 0.05: 93 %), so it gets a smaller one here.
LR = {"cifar_resnet56": 0.05}


def make_data(args):
    """The task's DataModule, the same split for every seed (the runs of one seed pair by weights)."""
    if args.task == "clutter20":  # bench_methods.py's task, with this bench's batch and reward split
        spec = {k: v for k, v in TASKS["clutter20"]["data"].items() if k != "kind"}
        return ClutteredDigitsDataModule(**{**spec, "batch_size": args.batch, "reward_size": 64, "seed": 0})
    return DigitsDataModule(resize=args.resize, batch_size=args.batch, reward_size=64, seed=0)


def input_shape(args) -> tuple[int, int, int]:
    """The task's input shape, as its DataModule states it (set on construction, no data made)."""
    return tuple(make_data(args).input_shape)


def make_cnn(name: str, seed: int):
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, **KWARGS.get(name, {}))


def matched_flops_budget(name, input_shape, batch, threads, budget, coupled, max_ratio, runs, round_to=1) -> float:
    """FLOPs fraction at which one common pruning ratio *measures* `budget` of the dense latency
    (bisection on the ratio; each step cuts the network uniformly and times it interleaved)."""
    cnn = make_cnn(name, 0).eval()
    st = ChannelStructure(cnn, torch.zeros(1, *input_shape), prune_coupled=coupled)
    rule = KeepRule(max_ratio=max_ratio, round_to=round_to)
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


def run(name, seed, args, cache_dir, *, latency_budget=None, flops_budget=None, max_ratio=0.8, round_to=1):
    L.seed_everything(seed)
    dm = make_data(args)
    with tempfile.TemporaryDirectory() as tmp:
        model = JointPruneModule(
            make_cnn(name, seed), flops_budget=flops_budget, latency_budget=latency_budget,
            input_shape=dm.input_shape, num_classes=dm.num_classes, seed=seed,
            pruning=PruningOptions(prune_coupled=args.prune_coupled, max_ratio=max_ratio, round_to=round_to),
            optim=OptimOptions(lr=LR.get(name, OptimOptions.lr)),
            # as the quickstart: a frozen epoch between the agent and the cut, in which the
            # alignment empties what the closed loop's last shrink removed
            schedule=ScheduleOptions(warmup_epochs=1, agent_until=0.4, extract_at=0.5),
            agent=AgentOptions(episodes_per_epoch=4, sac_updates=30, hidden=64),
            env_repr=EnvReprOptions(dim=32, decoder_steps=30),
            reward=RewardOptions(bn_recalibration=True, recalibration_source="reward"),
            latency=LatencyOptions(device="cpu", cache_dir=cache_dir, verify_rounds=args.verify_rounds,
                                   correct_each_epoch=args.correct_each_epoch),
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
    """One seed of one cell: the latency-budgeted run and two FLOPs-budgeted runs (at f(b), and at
    the FLOPs the latency-budgeted network ended with), all three timed against dense."""
    name, b, seed, f, max_ratio, round_to = job
    shape = input_shape(args)
    keep = {"max_ratio": max_ratio, "round_to": round_to}
    try:
        lat_net, lat_rep, _ = run(name, seed, args, cache_dir, latency_budget=b, **keep)
    except JointPruneError as err:  # refused at start: say so in the table, go on
        return {"model": name, "budget": b, "seed": seed, **keep, "refused": str(err)}
    dense = make_cnn(name, seed).eval()
    row = {"model": name, "budget": b, "seed": seed, **keep, "flops_budget_matched": f}
    lat_t = measure_pair(dense, lat_net, shape, CPU, args.batch, args.threads, 1, args.runs)
    row.update({"lat_ratio": lat_t["ratio"], "lat_noise": lat_t["noise"], "lat_acc": lat_rep["test_acc"],
                "lat_flops": lat_rep["flops_ratio"], "lat_model": lat_rep.get("latency_model_ratio"),
                "lat_met_in_run": lat_rep.get("latency_budget_met"), "lat_in_run_ratio": lat_rep.get("latency_ratio"),
                "lat_verify": lat_rep.get("latency_verify") or [],
                "lat_verify_status": lat_rep.get("latency_verify_status"),
                # per earlier agent epoch: the incumbent's (model, measured) ratio and the aim that followed
                "lat_aims": [(h["latency_predicted"], h["latency_measured"], h["latency_target"])
                             for h in lat_rep.get("history") or [] if "latency_target" in h],
                **{f"lat_{k}": lat_rep.get(k) for k in ("removed_mass_at_cut", "top1_before_cut", "top1_after_cut")}})
    wall = lat_rep["wall_s"]
    # two FLOPs-budgeted points: f(b) (aimed at latency b by uniform cuts) and the latency-budgeted
    # network's own FLOPs; the curve through them gives the FLOPs budget's top-1 at its latency
    for key, budget in (("flo", f), ("flo2", min(1.0, lat_rep["flops_ratio"] + 1e-4))):
        net, rep, _ = run(name, seed, args, cache_dir, flops_budget=budget, **keep)
        timed = measure_pair(dense, net, shape, CPU, args.batch, args.threads, 1, args.runs)
        row.update({f"{key}_budget": budget, f"{key}_ratio": timed["ratio"], f"{key}_noise": timed["noise"],
                    f"{key}_acc": rep["test_acc"], f"{key}_flops": rep["flops_ratio"],
                    f"{key}_removed_mass_at_cut": rep.get("removed_mass_at_cut")})
        wall += rep["wall_s"]
    row["wall_s"] = wall
    row.update(flops_curve_at(row))
    return row


def task_label(args) -> str:
    return "cluttered digits 20x20" if args.task == "clutter20" else f"digits {args.resize}x{args.resize}"


def flops_curve_at(row) -> dict:
    """The FLOPs budget's top-1 at the latency-budgeted net's measured latency, and the verdict.

    Between the two FLOPs-budgeted points: linear interpolation in measured latency. Outside
    them, the nearer point decides when it can: at least as slow and no more accurate means the
    latency-budgeted net is at least as good ("win"); at most as slow and more accurate means it
    is not ("loss"); anything else is "open" (nothing to compare at that latency)."""
    at = row["lat_ratio"]
    points = sorted([(row["flo_ratio"], row["flo_acc"]), (row["flo2_ratio"], row["flo2_acc"])])
    (l0, a0), (l1, a1) = points
    if l0 <= at <= l1:
        acc = a0 if l1 == l0 else a0 + (a1 - a0) * (at - l0) / (l1 - l0)
        return {"flo_acc_at_lat": acc, "verdict": "win" if row["lat_acc"] >= acc else "loss"}
    # outside: the nearer point only (the farther one says less, and noise can reverse the two)
    lat, acc = points[0] if at < l0 else points[1]
    if lat >= at and acc <= row["lat_acc"]:
        return {"flo_acc_at_lat": None, "verdict": "win"}
    if lat <= at and acc > row["lat_acc"]:
        return {"flo_acc_at_lat": None, "verdict": "loss"}
    return {"flo_acc_at_lat": None, "verdict": "open"}


def per_cell(specs, kind) -> dict:
    """{(model, budget): value} from "model:budget=value" strings."""
    out = {}
    for spec in specs or []:
        where, value = spec.split("=")
        name, b = where.split(":")
        out[(name, float(b))] = kind(value)
    return out


def residuals(rows, name) -> list[float]:
    """Top-1 of each latency-budgeted run minus the FLOPs budget's curve at its measured latency,
    the curve being the least-squares line of top-1 on measured latency through all of the
    model's FLOPs-budgeted runs (every budget and seed): one comparison that uses every run."""
    done = [r for r in rows if r["model"] == name and "refused" not in r]
    points = [(r[f"{k}_ratio"], r[f"{k}_acc"]) for r in done for k in ("flo", "flo2") if f"{k}_acc" in r]
    if len(points) < 3:
        return []
    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return [r["lat_acc"] - (intercept + slope * r["lat_ratio"]) for r in done]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cifar_resnet56", "cifar_mobilenet_v2"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--resize", type=int, default=16, help="digits' side (--task digits)")
    p.add_argument("--task", choices=["digits", "clutter20"], default="digits")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prune-coupled", action=argparse.BooleanOptionalAction, default=True,
                   help="also prune residual-coupled groups (without, ResNet-56 cannot reach 0.5 of its latency)")
    p.add_argument("--runs", type=int, default=11, help="interleaved timing pairs per network (median)")
    p.add_argument("--plot", default=str(ROOT / "experiments/benchmarks/results/bench_latency_budget.png"))
    p.add_argument("--json", default=str(ROOT / "experiments/benchmarks/results/bench_latency_budget.json"))
    p.add_argument("--jobs", type=int, default=1, help="pairs of runs in parallel (processes)")
    p.add_argument("--max-ratio", type=float, default=0.8, help="model.pruning.max_ratio")
    p.add_argument("--round-to", type=int, default=1, help="model.pruning.round_to, for every run and the uniform cuts of f(b)")
    p.add_argument("--max-ratio-cell", nargs="*", help="model:budget=max_ratio for one cell, e.g. cifar_resnet56:0.3=0.9")
    p.add_argument("--round-to-cell", nargs="*", help="model:budget=round_to for one cell, e.g. cifar_resnet56:0.3=4")
    p.add_argument("--verify-rounds", type=int, default=3, help="model.latency.verify_rounds (0: no closed loop)")
    p.add_argument("--correct-each-epoch", action=argparse.BooleanOptionalAction, default=True,
                   help="model.latency.correct_each_epoch: the aim moves after every earlier agent epoch")
    p.add_argument("--flops-budget-cell", nargs="*", help="model:budget=f: f(b) given, not measured again")
    p.add_argument("--rows-out", help="append each finished row to this JSON-lines file")
    p.add_argument("--extra-rows", help="JSON lines of rows from an earlier run to include in the table and plot")
    p.add_argument("--paired-with", help="JSON lines of an earlier run's rows: print the latency-budgeted runs "
                                         "against them, seed by seed")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in Path(args.extra_rows).read_text().splitlines()] if args.extra_rows else []
    cells = [(name, b) for name in args.models for b in args.budgets]
    ratios = {**dict.fromkeys(cells, args.max_ratio), **per_cell(args.max_ratio_cell, float)}
    rounds = {**dict.fromkeys(cells, args.round_to), **per_cell(args.round_to_cell, int)}
    with tempfile.TemporaryDirectory() as cache_dir:
        matched = per_cell(args.flops_budget_cell, float)  # f(b) from an earlier run's output
        for name, b in cells:
            if (name, b) in matched:
                continue
            matched[(name, b)] = matched_flops_budget(name, input_shape(args), args.batch, args.threads,
                                                      b, args.prune_coupled, ratios[(name, b)], args.runs, rounds[(name, b)])
            print(f"{name} b={b}: f(b)={matched[(name, b)]:.3f} (max_ratio {ratios[(name, b)]}, "
                  f"round_to {rounds[(name, b)]})", flush=True)
        done = {(r["model"], r["budget"], r["seed"]) for r in rows}  # rows from --extra-rows are not run again
        jobs = [(name, b, seed, matched[(name, b)], ratios[(name, b)], rounds[(name, b)])
                for name, b in cells for seed in args.seeds
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

    aim = "aim corrected every agent epoch" if args.correct_each_epoch else "aim fixed at the budget"
    print(f"\n### Latency budget (closed loop, verify_rounds {args.verify_rounds}, {aim}) vs FLOPs budget at equal measured latency "
          f"(CPU, {args.threads} thread(s), batch {args.batch}, {task_label(args)}, {args.epochs} epochs, "
          f"round_to {args.round_to}, "
          f"seeds {args.seeds}; medians over seeds)\n")
    print("| model | latency budget | measured latency ratio | speed-up (goal >= 0.95/b) | test top-1 | shrink rounds "
          "| FLOPs f(b): latency, top-1 | FLOPs at the latency net's: latency, top-1 "
          "| FLOPs curve's top-1 at the same latency | latency-budgeted at least as accurate (win / loss / open) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in dict.fromkeys(r["model"] for r in rows):
        for b in args.budgets:
            cell = [r for r in rows if r["model"] == name and r["budget"] == b]
            if not cell:
                continue
            if "refused" in cell[0]:
                print(f"| {name} | {b} | refused at start: {cell[0]['refused']} | | | | | | | |")
                continue
            med = lambda k: statistics.median(r[k] for r in cell)  # noqa: E731
            speed = 1 / med("lat_ratio")
            verdicts = [r.get("verdict") or ("win" if r["lat_acc"] >= r["flo_acc"] else "loss") for r in cell]
            at = [r["flo_acc_at_lat"] for r in cell if r.get("flo_acc_at_lat") is not None]
            at_text = f"{statistics.median(at):.3f} ({len(at)} of {len(cell)} bracketed)" if at else "none bracketed"
            second = (f"{med('flo2_ratio'):.3f}, {med('flo2_acc'):.3f}" if all("flo2_acc" in r for r in cell) else "—")
            rounds = "/".join(str(max(len(r.get("lat_verify") or []) - 1, 0)) for r in cell)
            differs = [f"{k} {cell[0][k]}" for k, default in (("max_ratio", args.max_ratio), ("round_to", args.round_to))
                       if cell[0].get(k, default) != default]
            label = f"{name} ({', '.join(differs)})" if differs else name
            print(f"| {label} | {b} | {med('lat_ratio'):.3f} | {speed:.2f}x ({'met' if speed >= 0.95 / b else 'MISSED'}) "
                  f"| {med('lat_acc'):.3f} | {rounds} | {cell[0]['flops_budget_matched']:.3f}: {med('flo_ratio'):.3f}, "
                  f"{med('flo_acc'):.3f} | {second} | {at_text} "
                  f"| {verdicts.count('win')} / {verdicts.count('loss')} / {verdicts.count('open')} of {len(cell)} |")
    print("\nAt equal measured latency, over every budget and seed: top-1 of the latency-budgeted network minus "
          "the FLOPs budget's line of top-1 on measured latency (fitted to all of that model's FLOPs-budgeted runs), "
          "points, mean [95 % CI]:\n")
    for name in dict.fromkeys(r["model"] for r in rows):
        res = [100 * d for d in residuals(rows, name)]
        if len(res) >= 2:
            mean, lo, hi = t_interval(res)
            print(f"- {name}: {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] over {len(res)} runs "
                  f"({sum(d >= 0 for d in res)} at or above the line)")
    if args.paired_with:
        earlier = [json.loads(line) for line in Path(args.paired_with).read_text().splitlines()]
        print("\n" + "\n".join(paired_lines(rows, earlier)))
    plot(rows, args)


def paired_lines(rows, earlier) -> list[str]:
    """Per model, the latency-budgeted runs against an earlier run's of the same cell and seed: the
    top-1 difference (points, mean [95 % CI]), how far the incumbent's first measurement after the
    agent sat above the budget, and how many corrections the closed loop then made."""
    before = {(r["model"], r["budget"], r["seed"]): r for r in earlier if "refused" not in r}
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        pairs = [(r, before[(r["model"], r["budget"], r["seed"])]) for r in rows
                 if r["model"] == name and "refused" not in r and (r["model"], r["budget"], r["seed"]) in before]
        if len(pairs) < 2:
            continue
        diffs = [100 * (a["lat_acc"] - b["lat_acc"]) for a, b in pairs]
        mean, lo, hi = t_interval(diffs)
        out += [f"- {name}, {len(pairs)} pairs: top-1 now minus before {mean:+.2f} [{lo:+.2f}, {hi:+.2f}] points; "
                f"per run {_listed(diffs, '+.1f')}",
                f"  first measurement after the agent minus the budget: before "
                f"{_listed([_first_miss(b) for _, b in pairs], '+.3f')}; now {_listed([_first_miss(a) for a, _ in pairs], '+.3f')}",
                f"  closed-loop corrections: before {sum(_corrections(b) for _, b in pairs)} "
                f"({_listed([_corrections(b) for _, b in pairs], 'd')}); now {sum(_corrections(a) for a, _ in pairs)} "
                f"({_listed([_corrections(a) for a, _ in pairs], 'd')})"]
    return out


def _first_miss(row) -> float:
    """The closed loop's first measurement (the agent's incumbent) minus the budget."""
    loop = row.get("lat_verify") or []
    return loop[0]["measured"] - row["budget"] if loop else float("nan")


def _corrections(row) -> int:
    """How many times the closed loop shrank or grew the incumbent after measuring it."""
    return max(len(row.get("lat_verify") or []) - 1, 0)


def _listed(values, fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


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
        second = [r for r in cell if "flo2_acc" in r]
        ax.scatter([r["flo2_ratio"] for r in second], [r["flo2_acc"] for r in second],
                   label="FLOPs budget = latency net's FLOPs", marker="+")
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
