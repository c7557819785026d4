"""Which score, read when the agent decides, predicts the finished network?

The agent picks an allocation at the end of its last epoch (epoch 2 of 8 on clutter20) from scores
of sub-networks masked on the weights of that moment. The allocation study (study_allocation.py)
and the 10-seed tables found that reading these scores better (more images, a smoother metric)
does not make a better finished network. This study asks the question directly, on the decision
the agent faces:

* phase 1: one jointprune run of the bench_methods harness (task, network, budget, seed; the
  quickstart's module options) trains to the end of the agent epoch `--epoch`. There, uniform and
  K-1 other allocations (half the agent's random episodes, half neighbours of uniform as its
  refinement episodes draw them) are scored on the current weights by:
    - `reward128`: the agent's own reward (top-1 on the task's reward split, its BN handling);
    - `large`: top-1 on the first half of the test split (2,500 images), the same BN handling:
      the agent's reward without its sampling noise;
    - `tuned<k>`: the sub-network cut out physically, trained k SGD steps on training batches (the
      run's learning rate and momentum), then top-1 on the same 2,500 images: how well the
      sub-network recovers, which is what the rest of the run asks of it;
* phase 2: for each allocation, the same run again (same seed: the same weights and agent
  decisions up to that point, checked by a hash of the weights) with the incumbent replaced by
  that allocation when the next epoch starts, trained to the end: its test top-1 on the *other*
  half of the test split is the finished network's. `--noise R` finishes uniform R more times
  with every weight tensor moved by 1e-3 of its spread: the training noise of one allocation.

Per seed it prints the Spearman correlation of each score with the finished top-1, and the regret
of picking by each score (finished top-1 points below the best allocation).

    python experiments/benchmarks/study_reward_horizon.py --task clutter20 --net r20w8 --budget 0.5 \
        --seeds 0 1 2 --allocations 12 --jobs 2
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
from study_reward_metric import fit, halves_of_test_split, rewards  # noqa: E402  the harness run, test halves, scoring

RESULTS = HERE / "results"


def tuned_scores(pm, masks, dm, x, y, steps: list[int]) -> dict:
    """{f"tuned{k}": top-1 on (x, y) after k SGD steps of the physically cut sub-network}."""
    import torch
    import torch.nn.functional as F

    from jointprune.agent.reward import RewardScorer
    from jointprune.pruning.extract import extract_subnetwork
    small = extract_subnetwork(pm.cnn, pm.structure, masks).train()
    opt_cfg = pm.optim
    opts = pm.optimizers()
    lr = (opts[0] if isinstance(opts, list) else opts).param_groups[0]["lr"]
    opt = torch.optim.SGD(small.parameters(), lr=lr, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay)
    out, done = {}, 0
    loader = iter(dm.train_dataloader())
    for k in sorted(steps):
        while done < k:
            try:
                xb, yb = next(loader)
            except StopIteration:
                loader = iter(dm.train_dataloader())
                xb, yb = next(loader)
            opt.zero_grad()
            F.cross_entropy(small(xb), yb).backward()
            opt.step()
            done += 1
        # each batch's own BN statistics, as the agent scores (no masks: the network is cut)
        out[f"tuned{k}"] = RewardScorer(None, x, y, batch_size=500).score(small, None, batch_stats=True)[0]
    return out


def probe_callback(job: dict, dm):
    import lightning as L

    from jointprune.pruning import group_importance, top_k_masks

    class Probe(L.Callback):
        result: dict | None = None

        def on_train_epoch_end(self, trainer, pm):
            if trainer.current_epoch != job["epoch"]:
                return
            episodes = next(c for c in trainer.callbacks if type(c).__name__ == "AgentEpisodes")
            (x, y), _ = halves_of_test_split(dm)
            scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
            uniform = pm.environment.uniform_under_budget()
            o = pm.agent_opts
            allocations = [uniform]
            k = job["allocations"] - 1
            allocations += [episodes._rollout(pm, None, True).kept for _ in range(k - k // 2)]
            allocations += [pm.environment.rollout_near(uniform, o.refine_groups, o.refine_sigma, pm.agent_generator,
                                                        o.refine_move).kept for _ in range(k // 2)]
            rows = []
            for kept in allocations:
                masks = top_k_masks(scores, kept)
                row = dict(kept=list(kept), flops=pm.flops(kept) / pm.flops.dense,
                           reward128=episodes.scorer(pm.cnn, masks, *pm.reward_calibration()))
                row["large"] = rewards(pm, masks, x, y, 500, metrics=("top1",))["top1"]
                row.update(tuned_scores(pm, masks, dm, x, y, job["steps"]))
                rows.append(row)
            self.result = dict(rows=rows, weights=bm.state_hash(pm.cnn))
            trainer.should_stop = True

    return Probe()


def override_callback(job: dict, kept: list[int], perturb: int | None = None):
    import lightning as L

    from jointprune.pruning import group_importance, top_k_masks

    class Override(L.Callback):
        """At the start of the epoch after the probe, before AgentEpisodes sets lambda for it."""

        weights: str | None = None

        def on_train_epoch_start(self, trainer, pm):
            if trainer.current_epoch == job["epoch"] + 1:
                self.weights = bm.state_hash(pm.cnn)  # the probe's weights, or phase 2 is not the same run
                scores = group_importance(pm.cnn, pm.structure, pm.pruning.importance)
                pm.incumbent_kept = list(kept)
                pm.incumbent_masks = top_k_masks(scores, kept)
                if perturb is not None:  # the same decision, weights moved by 1e-3 of each tensor's spread
                    import torch
                    gen = torch.Generator().manual_seed(perturb)
                    with torch.no_grad():
                        for p in pm.cnn.parameters():
                            if p.numel() > 1:
                                p.add_(torch.randn(p.shape, generator=gen).to(p) * 1e-3 * p.std())

    return Override()


def probe(job: dict) -> dict:
    _, _, cb = fit(job, lambda dm: probe_callback(job, dm))
    if cb.result is None:
        raise SystemExit(f"epoch {job['epoch']} was never reached (is it an agent epoch of this schedule?)")
    return dict(job, **cb.result)


def finish(args: tuple) -> float:
    job, kept, perturb = args
    model, dm, cb = fit(job, lambda dm: override_callback(job, kept, perturb))
    if list(model.incumbent_kept) != list(kept):
        raise SystemExit(f"the override did not hold: {model.incumbent_kept} != {kept}")
    if cb.weights != job["weights"]:
        raise SystemExit(f"seed {job['seed']}: phase 2 did not reach the probe's weights")
    _, (x, y) = halves_of_test_split(dm)
    net = model.cnn.eval()
    import torch
    with torch.no_grad():
        return float((torch.cat([net(x[i:i + 500]).argmax(1) for i in range(0, len(y), 500)]) == y).float().mean())


def summarise(res: dict) -> dict:
    from scipy import stats
    final = [r["final"] for r in res["rows"]]
    best = max(final)
    out = {}
    for key in [k for k in res["rows"][0] if k not in ("kept", "flops", "final")]:
        values = [r[key] for r in res["rows"]]
        pick = max(range(len(values)), key=values.__getitem__)
        out[key] = dict(rho=float(stats.spearmanr(values, final).statistic), regret=100 * (best - final[pick]))
    return out


def noise_std(res: dict) -> str:
    """Std (points) of uniform's finishes: the unperturbed one and the perturbed ones."""
    values = [res["rows"][0]["final"]] + res.get("uniform_perturbed", [])
    return f"{100 * statistics.stdev(values):.2f} (n={len(values)})" if len(values) > 1 else "—"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="clutter20", choices=sorted(bm.TASKS))
    ap.add_argument("--net", default="r20w8", choices=sorted(bm.NETS))
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epoch", type=int, default=2, help="the agent epoch at whose end the agent decides (0-based)")
    ap.add_argument("--allocations", type=int, default=12, help="uniform plus this many minus one others")
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 60], help="SGD steps for the tuned scores")
    ap.add_argument("--noise", type=int, default=0, help="uniform finished this many more times, weights perturbed")
    ap.add_argument("--stem", default=None, help="results file stem (default: from task, net and budget)")
    ap.add_argument("--noise-only", action="store_true", help="add --noise finishes to the saved results")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    jobs = [dict(task=args.task, net=args.net, budget=args.budget, seed=s, epoch=args.epoch,
                 allocations=args.allocations, steps=args.steps, overrides=args.overrides) for s in args.seeds]
    stem = args.stem or f"study_reward_horizon_{args.task}_{args.net}_b{args.budget:g}"
    with ProcessPoolExecutor(args.jobs) as pool:
        if args.noise_only:  # the allocations' runs of an earlier call, only the noise added
            runs = json.loads((RESULTS / f"{stem}.json").read_text())
            todo = []
        else:
            runs = list(pool.map(probe, jobs))
            todo = [(run, row, None) for run in runs for row in run["rows"]]
        # training noise: uniform finished again from the same decision with the weights moved slightly
        todo += [(run, run["rows"][0], r) for run in runs for r in range(args.noise)]
        finals = list(pool.map(finish, [({k: v for k, v in run.items() if k != "rows"}, row["kept"], r)
                                        for run, row, r in todo]))
    for (run, row, r), final in zip(todo, finals):
        if r is None:
            row["final"] = final
        else:
            run.setdefault("uniform_perturbed", []).append(final)
    (RESULTS / f"{stem}.json").write_text(json.dumps(runs))
    keys = [k for k in runs[0]["rows"][0] if k not in ("kept", "flops", "final")]
    lines = [f"# Which score at the agent's decision predicts the finished network: {args.task} x {args.net}, "
             f"budget {args.budget:g}", "",
             f"End of agent epoch {args.epoch}: uniform and {args.allocations - 1} other allocations scored on the "
             "same weights, then each trained to the end from there (same seed, incumbent replaced at the next "
             "epoch). Finished top-1 on the second half of the test split; `large` and `tuned<k>` on the first. "
             "Spearman with the finished top-1, and the regret of picking by the score (points below the best "
             "finished allocation).", "",
             "Training noise: uniform finished again from the same decision with every weight tensor moved by "
             "1e-3 of its spread (`--noise` times): the std of those finishes against the std across allocations.",
             "",
             "| seed | finished: uniform / best / spread (points) | rank of uniform | std across allocations | "
             "std of uniform, perturbed | "
             + " | ".join(f"Spearman {k}" for k in keys) + " | " + " | ".join(f"regret {k}" for k in keys) + " |",
             "|---|---|---|---|---|" + "---|" * (2 * len(keys))]
    pooled = {k: dict(rho=[], regret=[]) for k in keys}
    for res in runs:
        s = summarise(res)
        final = [r["final"] for r in res["rows"]]
        rank = 1 + sum(f > final[0] for f in final)
        for k in keys:
            pooled[k]["rho"].append(s[k]["rho"])
            pooled[k]["regret"].append(s[k]["regret"])
        lines.append(f"| {res['seed']} | {100 * final[0]:.2f} / {100 * max(final):.2f} / "
                     f"{100 * (max(final) - min(final)):.2f} | {rank} of {len(final)} | "
                     f"{100 * statistics.stdev(final):.2f} | {noise_std(res)} | "
                     + " | ".join(f"{s[k]['rho']:+.2f}" for k in keys) + " | "
                     + " | ".join(f"{s[k]['regret']:.2f}" for k in keys) + " |")
    mean = lambda v: statistics.mean(v)  # noqa: E731
    lines.append("| mean | | | | | " + " | ".join(f"{mean(pooled[k]['rho']):+.2f}" for k in keys) + " | "
                 + " | ".join(f"{mean(pooled[k]['regret']):.2f}" for k in keys) + " |")
    lines += ["", f"Command: `python experiments/benchmarks/study_reward_horizon.py --task {args.task} --net {args.net} "
              f"--budget {args.budget:g} --seeds {' '.join(map(str, args.seeds))} --allocations {args.allocations} "
              f"--steps {' '.join(map(str, args.steps))} --noise {args.noise} --epoch {args.epoch}"
              + (f" --stem {args.stem}" if args.stem else "") + "".join(f" --set {o}" for o in args.overrides)
              + "`; one torch thread per run, 2-core CPU."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
