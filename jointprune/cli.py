"""`jointprune fit|validate|test --config cfg.yaml`: LightningCLI with the omegaconf parser mode.

The DataModule's `num_classes` and `input_shape` are linked into the model, so a config names
the data once. `model.cnn` names the network in any of three ways:
  - a class: `class_path: my_pkg.MyCNN` + `init_args` (any `nn.Module`),
  - a builder function: `--model.cnn torchvision.models.efficientnet_b0`,
  - a zoo name from `jointprune.models.list_models()`: `--model.cnn cifar_resnet56`.
When the class or builder takes `num_classes` and the config leaves it at its default, the data's
is used; a different value given on purpose that disagrees with the data is an error.
Errors of ours (bad budget, missing data, NaN loss, ...) print one sentence, not a trace.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Optional

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from jsonargparse import Namespace  # after Lightning, which sets jsonargparse up (int vs float parsing)

from .errors import JointPruneError
from .models.registry import is_model
from .module import JointPruneModule
from .runs import apply_run_seed, check_requested_settings, resolve_resume

ZOO_MODULE = "jointprune.models"


class JointPruneCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        # No link into model.cnn.init_args: jsonargparse cannot link into a builder function's
        # arguments, and a link would silently override a num_classes the user set. See
        # instantiate_classes.
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

    def instantiate_classes(self) -> None:
        """Build the DataModule once beforehand, so that its `num_classes` can go into the CNN's
        arguments (or contradict them, in one sentence) before the CNN is built. DataModules only
        list their data in __init__ (loading is in setup), so the extra instance is cheap."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        spec = config.get("data")
        if not (isinstance(spec, Namespace) and "class_path" in spec):
            super().instantiate_classes()
            return
        data = _instantiate(spec)  # our DataError surfaces as itself, not inside a parser trace
        cnn = config.get("model.cnn")
        if isinstance(cnn, Namespace) and getattr(data, "num_classes", None) is not None:
            _fill_num_classes(cnn, int(data.num_classes))
        super().instantiate_classes()


def import_object(path: str):
    """`pkg.module.Name` -> the object. (Importing jsonargparse's own helper before LightningCLI
    changes how it parses Union[int, float] options, so a plain importlib does it.)"""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _instantiate(spec: Namespace):
    cls = import_object(spec.class_path)
    args = spec.get("init_args") or Namespace()
    return cls(**(args.as_dict() if isinstance(args, Namespace) else dict(args)))


def _fill_num_classes(cnn: Namespace, num_classes: int) -> None:
    """Set model.cnn's num_classes from the data unless the user set a different one on purpose."""
    try:
        target = import_object(cnn.class_path)
        params = inspect.signature(target).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return
    if "num_classes" in params:
        default = params["num_classes"].default
    elif any(p.kind is p.VAR_KEYWORD for p in params.values()) and not inspect.isclass(target):
        default = None  # a builder such as torchvision's passes **kwargs on to the class
    else:
        return  # the CNN takes no num_classes: JointPruneModule checks its outputs instead
    if cnn.get("init_args") is None:
        cnn.init_args = Namespace()
    given = cnn.init_args.get("num_classes")
    if given is not None and given != default and given != num_classes:
        raise JointPruneError(
            f"model.cnn.init_args.num_classes={given} disagrees with the data, which has {num_classes} classes; "
            f"leave num_classes unset (the data's is used) or set it to {num_classes}.")
    cnn.init_args.num_classes = num_classes


def _zoo_names_to_paths(args: list) -> list:
    """`--model.cnn cifar_resnet56` (a name from list_models()) -> `jointprune.models.cifar_resnet56`,
    which jsonargparse resolves like any builder function."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith("--model.cnn=") and is_model(arg.split("=", 1)[1]):
            out[i] = f"--model.cnn={ZOO_MODULE}.{arg.split('=', 1)[1]}"
        elif arg in ("--model.cnn", "--model.cnn.class_path") and i + 1 < len(out) and is_model(str(out[i + 1])):
            out[i + 1] = f"{ZOO_MODULE}.{out[i + 1]}"
    return out


def main(args=None) -> None:
    if args is None:  # rewritten in place: LightningCLI warns when given args and sys.argv both
        sys.argv[1:] = _zoo_names_to_paths(sys.argv[1:])
    try:
        JointPruneCLI(JointPruneModule, subclass_mode_data=True, parser_kwargs={"parser_mode": "omegaconf"},
                      save_config_kwargs={"overwrite": True}, args=args if args is None else _zoo_names_to_paths(args))
    except JointPruneError as err:  # (also raised from before_fit: resolve_resume)
        print(f"jointprune: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except SIGTERMException:  # Lightning's exits with status 0; a stopped run is not a finished one
        print("jointprune: stopped by SIGTERM; resume with --ckpt_path last.", file=sys.stderr)
        raise SystemExit(143) from None


if __name__ == "__main__":
    main()
