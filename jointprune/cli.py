"""`jointprune fit|validate|test --config cfg.yaml`: LightningCLI with the omegaconf parser mode.

The DataModule's `num_classes` and `input_shape` are linked into the model, so a config names
the data once. `model.cnn` takes any `nn.Module` by `class_path`/`init_args`; when the CNN's
constructor has a `num_classes` argument that the config leaves unset, the data's is used.
Errors of ours (bad budget, missing data, NaN loss, ...) print one sentence, not a trace.
"""
from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from typing import Optional

from .errors import JointPruneError
from .module import JointPruneModule
from .runs import apply_run_seed, check_requested_settings, resolve_resume


class JointPruneCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.cnn.init_args.num_classes", apply_on="instantiate")
        # run identity and resume (jointprune/runs.py)
        parser.add_argument("--seed", type=Optional[int], default=None,
                            help="sets seed_everything, model.seed and the data split's seed at once (sweeps)")
        parser.add_argument("--allow_fresh_start", type=bool, default=False,
                            help="with --ckpt_path last: start a new run when no checkpoint is found")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        cfg = self.config.get(self.config.get("subcommand")) if "subcommand" in self.config else self.config
        if cfg is not None and "seed" in cfg:
            apply_run_seed(cfg)
        # LightningCLI replaces the model's settings by an explicit checkpoint's: keep what was asked
        self.requested_model = cfg["model"].clone() if cfg is not None and "model" in cfg else None

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.config.get("subcommand")) if "subcommand" in self.config else self.config
        if self.requested_model is not None and cfg is not None:
            check_requested_settings(self.requested_model, cfg["model"])

    def before_fit(self) -> None:
        cfg = self.config_init[self.subcommand]
        cfg["ckpt_path"] = resolve_resume(self.trainer, cfg.get("ckpt_path"), bool(cfg.get("allow_fresh_start")))


def main(args=None) -> None:
    try:
        JointPruneCLI(JointPruneModule, subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"},
                      save_config_kwargs={"overwrite": True}, args=args)
    except JointPruneError as err:  # (also raised from before_fit: resolve_resume)
        print(f"jointprune: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:  # Lightning's exits with status 0; a stopped run is not a finished one
        print("jointprune: stopped by SIGTERM; resume with --ckpt_path last.", file=sys.stderr)
        raise SystemExit(143) from None


if __name__ == "__main__":
    main()
