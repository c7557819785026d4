"""How much does the channel allocation matter, and can an early reward tell the good ones apart?

bench_methods.py found jointprune, uniform and random allocations within noise of each other.
This study measures the two quantities that bound what any allocation search can gain in a cell:

  headroom        the spread of final test top-1 over allocations trained with the same seed
                  (same initial weights, same batches): uniform and K random allocations
                  (the module's `random` policy with K agent seeds), each at the FLOPs budget;
  predictiveness  the rank correlation between an allocation's *early* score (the masked
                  sub-network's top-1, BN statistics from each batch as the agent's reward uses,
                  on the first half of the test split, at the end of each agent epoch, i.e. a
                  reward with 2,500 images instead of 128) and its final top-1 on the other half.

If the headroom is within seed noise, no allocation search can be ahead of uniform there; if the
early score does not predict the final top-1, the agent's reward cannot find the better ones.

    python experiments/benchmarks/study_allocation.py --task clutter20 --net r20w8 --budget 0.3 \
        --seeds 0 1 --allocations 8 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import bench_methods as bm  # noqa: E402  the harness: tasks, nets, data, pairing hashes

RESULTS = HERE / "results"


def test_tensors(dm):
    import torch
    xs, ys = zip(*[(x, y) for x, y in dm.test_dataloader()])
    return torch.cat(xs), torch.cat(ys)


def early_scorer(x, y):
    """Scores the incumbent on the images (x, y) at the end of each agent epoch."""
    import lightning as L

    from jointprune.agent.reward import RewardScorer

    class Early(L.Callback):
        def __init__(self):
            self.scores = {}

        def on_train_epoch_end(self, trainer, pm):
            if pm.agent_active(trainer.current_epoch) and pm.incumbent_masks is not None:
                scorer = RewardScorer(pm.plan, x, y, batch_size=pm.reward_opts.batch_size)
                self.scores[trainer.current_epoch] = scorer(pm.cnn, pm.incumbent_masks, *pm.reward_calibration())

    return Early()


def run(job: dict) -> dict:
    import copy
    import tempfile

    import lightning as L
    import torch

    from jointprune.module import JointPruneModule

    torch.set_num_threads(1)
    bm.quiet()
    task, net, budget, seed, alloc = job["task"], job["net"], job["budget"], job["seed"], job["alloc"]
    L.seed_everything(seed, verbose=False)
    dm = bm.make_data(task, seed)
    cnn = bm.make_cnn(net, dm.num_classes)
    init = bm.state_hash(cnn)
    kw = copy.deepcopy(bm.module_options([]))
    kw.setdefault("agent", {})["policy"] = "uniform" if alloc == 0 else "random"
    hasher = bm.BatchHash()
    x, y = test_tensors(dm)  # decoded once: the early score's half and the final top-1's
    half = len(y) // 2
    early = early_scorer(x[:half], y[:half])
    with tempfile.TemporaryDirectory() as tmp:
        kw.setdefault("export", {})["dirpath"] = str(Path(tmp) / "export")
        # the agent seed only draws the random allocation; weights and batches follow `seed`
        model = JointPruneModule(cnn, flops_budget=budget, input_shape=dm.input_shape, num_classes=dm.num_classes,
                                 seed=1000 * alloc + seed, **kw)
        trainer = L.Trainer(max_epochs=bm.TASKS[task]["epochs"], accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp, callbacks=[bm.HashBatches(hasher), early])
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(model, dm)
        net_ = model.cnn.eval()
        with torch.no_grad():
            hit = (net_(x).argmax(1) == y).float()
    return dict(task=task, net=net, budget=budget, seed=seed, alloc=alloc, kept=list(model.incumbent_kept),
                flops_ratio=model.flops_ratio(), early=early.scores, final_other_half=float(hit[half:].mean()),
                final=float(hit.mean()), init_hash=init, data_hash=hasher.digest())


def spearman(a: list[float], b: list[float]) -> float:
    from scipy import stats
    return float(stats.spearmanr(a, b).statistic) if len(a) > 2 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="clutter20", choices=sorted(bm.TASKS))
    ap.add_argument("--net", default="r20w8", choices=sorted(bm.NETS))
    ap.add_argument("--budget", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--allocations", type=int, default=8, help="uniform plus this many minus one random ones")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    stem = f"study_allocation_{args.task}_{args.net}_b{args.budget:g}"
    runs_dir = RESULTS / f"{stem}_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs = [dict(task=args.task, net=args.net, budget=args.budget, seed=s, alloc=a)
            for s in args.seeds for a in range(args.allocations)]
    todo = [j for j in jobs if not (runs_dir / f"s{j['seed']}-a{j['alloc']}.json").exists()]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        for job, res in zip(todo, pool.map(run, todo)):
            (runs_dir / f"s{job['seed']}-a{job['alloc']}.json").write_text(json.dumps(res))
            print(f"seed {job['seed']} alloc {job['alloc']}: final {res['final']:.4f} early {res['early']} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    lines = [f"# Allocation headroom and early-score predictiveness: {args.task} x {args.net}, FLOPs budget "
             f"{args.budget:g}", "",
             "Per seed: final test top-1 (%) of uniform and of the random allocations (same initial weights "
             "and batches), and the Spearman correlation between the early score at the end of each agent epoch "
             "(top-1 on test images [0, n/2), 2,500 images) and the final top-1 on the other half.", "",
             "| seed | uniform | random: min / median / max | best - uniform | rank of uniform | "
             "Spearman early(ep) vs final |", "|---|---|---|---|---|---|"]
    for seed in sorted({r["seed"] for r in runs}):
        rs = sorted((r for r in runs if r["seed"] == seed), key=lambda r: r["alloc"])
        if len({r["init_hash"] for r in rs}) > 1 or len({r["data_hash"] for r in rs}) > 1:
            lines.append(f"| {seed} | pairing broken: hashes differ | | | | |")
            continue
        uni = [r for r in rs if r["alloc"] == 0]
        rnd = [100 * r["final"] for r in rs if r["alloc"] > 0]
        u = 100 * uni[0]["final"] if uni else math.nan
        finals = sorted((100 * r["final"] for r in rs), reverse=True)
        cors = []
        for ep in sorted({e for r in rs for e in r["early"]}):
            pts = [(r["early"][ep], r["final_other_half"]) for r in rs if ep in r["early"]]
            cors.append(f"ep {ep}: {spearman(*zip(*pts)):+.2f}")
        lines.append(f"| {seed} | {u:.2f} | {min(rnd):.2f} / {statistics.median(rnd):.2f} / {max(rnd):.2f} | "
                     f"{max(finals) - u:+.2f} | {finals.index(u) + 1} of {len(finals)} | {'; '.join(cors)} |")
    lines += ["", f"{len(runs)} runs; settings: bench_methods.py task {args.task}, net {args.net}, the quickstart's "
              "module options; one torch thread per run on the shared 2-core CPU."]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
