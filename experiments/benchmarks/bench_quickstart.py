"""The quickstart's evidence, over seeds: jointprune vs a dense network trained for the same epochs.

For each seed it runs `experiments/quickstart.yaml` (train from scratch + prune to 0.5 FLOPs in
one run) and two dense CifarResNet-20 references with the same data, optimiser, schedule and
epochs, and prints one markdown table: test accuracy, FLOPs ratio, whether the decoder's
reconstruction error fell and the agent's mean reward rose over the joint phase, the agent's
share of the epoch time, and the total wall time of the jointprune run against each reference;
then where the jointprune run's wall time goes (dense epochs before the cut, agent, the test and
val passes at the cut, pruned epochs, validation, end of fit) next to the references' epochs.

The references, so that like is compared with like:
* "bare": the training loop alone (no validation, no checkpoints, no test): a floor no real run
  reaches, and what earlier versions of this script compared against;
* "like-for-like": what a user's dense run of the same config costs: the config's Trainer
  settings (validation every epoch with the sanity check, ModelCheckpoint save_last + top-1
  every epoch) and one test pass at the end, as the jointprune run does (its final report tests
  the network; it also validates and tests at the cut, times latency and writes the export);
* "like-for-like-cl": the same with the conv weights in channels_last, the layout jointprune
  trains in by default (`model.optim.memory_format`): a plain Lightning run trains contiguous,
  so like-for-like is what a user pays without jointprune, and like-for-like-cl isolates the
  method's own cost.
Each program runs in a fresh Python process, as a user's run does: every one loads its own data
and pays its own first calls (kernel set-up, torch.export's warm-up). Run in one process, the
program that came first paid those for the others, and the data set up by the jointprune run was
reused by both dense runs for free. The order alternates by seed (jointprune, bare, like-for-like
for even seeds, the reverse for odd ones), so drift on a shared machine hits all three alike.
Times are of `Trainer.fit` (plus the test pass for like-for-like); the whole process, imports
included, is reported beside them.

    python experiments/benchmarks/bench_quickstart.py [--seeds 0 1 2] [--quick] [--against like-for-like-cl]
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torchmetrics.classification import MulticlassAccuracy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jointprune.cli import JointPruneCLI  # noqa: E402
from jointprune.callbacks.subnet_extraction import SubnetExtraction  # noqa: E402
from jointprune.module import JointPruneModule  # noqa: E402
from jointprune.utils.memory_format import to_memory_format  # noqa: E402


class CutTimer:
    """Seconds spent in the passes at the cut (dense test and val top-1, pruned val and test
    top-1, the surgery), which run at the start of the first pruned epoch."""
    seconds = 0.0
    real = SubnetExtraction._extract

    @classmethod
    def install(cls):
        def timed(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return cls.real(self, *args, **kwargs)
            finally:
                cls.seconds += time.perf_counter() - start
        SubnetExtraction._extract = timed


class DenseModule(L.LightningModule):
    """The same CNN, optimiser and schedule as the quickstart, with no pruning at all."""

    def __init__(self, cnn, optim, max_epochs, num_classes):
        super().__init__()
        self.cnn, self.optim, self.max_epochs = cnn, optim, max_epochs
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.cnn(x), y)

    def _eval_step(self, batch, split):
        x, y = batch
        metric = getattr(self, f"{split}_acc")
        metric.update(self.cnn(x), y)
        self.log(f"{split}/acc", metric, on_step=False, on_epoch=True)

    def validation_step(self, batch, _):
        self._eval_step(batch, "val")

    def test_step(self, batch, _):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.SGD(self.cnn.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.max_epochs)]


@torch.no_grad()
def test_accuracy(cnn, dm) -> float:
    cnn.eval()
    correct = total = 0
    for x, y in dm.test_dataloader():
        correct += int((cnn(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


class PhaseTimer(L.Callback):
    """Where a run's wall time goes: training epochs (agent work excluded), validation, and the
    end of fit (final report, latency timing, export) after the last epoch."""

    def __init__(self):
        self.epoch = {}
        self.val = 0.0
        self.train_end = None

    def on_train_epoch_start(self, trainer, pm):
        self._epoch_start = time.perf_counter()
        self._val_in_epoch = 0.0

    def on_validation_epoch_start(self, trainer, pm):
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pm):
        spent = time.perf_counter() - self._val_start
        self.val += spent
        self._val_in_epoch = getattr(self, "_val_in_epoch", 0.0) + spent

    def on_train_epoch_end(self, trainer, pm):
        self.epoch[trainer.current_epoch] = time.perf_counter() - self._epoch_start - self._val_in_epoch

    def on_train_end(self, trainer, pm):
        self.train_end = time.perf_counter()


def quickstart_cli(seed: int, overrides: list[str], work: Path) -> JointPruneCLI:
    args = ["--config", str(ROOT / "experiments" / "quickstart.yaml"), "--seed_everything", str(seed),
            "--trainer.default_root_dir", str(work / f"jp{seed}"), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *overrides]
    return JointPruneCLI(JointPruneModule, subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"},
                         run=False, args=args, save_config_kwargs={"overwrite": True})


def run_jointprune(seed: int, overrides: list[str], work: Path) -> dict:
    cli = quickstart_cli(seed, overrides, work)
    timer = PhaseTimer()
    cli.trainer.callbacks.insert(0, timer)
    CutTimer.install()
    start, cpu = time.perf_counter(), time.process_time()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    end_of_fit = time.perf_counter() - timer.train_end
    report = json.loads((work / f"jp{seed}" / "pruned" / "pruned.json").read_text())
    history = report["history"]
    extract = cli.model.epochs["extract_at"]
    agent = sum(h["agent_seconds"] for h in history)
    phases = {  # seconds
        "dense epochs before the cut": sum(v for e, v in timer.epoch.items() if e < extract) - agent,
        "agent (episodes, decoder, SAC)": agent,
        "test and val passes at the cut": CutTimer.seconds,
        "pruned epochs after the cut": sum(v for e, v in timer.epoch.items() if e >= extract) - CutTimer.seconds,
        "validation (all epochs)": timer.val,
        "end of fit (report, latency, export)": end_of_fit,
        "other (setup, checkpoints, hooks)": seconds - sum(timer.epoch.values()) - timer.val - end_of_fit,
    }
    return {
        "jp_test_acc": report["test_acc"], "flops_ratio": report["flops_ratio"], "budget": report["flops_budget"],
        "decoder_loss_first_epoch": history[0]["decoder_loss"], "decoder_loss_last_epoch": history[-1]["decoder_loss"],
        "reward_mean_first_learned": next(h["reward_mean"] for h in history if not h.get("random_actions")),
        "reward_mean_last": history[-1]["reward_mean"],
        "agent_time_fraction": statistics.median(h["agent_time_fraction"] for h in history),
        "jp_seconds": seconds,
        # CPU seconds of this process (both torch threads): time other machines' load steals from
        # a run does not count here, so on a shared host this ratio moves less than wall time
        "jp_cpu_seconds": cpu,
        # within each agent epoch, the decoder's MSE over its first and last tenth of steps
        "decoder_fit_per_epoch": [(h["decoder_loss_first"], h["decoder_loss"]) for h in history],
        "reward_mean_per_epoch": [h["reward_mean"] for h in history],
        "phases": phases,
    }


def run_dense(seed: int, overrides: list[str], work: Path, like_for_like: bool, layout: str = "contiguous") -> dict:
    """A dense reference: the quickstart's CNN class and arguments, freshly initialised with the
    same seed, its data, optimiser and epochs. Bare: the training loop alone; like-for-like: the
    config's Trainer settings (validation each epoch, last + top-1 checkpoints every epoch) and a
    final test pass, as a user's dense run would have. `layout`: the conv weights' memory format
    while training (a plain Lightning run trains contiguous; jointprune in channels_last)."""
    cli = quickstart_cli(seed, overrides, work)
    cnn_config = cli.config["model"]["cnn"]
    dm = cli.datamodule  # set up inside the timed fit, as in the jointprune run
    init = dict(cnn_config.get("init_args") or {}, num_classes=dm.num_classes)
    module_name, _, cls_name = cnn_config["class_path"].rpartition(".")
    L.seed_everything(seed)
    cnn = getattr(importlib.import_module(module_name), cls_name)(**init)
    to_memory_format(cnn, layout)
    dense = DenseModule(cnn, cli.model.optim, cli.trainer.max_epochs, dm.num_classes)
    variant = (dict(default_root_dir=str(work / f"dense{seed}"), callbacks=[ModelCheckpoint(save_last=True, save_top_k=1)])
               if like_for_like else dict(enable_checkpointing=False, limit_val_batches=0))
    trainer = L.Trainer(max_epochs=cli.trainer.max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, **variant)
    timer = PhaseTimer()
    trainer.callbacks.insert(0, timer)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(dense, dm)
    test = trainer.test(dense, dm, verbose=False)[0]["test/acc"] if like_for_like else None
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    extract = cli.model.resolve_schedule(cli.trainer.max_epochs)["extract_at"]
    return {"seconds": seconds, "cpu_seconds": cpu, "test_acc": test if like_for_like else test_accuracy(dense.cnn, dm),
            "epochs_before_cut": sum(v for e, v in timer.epoch.items() if e < extract),
            "epochs_after_cut": sum(v for e, v in timer.epoch.items() if e >= extract),
            "validation": timer.val, "rest": seconds - sum(timer.epoch.values()) - timer.val}


# like-for-like-cl: the like-for-like run with its conv weights in channels_last, the layout
# jointprune trains in by default (model.optim.memory_format), so that the ratio against it is the
# method's own cost and the ratio against like-for-like what a user pays over a plain dense run
PROGRAMS = ("jointprune", "bare", "like-for-like", "like-for-like-cl")


def run_child(program: str, seed: int, quick: bool, work: Path) -> dict:
    """One program in a fresh interpreter; its JSON result and the process's own wall time."""
    cmd = [sys.executable, __file__, "--child", program, "--seeds", str(seed), "--work", str(work)]
    start = time.perf_counter()
    done = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
    process_seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{program} (seed {seed}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(result, process_seconds=process_seconds)


def run_seed(seed: int, quick: bool, work: Path) -> dict:
    order = PROGRAMS if seed % 2 == 0 else PROGRAMS[::-1]
    out = {program: run_child(program, seed, quick, work) for program in order}
    jp, bare, full, full_cl = out["jointprune"], out["bare"], out["like-for-like"], out["like-for-like-cl"]
    phases = dict(jp.pop("phases"))
    phases.update({
        "dense reference: epochs before the cut": bare["epochs_before_cut"],
        "dense reference: epochs after the cut": bare["epochs_after_cut"],
        "like-for-like dense: validation (all epochs)": full["validation"],
        "like-for-like dense: rest (setup, checkpoints, test)": full["rest"],
    })
    return dict(jp, seed=seed, order=list(order), dense_test_acc=bare["test_acc"], dense_full_test_acc=full["test_acc"],
                dense_seconds=bare["seconds"], dense_full_seconds=full["seconds"],
                dense_cpu_seconds=bare["cpu_seconds"], dense_full_cpu_seconds=full["cpu_seconds"],
                dense_full_cl_seconds=full_cl["seconds"], dense_full_cl_cpu_seconds=full_cl["cpu_seconds"],
                dense_full_cl_test_acc=full_cl["test_acc"],
                process_seconds={k: v["process_seconds"] for k, v in out.items()}, phases=phases)


def against_one(reference: str, seeds: list[int], quick: bool, out: Path) -> None:
    """Only jointprune and one dense reference per seed (order alternating by seed): twice the
    seeds in the time of the full comparison, for a ratio a shared machine's drift blurs."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            order = ("jointprune", reference) if seed % 2 == 0 else (reference, "jointprune")
            res = {program: run_child(program, seed, quick, Path(tmp)) for program in order}
            rows.append({"seed": seed, "order": list(order), "reference": reference, **res})
            print(json.dumps(rows[-1]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"\n| seed | jointprune s (CPU s) | {reference} s (CPU s) | wall ratio | CPU ratio | test top-1 jointprune / {reference} "
          "| jointprune: pruned epochs / dense epochs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        jp, ref = r["jointprune"], r[reference]
        ph = jp["phases"]
        print(f"| {r['seed']} | {jp['jp_seconds']:.1f} ({jp['jp_cpu_seconds']:.1f}) | {ref['seconds']:.1f} ({ref['cpu_seconds']:.1f}) "
              f"| {jp['jp_seconds'] / ref['seconds']:.2f}x | {jp['jp_cpu_seconds'] / ref['cpu_seconds']:.2f}x "
              f"| {jp['jp_test_acc']:.4f} / {ref['test_acc']:.4f} "
              f"| {ph['pruned epochs after the cut'] / ph['dense epochs before the cut']:.2f} |")
    med = lambda f: statistics.median(f(r) for r in rows)  # noqa: E731
    print(f"| median | | | {med(lambda r: r['jointprune']['jp_seconds'] / r[reference]['seconds']):.2f}x "
          f"| {med(lambda r: r['jointprune']['jp_cpu_seconds'] / r[reference]['cpu_seconds']):.2f}x | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16x16 digits, 4 epochs")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "benchmarks" / "results" / "quickstart.json")
    parser.add_argument("--against", choices=PROGRAMS[1:], help="run only jointprune and this reference per seed")
    parser.add_argument("--child", choices=PROGRAMS, help=argparse.SUPPRESS)  # one program, in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(2)
        overrides = []
        if args.quick:
            overrides = ["--data.init_args.resize", "16", "--trainer.max_epochs", "4",
                         "--model.schedule.agent_until", "3", "--model.schedule.extract_at", "3"]
        seed = args.seeds[0]
        result = (run_jointprune(seed, overrides, args.work) if args.child == "jointprune"
                  else run_dense(seed, overrides, args.work, like_for_like=args.child.startswith("like-for-like"),
                                 layout="channels_last" if args.child == "like-for-like-cl" else "contiguous"))
        print(json.dumps(result), flush=True)
        return
    if args.against:
        against_one(args.against, args.seeds, args.quick, args.out)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            rows.append(run_seed(seed, args.quick, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print("\nPer agent epoch: mean reward, and the decoder's MSE over its first -> last steps of the epoch")
    for r in rows:
        print(f"seed {r['seed']}: rewards " + " ".join(f"{v:.3f}" for v in r["reward_mean_per_epoch"]) + " | decoder "
              + " ".join(f"{a:.4f}->{b:.4f}" for a, b in r["decoder_fit_per_epoch"]))
    print("\n| seed | jointprune test acc | dense test acc | FLOPs ratio (budget) | decoder MSE first→last "
          "| mean reward first learned→last | agent time / epoch | jointprune s | dense s: bare / like-for-like "
          "| time ratio vs bare | time ratio vs like-for-like |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['jp_test_acc']:.4f} | {r['dense_test_acc']:.4f} | {r['flops_ratio']:.3f} ({r['budget']}) "
              f"| {r['decoder_loss_first_epoch']:.4g}→{r['decoder_loss_last_epoch']:.4g} "
              f"| {r['reward_mean_first_learned']:.3f}→{r['reward_mean_last']:.3f} | {r['agent_time_fraction']:.2f} "
              f"| {r['jp_seconds']:.1f} | {r['dense_seconds']:.1f} / {r['dense_full_seconds']:.1f} "
              f"| {r['jp_seconds'] / r['dense_seconds']:.2f}x | {r['jp_seconds'] / r['dense_full_seconds']:.2f}x |")
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    ratio = lambda ref: statistics.median(r["jp_seconds"] / r[ref] for r in rows)  # noqa: E731
    print(f"| median | {med('jp_test_acc'):.4f} | {med('dense_test_acc'):.4f} | {med('flops_ratio'):.3f} | | | "
          f"{med('agent_time_fraction'):.2f} | {med('jp_seconds'):.1f} | {med('dense_seconds'):.1f} / "
          f"{med('dense_full_seconds'):.1f} | {ratio('dense_seconds'):.2f}x | {ratio('dense_full_seconds'):.2f}x |")
    cpu_ratio = lambda ref: statistics.median(r["jp_cpu_seconds"] / r[ref] for r in rows)  # noqa: E731
    print("\nCPU-time ratio (process CPU seconds, median over seeds): vs bare "
          f"{cpu_ratio('dense_cpu_seconds'):.2f}x, vs like-for-like {cpu_ratio('dense_full_cpu_seconds'):.2f}x; per seed: "
          + ", ".join(f"{r['jp_cpu_seconds']:.1f} / {r['dense_cpu_seconds']:.1f} / {r['dense_full_cpu_seconds']:.1f} s"
                      for r in rows))
    print("\nAgainst the like-for-like dense run in channels_last (jointprune's training layout; the method's own "
          f"cost), median over seeds: wall {ratio('dense_full_cl_seconds'):.2f}x, CPU {cpu_ratio('dense_full_cl_cpu_seconds'):.2f}x; "
          "per seed wall / CPU s: " + ", ".join(f"{r['dense_full_cl_seconds']:.1f} / {r['dense_full_cl_cpu_seconds']:.1f}"
                                                for r in rows))
    proc = lambda k: statistics.median(r["process_seconds"]["jointprune"] / r["process_seconds"][k] for r in rows)  # noqa: E731
    print("\nWhole process (fresh interpreter, imports included), median over seeds: vs bare "
          f"{proc('bare'):.2f}x, vs like-for-like {proc('like-for-like'):.2f}x; per seed: "
          + ", ".join(" / ".join(f"{r['process_seconds'][k]:.1f}" for k in PROGRAMS) + " s" for r in rows))
    print("\n| where the time goes (median s) | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | median |")
    print("|---|" + "---|" * (len(rows) + 1))
    for phase in rows[0]["phases"]:
        values = [r["phases"][phase] for r in rows]
        print(f"| {phase} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
