"""JointPruneModule: the LightningModule that wires the CNN, the agent and the environment model.

It owns three optimizer groups (cnn | agent: actor + critics | env-repr: embeddings, GRU,
decoder) and the pruning engine built on the CNN. The training step is cross-entropy plus
lambda times the alignment to the incumbent sub-network. Episodes, decoder fitting, SAC updates
and extraction live in the callbacks (`jointprune.callbacks`), the maths in plain modules.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from typing import Optional

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from .agent import EnvironmentRepresentation, ReplayBuffer, RewardDecoder, SoftActorCritic
from .agent.episode import STATE_DIM, PruningEnvironment
from .agent.training import check_agent_options
from .agent.reward import check_reward_metric
from .errors import JointPruneError
from .utils.memory_format import check_memory_format, to_memory_format
from .models.checks import check_exportable, check_outputs
from .options import (AgentOptions, AlignmentOptions, ClusterOptions, EnvReprOptions, ExportOptions,
                      LatencyOptions, OptimOptions, PruningOptions, RewardOptions, ScheduleOptions, resolve_epoch)
from .pruning.latency import check_latency_budget
from .pruning.latency_setup import build_latency_model
from .pruning import (AlignmentRegularizer, BudgetClipper, ChannelStructure, FlopsModel, KeepRule, MaskPlan,
                      check_budget)

AGENT_PREFIXES = ("sac.", "env_repr.", "decoder.")


def _as(cls, value):
    """Options arrive as dataclasses (CLI, Python) or as dicts (a checkpoint's hyper-parameters)."""
    return cls(**value) if isinstance(value, dict) else value


def get_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # plain tensors and numbers only, so checkpoints load with torch.load(weights_only=True)
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class JointPruneModule(L.LightningModule):
    def __init__(
        self,
        cnn: nn.Module,
        flops_budget: Optional[float] = None,
        latency_budget: Optional[float] = None,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: Optional[int] = None,
        seed: int = 0,
        pruning: PruningOptions = PruningOptions(),
        alignment: AlignmentOptions = AlignmentOptions(),
        optim: OptimOptions = OptimOptions(),
        schedule: ScheduleOptions = ScheduleOptions(),
        agent: AgentOptions = AgentOptions(),
        env_repr: EnvReprOptions = EnvReprOptions(),
        reward: RewardOptions = RewardOptions(),
        export: ExportOptions = ExportOptions(),
        latency: LatencyOptions = LatencyOptions(),
        cluster: ClusterOptions = ClusterOptions(),
    ):
        """
        Args:
            cnn: any CNN (`class_path` + `init_args` in a config); trained from scratch.
            flops_budget: fraction of the dense network's FLOPs the pruned network may use, in (0, 1];
                default 0.5, or 1.0 (no FLOPs limit) when latency_budget is set.
            latency_budget: fraction of the dense network's latency, measured at start on
                `latency.device` at `latency.batch_size`, the pruned network may take, in (0, 1].
            input_shape: (C, H, W) of one input; linked from the DataModule by the CLI.
            num_classes: classes of the data; linked from the DataModule and checked against the CNN.
            seed: seeds the agent's exploration (the CLI's seed_everything seeds the rest).
        """
        super().__init__()
        latency_budget = check_latency_budget(latency_budget)
        if flops_budget is None:  # alone, a latency budget is the only limit
            flops_budget = 0.5 if latency_budget is None else 1.0
        check_budget(flops_budget)
        pruning, alignment, optim = _as(PruningOptions, pruning), _as(AlignmentOptions, alignment), _as(OptimOptions, optim)
        check_memory_format(optim.memory_format)
        schedule, agent, env_repr = _as(ScheduleOptions, schedule), _as(AgentOptions, agent), _as(EnvReprOptions, env_repr)
        reward, export = _as(RewardOptions, reward), _as(ExportOptions, export)
        check_reward_metric(reward.metric)
        cluster = _as(ClusterOptions, cluster)
        latency = _as(LatencyOptions, latency)
        # Options are stored as plain dicts so that checkpoints load with weights_only=True.
        self.save_hyperparameters({
            "flops_budget": flops_budget, "latency_budget": latency_budget, "input_shape": list(input_shape), "num_classes": num_classes, "seed": seed,
            **{k: asdict(v) for k, v in dict(pruning=pruning, alignment=alignment, optim=optim, schedule=schedule,
                                             agent=agent, env_repr=env_repr, reward=reward, export=export,
                                             latency=latency, cluster=cluster).items()}})
        self.automatic_optimization = False
        self.cnn = cnn
        self.flops_budget, self.input_shape, self.num_classes = flops_budget, tuple(input_shape), num_classes
        self.seed = seed
        self.pruning, self.alignment, self.optim, self.schedule = pruning, alignment, optim, schedule
        self.agent_opts, self.env_opts, self.reward_opts, self.export_opts = agent, env_repr, reward, export
        self.cluster_opts = cluster
        self.latency_budget, self.latency_opts = latency_budget, latency
        self.latency_model = None  # measured at setup, on the trainer's device (attach_latency_budget)
        self.latency_verify = None  # the measured check after the agent (callbacks/latency_verify.py)
        self.latency_target: Optional[float] = None  # the model ratio episodes are clipped to (None: the budget)
        self.latency_points: list = []  # (model, measured) ratios of the incumbents measured so far
        self.export_capture = None  # the start check's torch.export capture, reused by the export (pruning/capture.py)
        self.engine_ready = False
        # Run state that checkpoints carry (see on_save_checkpoint).
        self.incumbent_kept: Optional[list[int]] = None
        self.incumbent_reward = -math.inf
        self.incumbent_masks: Optional[list[torch.Tensor]] = None
        self.frozen = False
        self.extracted = False
        self.history: list[dict] = []
        self.last_epoch_done = -1          # an epoch's end-of-epoch work never runs twice on resume
        self.pending_rng: Optional[dict] = None
        self.agent_generator = torch.Generator().manual_seed(seed)
        self.build_engine()

    # ----------------------------------------------------------------- engine and agent
    def build_engine(self) -> None:
        """Channel groups, exact FLOPs, budget clipping, masks and alignment for the dense CNN."""
        example = torch.zeros(1, *self.input_shape)
        # Wrong outputs, a too-small input or too few classes: one sentence before any tracing.
        self.num_classes = check_outputs(self.cnn, self.input_shape, self.num_classes)
        self.structure = ChannelStructure(self.cnn, example, prune_coupled=self.pruning.prune_coupled)
        self.flops = FlopsModel(self.structure)
        self.keep_rule = KeepRule(self.pruning.max_ratio, self.pruning.min_channels, self.pruning.round_to)
        self.clipper = BudgetClipper(self.flops, self.flops_budget, self.keep_rule)
        self.environment = PruningEnvironment(self.structure, self.flops, self.clipper,
                                              centred=self.agent_opts.centred_actions)
        self.plan = MaskPlan(self.structure)
        self.aligner = AlignmentRegularizer(self.structure, per_channel=self.alignment.per_channel,
                                            squared=self.alignment.squared, include_bn=self.alignment.include_bn,
                                            weight=self.alignment.weight)
        self.dense_params = sum(p.numel() for p in self.cnn.parameters())

    def setup(self, stage: str) -> None:
        if self.engine_ready:
            return
        if stage == "fit" and self.export_opts.check_at_start and not self.extracted:
            # the export at the end must not fail after training; it reuses this capture (pruning/capture.py)
            from .pruning.capture import DenseCapture
            self.export_capture = DenseCapture.of(check_exportable(self.cnn, self.input_shape))
        max_epochs = max(int(self.trainer.max_epochs or 1), 1)
        self.epochs = self.resolve_schedule(max_epochs)
        check_agent_options(self.agent_opts)
        self.sac = SoftActorCritic(STATE_DIM, self.env_opts.dim, max_action=self.pruning.max_ratio,
                                   hidden=(self.agent_opts.hidden,) * 2, alpha=self.agent_opts.alpha,
                                   gamma=self.agent_opts.gamma, tau=self.agent_opts.tau,
                                   return_weight=self.agent_opts.return_weight)
        self.env_repr = EnvironmentRepresentation(max_epochs, self.env_opts.dim, fixed=not self.env_opts.enabled)
        self.decoder = RewardDecoder(STATE_DIM, 1, self.env_opts.dim, hidden=(self.agent_opts.hidden,) * 2)
        self.replay = ReplayBuffer(self.agent_opts.replay_capacity, STATE_DIM, 1)
        for split in ("train", "val", "test"):
            # validate_args=False: the argument checks read tensor values on the host every step
            setattr(self, f"{split}_acc", MulticlassAccuracy(self.num_classes, average="micro", validate_args=False))
        self.ignore_agent_in_ddp()
        self.attach_latency_budget()
        # after the start's export capture and latency tables (both of the default layout), and
        # before the optimizer and any DDP wrapper see the parameters
        to_memory_format(self.cnn, self.optim.memory_format)
        self.engine_ready = True

    def attach_latency_budget(self) -> None:
        """Measure the latency model on the device (rank 0; the others receive it, so every rank
        clips alike) and make the clipper hold latency to its budget beside FLOPs."""
        if self.latency_budget is None:
            return
        self.latency_model = build_latency_model(self.trainer, self.structure, self.keep_rule, self.latency_opts,
                                                     probe=self.flops.timed_probe)
        self.aim_latency(self.latency_target)

    def aim_latency(self, target: Optional[float]) -> None:
        """Clip every later episode to `target` of the dense latency by the model (None: the
        budget itself). The agent's measured incumbents move the target so that what the model
        allows measures the budget (callbacks/latency_verify.py, `correct_aim`)."""
        self.latency_target = target
        self.clipper = BudgetClipper(self.flops, self.flops_budget, self.keep_rule,
                                     extra_costs=((self.latency_model, target or self.latency_budget),))
        self.environment = PruningEnvironment(self.structure, self.flops, self.clipper,
                                              centred=self.agent_opts.centred_actions)

    def resolve_schedule(self, max_epochs: int) -> dict:
        s = self.schedule
        warmup = s.warmup_epochs
        if not isinstance(warmup, int) or not 0 <= warmup < max_epochs:
            raise JointPruneError(f"warmup_epochs={warmup} must be an epoch count in [0, max_epochs={max_epochs}).")
        until = resolve_epoch("agent_until", s.agent_until, max_epochs)
        if until <= warmup:
            raise JointPruneError(f"agent_until (epoch {until}) must come after warmup_epochs={warmup}, "
                                  f"or the agent never acts; raise agent_until or max_epochs={max_epochs}.")
        extract = max_epochs if s.extract_at is None else resolve_epoch("extract_at", s.extract_at, max_epochs)
        if extract < until:
            raise JointPruneError(f"extract_at (epoch {extract}) must not come before agent_until (epoch {until}).")
        return {"max": max_epochs, "warmup": warmup, "agent_until": until, "extract_at": extract}

    def ignore_agent_in_ddp(self) -> None:
        """DDP must not reduce the agent's and env-repr's gradients: they never take part in the
        CNN's forward, so plain DDP would report them as unused parameters. The agent is kept
        identical across ranks by broadcasting it instead (see callbacks.sync)."""
        names = [n for n, _ in self.named_parameters() if n.startswith(AGENT_PREFIXES)]
        names += [n for n, _ in self.named_buffers() if n.startswith(AGENT_PREFIXES)]
        self._ddp_params_and_buffers_to_ignore = names

    def agent_active(self, epoch: int) -> bool:
        if epoch <= self.last_epoch_done:  # already done before a resume
            return False
        return self.epochs["warmup"] <= epoch < self.epochs["agent_until"] and not self.frozen

    def agent_epoch(self, epoch: int) -> int:
        return epoch - self.epochs["warmup"]

    def current_masks(self) -> Optional[list[torch.Tensor]]:
        return None if self.extracted else self.incumbent_masks

    # ----------------------------------------------------------------- training
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()[0] if isinstance(self.optimizers(), list) else self.optimizers()
        logits = self(x)
        ce = F.cross_entropy(logits, y)
        loss = ce
        masks = self.current_masks()
        # how the alignment acts: its proximal step after SGD's (default), its gradient added
        # after backward (a few multi-tensor ops, no sync), or, only under fp16 loss scaling
        # (which scales the gradients), through the loss
        align = None
        if masks is not None and self.alignment.weight > 0:
            align = "prox" if self.alignment.proximal else "loss" if self._grad_scaled() else "grad"
        if align == "loss":
            loss = ce + self.aligner(self.cnn, masks)
        self.watch_finite(loss.detach(), batch_idx)
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if align == "grad":
            self.aligner.add_grad_(self.cnn, masks)
        opt.step()
        if align == "prox":
            self.aligner.prox_(self.cnn, masks, opt.param_groups[0]["lr"])
        self.train_acc.update(logits.detach(), y)
        self.log("train/loss", ce.detach(), prog_bar=True, on_step=True, on_epoch=True, sync_dist=False)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss.detach()

    def watch_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Remembers on the device the first batch whose loss was not finite and checks it on the
        host only every `trainer.log_every_n_steps` batches and at the epoch's last batch (before
        any end-of-epoch checkpoint): a per-step check would synchronise the GPU every step."""
        bad = getattr(self, "_first_bad_batch", None)
        if bad is None or bad.device != loss.device:
            bad = self._first_bad_batch = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._first_bad_batch = torch.where(torch.isfinite(loss) | (bad >= 0), bad, batch_idx)
        every = max(int(getattr(self.trainer, "log_every_n_steps", 50) or 50), 1)
        if (batch_idx + 1) % every == 0 or batch_idx + 1 == self.trainer.num_training_batches:
            first = int(self._first_bad_batch)  # the one host sync, at a logging interval
            if first >= 0:
                raise JointPruneError(f"the training loss became NaN or infinite at epoch {self.current_epoch} "
                                      f"(batch {first}); lower model.optim.lr. Nothing was saved.")

    def _grad_scaled(self) -> bool:
        return "16-mixed" in str(getattr(self.trainer, "precision", "")) and "bf16" not in str(self.trainer.precision)

    def configure_callbacks(self):
        from .callbacks import AgentEpisodes, RewardDecoding, SubnetExtraction
        from .callbacks.sync import ClusterSafety
        return [ClusterSafety(self.cluster_opts.sync_timeout_s, self.cluster_opts.sigterm_grace_s),
                AgentEpisodes(), RewardDecoding(), SubnetExtraction()]

    def on_train_epoch_start(self) -> None:
        if self.pending_rng is not None:  # resumed: continue the random streams where they stopped
            set_rng_state(self.pending_rng)
            self.pending_rng = None
        self.epoch_started = time.perf_counter()
        self.epoch_stats: dict = {}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.last_batch_end = time.perf_counter()  # weight training ends here; the agent's work follows

    def on_train_epoch_end(self) -> None:
        if self.current_epoch <= self.last_epoch_done:  # Lightning replays an epoch end on resume
            return
        self.last_epoch_done = self.current_epoch
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        from .pruning.align import removed_mass
        mass = 0.0 if self.extracted else float(removed_mass(self.cnn, self.structure, self.current_masks()))
        self.log("prune/removed_mass", mass, sync_dist=False)  # identical on every rank; 0 once cut
        stats = self.epoch_stats
        if not stats:
            if self.current_masks() is not None and self.trainer.is_global_zero:
                print(f"[jointprune] epoch {self.current_epoch}: removed mass {mass:.3f}", flush=True)
            self.log_frozen_summary(mass)
            return
        stats["removed_mass"] = mass
        # the agent runs inside the last batch's end hook (callbacks.sync), so take its time out
        started = getattr(self, "epoch_started", None) or getattr(self, "last_batch_end", 0.0)
        train_seconds = max(getattr(self, "last_batch_end", started) - started - stats["agent_seconds"], 1e-9)
        stats["agent_time_fraction"] = stats["agent_seconds"] / train_seconds
        stats["epoch"] = self.current_epoch
        for key in ("reward_mean", "reward_best", "incumbent_reward", "flops_ratio", "decoder_loss", "critic_loss"):
            value = float(stats.get(key, float("nan")))
            if not math.isfinite(value) and key in ("reward_mean", "reward_best", "incumbent_reward"):
                raise JointPruneError(f"the agent's {key} became {value} at epoch {self.current_epoch}; "
                                      "check the data and the learning rates. Nothing was saved.")
        self.history.append(dict(stats))
        # identical on every rank (decided on rank 0 and broadcast): no reduction needed
        self.log_dict({f"prune/{k}": float(v) for k, v in stats.items() if k != "epoch"}, sync_dist=False)
        if self.incumbent_kept is not None:
            keep = {f"prune_keep/{g.name}": k / g.size for g, k in zip(self.structure.groups, self.incumbent_kept)}
            self.log_dict(keep, sync_dist=False)
        self.print_summary(stats)

    def log_frozen_summary(self, removed_mass: float) -> None:
        """Epochs without agent work log the last summary (agent time 0, this epoch's removed
        mass), so every epoch has prune/*."""
        if not self.history:
            return
        last = {**self.history[-1], "agent_seconds": 0.0, "agent_time_fraction": 0.0, "removed_mass": removed_mass}
        self.log_dict({f"prune/{k}": float(v) for k, v in last.items() if k != "epoch"}, sync_dist=False)
        if self.incumbent_kept is not None:
            keep = {f"prune_keep/{g.name}": k / g.size for g, k in zip(self.structure.groups, self.incumbent_kept)}
            self.log_dict(keep, sync_dist=False)

    def print_summary(self, s: dict) -> None:
        line = (f"[jointprune] epoch {s['epoch']}: reward mean {s['reward_mean']:.4f} best {s['reward_best']:.4f} | "
                f"incumbent {s['incumbent_reward']:.4f} at {s['flops_ratio']:.3f} FLOPs | "
                f"decoder loss {s.get('decoder_loss', float('nan')):.4g} | agent time {s['agent_time_fraction']:.2f} | "
                f"removed mass {s.get('removed_mass', float('nan')):.3f}"
                + (" | random actions" if s.get("random_actions") else "")
                + self.latency_summary(s))
        bar = getattr(self.trainer, "progress_bar_callback", None)
        if self.trainer.is_global_zero:
            if bar is not None and hasattr(bar, "print"):
                bar.print(line)  # above the progress bar, without breaking it
            else:
                print(line, flush=True)

    @staticmethod
    def latency_summary(s: dict) -> str:
        """The summary line's end after a latency check: the closed loop's rounds (the agent's last
        epoch) or the aim it set for later episodes (an earlier one)."""
        if "latency_measured" not in s:
            return ""
        after = (f", {int(s['latency_rounds'])} shrink round(s))" if "latency_rounds" in s
                 else f"); episodes now aim at model {s['latency_target']:.3f}")
        return f" | latency measured {s['latency_measured']:.3f} (model {s['latency_predicted']:.3f}{after}"

    def _eval_step(self, batch, split: str):
        x, y = batch
        params = getattr(self, "_eval_params", None)
        if params is not None:  # masked parameters built once per evaluation epoch
            logits = torch.func.functional_call(self.cnn, params, (x,), strict=False)
        else:
            logits = self.plan.forward(self.cnn, x, self.current_masks()) if not self.extracted else self.cnn(x)
        metric = getattr(self, f"{split}_acc")
        metric.update(logits, y)
        self.log(f"{split}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{split}/flops_ratio", self.flops_ratio(), on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        """With BN recalibration on, judge the network as it would be pruned with recalibrated BN
        statistics too (as the agent does); the live statistics come back afterwards."""
        self._saved_buffers = None
        masks = self.current_masks()
        self._eval_params = self.masked_eval_parameters(masks)
        if masks is None or not self.reward_opts.bn_recalibration or self.trainer.sanity_checking:
            return
        batches = self.recalibration_batches()
        if batches:
            from .agent.reward import recalibrate_bn
            with torch.inference_mode(False), torch.no_grad(), self.precision_context():
                self._saved_buffers = recalibrate_bn(self.cnn, self.plan, masks, batches)

    def masked_eval_parameters(self, masks):
        """The masked parameters for a whole evaluation epoch (the weights do not change in it)."""
        if masks is None:
            return None
        with torch.no_grad():
            return {k: v.detach() for k, v in self.plan.masked_parameters(self.cnn, masks).items()}

    def on_test_epoch_start(self) -> None:
        self._eval_params = self.masked_eval_parameters(self.current_masks())

    def on_test_epoch_end(self) -> None:
        self._eval_params = None

    def precision_context(self):
        """The trainer's precision (e.g. bf16-mixed autocast) for work outside Lightning's steps:
        reward scoring and BN recalibration."""
        from contextlib import nullcontext
        trainer = getattr(self, "_trainer", None)
        return trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()

    def on_validation_epoch_end(self) -> None:
        self._eval_params = None
        if self._saved_buffers is not None:
            from .agent.reward import restore_buffers
            restore_buffers(self.cnn, self._saved_buffers)
            self._saved_buffers = None

    def reward_calibration(self) -> tuple[Optional[list[torch.Tensor]], bool]:
        """(training batches to re-estimate BN on, whether to use the reward batch's own stats)."""
        r = self.reward_opts
        if not r.bn_recalibration:
            return None, False
        if r.recalibration_source == "reward":
            return None, True
        return self.recalibration_batches(), False

    def recalibration_batches(self) -> list[torch.Tensor]:
        loader = self.trainer.train_dataloader
        if loader is None:
            return []
        batches = []
        for i, (x, _) in enumerate(loader):
            if i >= self.reward_opts.recalibration_batches:
                break
            batches.append(x.to(self.device))
        return batches

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def flops_ratio(self) -> float:
        """FLOPs of the network as it would be pruned now, over the dense FLOPs."""
        if self.incumbent_kept is None:
            return 1.0
        return float(self.flops(self.incumbent_kept) / self.flops.dense)

    def configure_optimizers(self):
        o = self.optim
        cnn_opt = torch.optim.SGD(self.cnn.parameters(), lr=o.lr, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov)
        actor_opt = torch.optim.Adam(self.sac.actor_parameters(), lr=self.agent_opts.actor_lr)
        critic_opt = torch.optim.Adam(self.sac.critic_parameters(), lr=self.agent_opts.critic_lr)
        env_opt = torch.optim.Adam(list(self.env_repr.parameters()) + list(self.decoder.parameters()), lr=self.env_opts.lr)
        max_epochs = self.epochs["max"]
        if o.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(cnn_opt, T_max=max_epochs)
        elif o.scheduler == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(
                cnn_opt, milestones=[int(round(m * max_epochs)) for m in o.milestones], gamma=o.gamma)
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(cnn_opt, lambda _: 1.0)
        return [cnn_opt, actor_opt, critic_opt, env_opt], [sched]

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["jointprune"] = {
            "incumbent_kept": self.incumbent_kept,
            "incumbent_reward": self.incumbent_reward,
            "incumbent_masks": [m.cpu() for m in self.incumbent_masks] if self.incumbent_masks else None,
            "frozen": self.frozen,
            "extracted": self.extracted,
            "history": self.history,
            "replay": self.replay.state_dict(),
            "agent_generator": self.agent_generator.get_state(),
            "last_epoch_done": self.last_epoch_done,
            "cut_stats": getattr(self, "cut_stats", None),
            "align_floor": getattr(self, "align_floor", None),
            "latency_verify": getattr(self, "latency_verify", None),
            "latency_target": self.latency_target,
            "latency_points": [list(p) for p in self.latency_points],
            "rng": self.pending_rng or get_rng_state(),
            # the agent's work of an epoch ends before its checkpoint (callbacks/sync.py), its
            # logging after; and pruned.json's extraction facts must survive a restart
            "epoch_stats": getattr(self, "epoch_stats", {}),
            "extracted_at": getattr(self, "extracted_at", None),
            "dense_test_acc": getattr(self, "dense_test_acc", None),
            "pruned_test_acc": getattr(self, "pruned_test_acc", None),
            "run_stamp": getattr(self, "run_stamp", None),
            "settings": self.resume_settings(),
        }

    def resume_settings(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoint (runs.py)."""
        return {"model.flops_budget": self.flops_budget, "model.schedule": asdict(self.schedule),
                "schedule epochs (with trainer.max_epochs)": dict(self.epochs),
                "model.pruning": asdict(self.pruning), "model.cnn": type(self.cnn).__name__,
                "model.cnn parameters": self.dense_params, "model.cnn FLOPs": int(self.flops.dense),
                "model.input_shape": list(self.input_shape), "num_classes": self.num_classes}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("jointprune")
        if state is None:
            return
        from .runs import check_resume_settings
        check_resume_settings(state.get("settings", {}), self.resume_settings())
        self.run_stamp = state.get("run_stamp")
        self.incumbent_kept = state["incumbent_kept"]
        self.incumbent_reward = state["incumbent_reward"]
        self.incumbent_masks = state["incumbent_masks"]
        self.frozen = state["frozen"]
        self.history = state["history"]
        self.replay.load_state_dict(state["replay"])
        self.agent_generator.set_state(state["agent_generator"])
        self.last_epoch_done = state["last_epoch_done"]
        if state.get("cut_stats") is not None:
            self.cut_stats = state["cut_stats"]
        self.align_floor = state.get("align_floor")
        self.latency_verify = state.get("latency_verify")
        self.latency_points = [tuple(p) for p in state.get("latency_points") or []]
        self.latency_target = state.get("latency_target")
        if self.latency_model is not None:  # setup aimed at the budget: go on where the run was
            self.aim_latency(self.latency_target)
        self.pending_rng = state["rng"]
        self.epoch_stats = dict(state.get("epoch_stats", {}))
        self.extracted_at, self.dense_test_acc = state.get("extracted_at"), state.get("dense_test_acc")
        self.pruned_test_acc = state.get("pruned_test_acc")
        if state["extracted"] and not self.extracted:
            # The checkpoint holds the small network's weights: cut the dense CNN to the same
            # shape first, so that the state dict (and the optimizer state) fit.
            from .callbacks.subnet_extraction import extract_in_place
            extract_in_place(self, optimizer=None)
