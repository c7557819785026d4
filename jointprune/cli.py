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

from .errors import JointPruneError
from .module import JointPruneModule


class JointPruneCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.cnn.init_args.num_classes", apply_on="instantiate")


def main(args=None) -> None:
    try:
        JointPruneCLI(JointPruneModule, subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"},
                      save_config_kwargs={"overwrite": True}, args=args)
    except JointPruneError as err:
        print(f"jointprune: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:  # Lightning's exits with status 0; a stopped run is not a finished one
        print("jointprune: stopped by SIGTERM; resume with --ckpt_path last.", file=sys.stderr)
        raise SystemExit(143) from None


if __name__ == "__main__":
    main()
