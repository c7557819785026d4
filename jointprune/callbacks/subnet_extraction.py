"""SubnetExtraction: freeze the incumbent at `agent_until`, physically prune the CNN at
`extract_at` (training then continues on the small network, its SGD momentum sliced to the kept
channels and the LR schedule untouched), and at the end of fit write the export folder
(pruned.json, pruned.safetensors, pruned.program.json, widths.png; see pruning/export.py)."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ..errors import JointPruneError
from ..pruning.align import removed_mass
from ..pruning.export import CLAIM, check_export_dir
from ..pruning.extract import cut_in_place, prune_keeping_momentum
from ..utils.memory_format import to_memory_format
from .report import baseline_summary, evaluate, final_report, log_width_plot, print_final_table, width_plot_png


def extract_in_place(pm, optimizer) -> None:
    """Cut the live CNN to the incumbent on its own dependency graph; SGD momentum is sliced to
    the kept channels."""
    prune_keeping_momentum(pm.cnn, optimizer, lambda: cut_in_place(pm.structure, pm.incumbent_masks))
    to_memory_format(pm.cnn, pm.optim.memory_format, optimizer)  # the surgery's new tensors, and their momentum
    pm.extracted = True


class SubnetExtraction(L.Callback):
    def __init__(self):
        self.dense_arch = None

    def on_fit_start(self, trainer, pm) -> None:
        from ..runs import claim_export, new_run_stamp, record_run
        check_export_setup(trainer, pm)  # a bad export folder or baseline stops before training
        if getattr(pm, "run_stamp", None) is None:  # a resumed run keeps its stamp (checkpoint)
            pm.run_stamp = new_run_stamp()
        if trainer.is_global_zero:  # before any training: the export folder is this run's alone
            claim_export(export_dir(trainer, pm), pm.run_stamp)
            record_run(trainer)
        if not pm.extracted:  # an untrained copy of the dense architecture, to time it at the end
            self.dense_arch = copy.deepcopy(pm.cnn).cpu()

    def on_exception(self, trainer, pm, exception: BaseException) -> None:
        if trainer.is_global_zero and getattr(pm, "run_stamp", None) is not None:
            from ..runs import release_export
            release_export(export_dir(trainer, pm), pm.run_stamp)

    def on_train_epoch_start(self, trainer, pm) -> None:
        epoch = trainer.current_epoch
        if epoch >= pm.epochs["agent_until"] and not pm.frozen:
            pm.frozen = True  # from here on the alignment pulls toward one fixed sub-network
            rank_zero_info(f"[jointprune] epoch {epoch}: incumbent frozen at {pm.flops_ratio():.3f} of dense FLOPs")
        if epoch >= pm.epochs["extract_at"] and not pm.extracted:
            self._extract(trainer, pm, epoch)

    def _extract(self, trainer, pm, epoch: int) -> None:
        # what the cut costs: the removed channels' remaining share, and val top-1 of the
        # unmasked network just before the cut and of the small network just after it; the test
        # top-1 of both goes to the report (rank 0). Where validation runs on the test split
        # (no val split carved), the same pass gives both.
        dm = trainer.datamodule
        same = bool(getattr(dm, "val_is_test", False))
        test_top1 = lambda: evaluate(pm.cnn, dm.test_dataloader(), pm.device, masks=None)  # noqa: E731
        val = dm.val_dataloader()
        pm.cut_stats = {"removed_mass_at_cut": float(removed_mass(pm.cnn, pm.structure, pm.incumbent_masks)),
                        "top1_before_cut": evaluate(pm.cnn, val, pm.device, masks=None)}
        if trainer.is_global_zero:  # only rank 0 writes the report; kept in checkpoints (module.py)
            pm.dense_test_acc = pm.cut_stats["top1_before_cut"] if same else test_top1()
        extract_in_place(pm, pm.optimizers()[0].optimizer)
        pm.cut_stats["top1_after_cut"] = evaluate(pm.cnn, val, pm.device, masks=None)
        rank_zero_info("[jointprune] at the cut: removed mass {removed_mass_at_cut:.4f}, val top-1 "
                       "{top1_before_cut:.4f} before -> {top1_after_cut:.4f} after".format(**pm.cut_stats))
        _rewrap_ddp(trainer, pm)
        pm.extracted_at = epoch
        if trainer.is_global_zero:  # the network just cut, before it trains on (checkpointed like the dense one)
            pm.pruned_test_acc = pm.cut_stats["top1_after_cut"] if same else test_top1()
        rank_zero_info(f"[jointprune] epoch {epoch}: network physically pruned; training continues on "
                       f"{sum(p.numel() for p in pm.cnn.parameters()):,} parameters")

    def on_fit_end(self, trainer, pm) -> None:
        if pm.incumbent_masks is None:
            raise JointPruneError("the run ended before the agent chose a sub-network; "
                                  "let the joint phase run for at least one epoch.")
        if not pm.extracted:
            self._extract(trainer, pm, trainer.current_epoch)
        to_memory_format(pm.cnn, "contiguous")  # the network the user gets, timed and exported as deployed
        for name, p in pm.cnn.named_parameters():
            if not torch.isfinite(p).all():
                raise JointPruneError(f"parameter {name} holds NaN or infinite values at the end of fit; "
                                      "nothing was saved.")
        if not trainer.is_global_zero:
            return
        dirpath = export_dir(trainer, pm)
        report = final_report(trainer, pm, self.dense_arch, getattr(pm, "dense_test_acc", None),
                              getattr(pm, "pruned_test_acc", None), baseline_summary(pm.export_opts.baseline))
        from ..pruning import save_pruned
        example = torch.zeros(1, *pm.input_shape, device=pm.device)
        save_pruned(pm.cnn, dirpath, report, example, onnx=pm.export_opts.onnx,
                    extra_files={"widths.png": width_plot_png(report), CLAIM: pm.run_stamp.encode()},
                    capture=pm.export_capture)
        log_width_plot(trainer, dirpath / "widths.png")
        onnx_error = (report.get("onnx") or {}).get("error") if pm.export_opts.onnx else None
        if onnx_error:
            rank_zero_info(f"[jointprune] {onnx_error[0].upper()}{onnx_error[1:]}")
        pm.export_dir = dirpath
        print_final_table(report, dirpath)
        from ..runs import log_run_summary
        log_run_summary(trainer, report)


def export_dir(trainer, pm) -> Path:
    """`export.dirpath` may name {flops_budget}, {latency_budget}, {seed} (seed_everything) and
    {version} (the logger's run id, else this run's unique stamp), so that the runs of a sweep
    into one directory never overwrite each other; runs.claim_export refuses a folder another run
    writes."""
    template = pm.export_opts.dirpath or str(Path(trainer.default_root_dir) / "pruned")
    version = trainer.logger.version if trainer.logger is not None else None
    fields = {"flops_budget": pm.flops_budget, "latency_budget": pm.latency_budget,
              "seed": os.environ.get("PL_GLOBAL_SEED", "none"),
              "version": version if version is not None else getattr(pm, "run_stamp", "none")}
    try:
        return Path(template.format(**fields))
    except (KeyError, IndexError, ValueError) as err:
        raise JointPruneError(f"model.export.dirpath={template!r} names an unknown field ({err}); "
                              "use {flops_budget}, {latency_budget}, {seed} or {version}.") from None


def check_export_setup(trainer, pm) -> None:
    """The export folder must be new or an earlier export (it is replaced as a unit), and a
    baseline, when named, must be a readable export."""
    check_export_dir(export_dir(trainer, pm))
    baseline_summary(pm.export_opts.baseline)


def _rewrap_ddp(trainer, pm) -> None:
    """The DDP reducer holds the old parameters; wrap the pruned module afresh."""
    strategy = trainer.strategy
    from torch.nn.parallel import DistributedDataParallel
    if isinstance(strategy.model, DistributedDataParallel):
        pm.ignore_agent_in_ddp()
        strategy.model = strategy._setup_model(pm)
