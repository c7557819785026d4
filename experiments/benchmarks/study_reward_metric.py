"""Which reward reads a few hundred images best: top-1, or the true class's probability?

The allocation study (study_allocation.py) found the agent's reward on 128 images too noisy to see
the small differences between allocations. This study asks, on the *same weights* (as the agent
scores its episodes), how well a reward computed on a small reward sample ranks sub-networks
compared with top-1 on a large sample:

* one run of the bench_methods harness (task, network, budget, seed; the quickstart's module
  options) trains until the end of an agent epoch;
* there, uniform and K-1 random allocations (the agent's exploratory episodes) are masked on the
  current weights and scored with the agent's BN handling (each batch's own statistics):
    - the reference: top-1 on the first half of the test split (2,500 images on clutter20);
    - `reward.metric: top1` and `true_prob` on S disjoint samples of the task's reward size,
      drawn from the other half;
* per sample it records the Spearman correlation with the reference ranking, and the regret: how
  far below the reference's best allocation (in reference top-1 points) the allocation lies that
  the small-sample reward would pick.

    python experiments/benchmarks/study_reward_metric.py --task clutter20 --net r20w8 --budget 0.5 \
        --seeds 0 1 2 --allocations 24 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import bench_methods as bm  # noqa: E402  the harness: tasks, nets, data, module options

RESULTS = HERE / "results"
METRICS = ("top1", "true_prob")


def rewards(pm, masks, x, y, batch_size: int, metrics=METRICS) -> dict:
    """{metric: reward} of the masked network on (x, y), BN statistics from each batch, scored by
    the agent's own RewardScorer."""
    from jointprune.agent.reward import RewardScorer
    return {m: RewardScorer(pm.plan, x, y, batch_size=batch_size, metric=m).score(pm.cnn, masks, None,
                                                                                   batch_stats=True)[0]
            for m in metrics}


def halves_of_test_split(dm):
    """((x, y) of the test split's first half, (x, y) of its second half)."""
    import torch
    xs, ys = zip(*dm.test_dataloader())
    x, y = torch.cat(xs), torch.cat(ys)
    half = len(y) // 2
    return (x[:half], y[:half]), (x[half:], y[half:])


def probe_callback(job: dict, dm):
    import lightning as L

    from jointprune.pruning import group_importance, top_k_masks

    class Probe(L.Callback):
        result: dict | None = None

        def on_train_epoch_end(self, trainer, pm):
            if trainer.current_epoch != job["epoch"]:
                return
            episodes = next(c for c in trainer.callbacks if type(c).__name__ == "AgentEpisodes")
            (x_ref, y_ref), (x, y) = halves_of_test_split(dm)
            n = job["sample"]
            scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
            allocations = [pm.environment.uniform_under_budget()]
            allocations += [episodes._rollout(pm, None, True).kept for _ in range(job["allocations"] - 1)]
            reference, small = [], []
            for kept in allocations:
                masks = top_k_masks(scores, kept)
                # the reference needs top-1 only: one pass over the large half
                reference.append(rewards(pm, masks, x_ref, y_ref, 512, metrics=("top1",))["top1"])
                small.append([rewards(pm, masks, x[s * n:(s + 1) * n], y[s * n:(s + 1) * n], n)
                              for s in range(job["samples"])])
            self.result = dict(allocations=[list(a) for a in allocations], reference=reference, small=small)
            trainer.should_stop = True

    return Probe()


def fit(job: dict, make_callback):
    """One jointprune run of the harness (task, net, budget, seed, --set overrides of the quickstart's
    module options) with the callback make_callback(dm) beside it: (module, dm, callback)."""
    import contextlib
    import copy
    import io
    import tempfile

    import lightning as L
    import torch

    from jointprune.module import JointPruneModule

    torch.set_num_threads(1)
    bm.quiet()
    L.seed_everything(job["seed"], verbose=False)
    dm = bm.make_data(job["task"], job["seed"])
    cnn = bm.make_cnn(job["net"], dm.num_classes)
    kw = copy.deepcopy(bm.module_options(job["overrides"]))
    kw.setdefault("agent", {})["policy"] = "sac"
    callback = make_callback(dm)
    with tempfile.TemporaryDirectory() as tmp:
        kw.setdefault("export", {})["dirpath"] = str(Path(tmp) / "export")
        model = JointPruneModule(cnn, flops_budget=job["budget"], input_shape=dm.input_shape,
                                 num_classes=dm.num_classes, seed=job["seed"], **kw)
        trainer = L.Trainer(max_epochs=bm.TASKS[job["task"]]["epochs"], accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp, callbacks=[callback])
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(model, dm)
    return model, dm, callback


def run(job: dict) -> dict:
    _, _, probe = fit(job, lambda dm: probe_callback(job, dm))
    if probe.result is None:
        raise SystemExit(f"epoch {job['epoch']} was never reached (is it an agent epoch of this schedule?)")
    return dict(job, **probe.result)


def summarise(res: dict) -> dict:
    """Per metric: Spearman with the reference and the regret of the small-sample pick, per sample."""
    from scipy import stats
    ref = res["reference"]
    best = max(ref)
    out = {}
    for metric in METRICS:
        rhos, regrets = [], []
        for s in range(len(res["small"][0])):
            values = [res["small"][a][s][metric] for a in range(len(ref))]
            rhos.append(float(stats.spearmanr(ref, values).statistic))
            regrets.append(100 * (best - ref[max(range(len(ref)), key=values.__getitem__)]))
        out[metric] = dict(rho=rhos, regret=regrets)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="clutter20", choices=sorted(bm.TASKS))
    ap.add_argument("--net", default="r20w8", choices=sorted(bm.NETS))
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epoch", type=int, default=2, help="the agent epoch at whose end to probe (0-based)")
    ap.add_argument("--allocations", type=int, default=24, help="uniform plus this many minus one random ones")
    ap.add_argument("--samples", type=int, default=10, help="disjoint small reward samples")
    ap.add_argument("--sample", type=int, default=None, help="images per sample (default: the task's reward size)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    sample = args.sample or bm.TASKS[args.task]["data"]["reward_size"]
    jobs = [dict(task=args.task, net=args.net, budget=args.budget, seed=s, epoch=args.epoch,
                 allocations=args.allocations, samples=args.samples, sample=sample, overrides=args.overrides)
            for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(run, jobs))
    stem = f"study_reward_metric_{args.task}_{args.net}_b{args.budget:g}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(runs))
    lines = [f"# Small-sample rewards against a large-sample top-1: {args.task} x {args.net}, budget {args.budget:g}",
             "", f"End of agent epoch {args.epoch}, same weights; uniform and {args.allocations - 1} random "
             f"allocations; reference: top-1 on the first half of the test split; "
             f"{args.samples} disjoint samples of {sample} images from the other half. Spearman with the reference "
             "ranking and the regret of the sample's pick (reference top-1 points below the best allocation), "
             "mean ± std over the samples.", "",
             "| seed | reference spread (points) | Spearman top1 | Spearman true_prob | regret top1 | regret true_prob |",
             "|---|---|---|---|---|---|"]
    pooled = {m: dict(rho=[], regret=[]) for m in METRICS}
    for res in runs:
        s = summarise(res)
        for m in METRICS:
            for k in ("rho", "regret"):
                pooled[m][k] += s[m][k]
        spread = 100 * (max(res["reference"]) - min(res["reference"]))
        cell = lambda v: f"{statistics.mean(v):+.2f} ± {statistics.stdev(v):.2f}"  # noqa: E731
        lines.append(f"| {res['seed']} | {spread:.2f} | {cell(s['top1']['rho'])} | {cell(s['true_prob']['rho'])} | "
                     f"{cell(s['top1']['regret'])} | {cell(s['true_prob']['regret'])} |")
    cell = lambda v: f"{statistics.mean(v):+.2f} ± {statistics.stdev(v):.2f}"  # noqa: E731
    lines.append(f"| all | | {cell(pooled['top1']['rho'])} | {cell(pooled['true_prob']['rho'])} | "
                 f"{cell(pooled['top1']['regret'])} | {cell(pooled['true_prob']['regret'])} |")
    lines += ["", f"Command: `python experiments/benchmarks/study_reward_metric.py --task {args.task} --net {args.net} "
              f"--budget {args.budget:g} --seeds {' '.join(map(str, args.seeds))} --allocations {args.allocations}"
              + "".join(f" --set {o}" for o in args.overrides) + "`; one torch thread per run, 2-core CPU."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
