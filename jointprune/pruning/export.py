"""The export folder: the pruned network as data that loads without running code from the files.

`<dirpath>/` holds, written together as one unit (a temporary folder renamed into place):

* `pruned.json`: the report (strict JSON): FLOPs, parameters, per-group widths and kept-channel
  indices, input shape and normalisation, class names, accuracies, library versions.
* `pruned.safetensors`: the pruned network's `state_dict` (safetensors holds raw tensors only).
* `pruned.program.json`: the eval-mode network as a Core ATen graph (see `program.py`), so
  `load_pruned(path)` rebuilds it with torch alone.
* `pruned.onnx` when asked (`model.export.onnx: true`), and `widths.png` from the run.

Nothing is unpickled on load: JSON is parsed, tensors are read by safetensors, and the graph is
rebuilt from an allow-list of operators. Folders written by earlier versions (a pickled
`pruned.pt`) are refused with a sentence.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import JointPruneError
from ..utils.atomic import atomic_folder, json_bytes
from .program import ProgramError, build_module, program_from_module, serialize_program
from .capture import shared_or_fresh

REQUIRED_KEYS = ("dense_flops", "pruned_flops", "flops_budget", "dense_params", "pruned_params", "groups")
FORMAT = "jointprune-2"  # the "format" pruned.json claims; the only one load_pruned opens
REPORT, WEIGHTS, PROGRAM, ONNX = "pruned.json", "pruned.safetensors", "pruned.program.json", "pruned.onnx"
# Files an export folder may hold (pruned.pt: earlier versions): only such a folder is replaced.
CLAIM = ".jointprune-run"            # the stamp of the run that writes the folder (jointprune/runs.py)
EXPORT_FILES = {REPORT, WEIGHTS, PROGRAM, ONNX, "widths.png", "pruned.pt", CLAIM}


class ExportError(JointPruneError):
    pass


def is_export_folder(path: Path) -> bool:
    return path.is_dir() and all(p.name in EXPORT_FILES for p in path.iterdir())


def check_export_dir(dirpath: str | Path, setting: str | None = "model.export.dirpath") -> Path:
    """Refuse, before anything is trained or written, a folder that holds other files than an
    export's: replacing it as a unit would delete them."""
    dirpath = Path(dirpath)
    if dirpath.exists() and not is_export_folder(dirpath):
        what = f"{setting}={str(dirpath)!r}" if setting else f"the export folder {dirpath}"
        raise ExportError(f"{what} exists and holds files other than a jointprune export "
                          f"({', '.join(sorted(EXPORT_FILES))}); give a new or empty folder.")
    return dirpath


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for name in ("jointprune", "torch", "torchvision", "torch-pruning", "lightning", "safetensors", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def save_pruned(module: nn.Module, dirpath: str | Path, report: dict, example_input: torch.Tensor,
                onnx: bool = False, extra_files: dict[str, bytes] | None = None, capture=None) -> Path:
    """Write the export folder `dirpath` (see the module docstring) as one unit and return it.

    `report` needs at least REQUIRED_KEYS; `format`, `files`, `input_shape`, `model_class`,
    `versions` and `onnx` are filled in here. `extra_files` (name -> bytes, e.g. widths.png) go
    into the same folder. A failed ONNX export (legacy exporter, then dynamo) leaves the other
    files complete and is recorded in `report["onnx"]["error"]` as one sentence. `capture` (a
    capture.DenseCapture of the dense network, from the start-of-fit check) is reused for the
    program instead of tracing the network again when it reproduces `module` exactly."""
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ExportError(f"the pruned report lacks {', '.join(missing)}; it needs {', '.join(REQUIRED_KEYS)}.")
    dirpath = check_export_dir(dirpath, setting=None)
    from safetensors.torch import save as safetensors_bytes

    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        x = example_input.to(device)
        if x.shape[0] < 2:  # a batch of 1 would be specialised by export; 2 keeps the dim symbolic
            x = torch.cat([x, x])
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        program, batch, program_error = shared_or_fresh(capture, module, x, lambda: _program(module, x))
        files = {"weights": WEIGHTS, "program": PROGRAM if program is not None else None}
        if program is not None:
            description, constants = serialize_program(program)
            tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in constants.items()})
        with tempfile.TemporaryDirectory() as scratch:
            onnx_info = None
            if onnx:
                onnx_info = export_onnx(module, x, Path(scratch) / ONNX, program)
                files["onnx"] = ONNX if onnx_info.get("error") is None else None
            report = dict(report, format=FORMAT, files=files, batch=batch, program_error=program_error,
                          onnx=onnx_info)
            report.setdefault("input_shape", list(example_input.shape[1:]))
            report.setdefault("model_class", type(module).__qualname__)
            report.setdefault("versions", library_versions())
            body = json_bytes(report)  # fails here (not half-way through the folder) on a bad value
            with atomic_folder(dirpath, is_export_folder) as tmp:
                (tmp / WEIGHTS).write_bytes(safetensors_bytes(tensors, metadata={"format": FORMAT}))
                if program is not None:
                    (tmp / PROGRAM).write_bytes(json_bytes(description))
                if onnx and files["onnx"]:
                    (Path(scratch) / ONNX).replace(tmp / ONNX)
                for name, data in (extra_files or {}).items():
                    (tmp / name).write_bytes(data)
                (tmp / REPORT).write_bytes(body)
    finally:
        module.train(was_training)
    return dirpath


def _program(module: nn.Module, x: torch.Tensor):
    """(ExportedProgram or None, "dynamic"/"fixed" batch, the reason in a sentence when None)."""
    first = None
    for dynamic in (True, False):  # a network that specialises its batch size gets a fixed one
        try:
            return program_from_module(module, x, dynamic_batch=dynamic), "dynamic" if dynamic else "fixed", None
        except Exception as err:  # noqa: BLE001 - torch.export raises many kinds; say which
            first = first or err
    reason = f"{type(first).__name__}: {str(first).splitlines()[0][:200] if str(first) else ''}".rstrip(": ")
    return None, None, (f"torch.export could not capture the network ({reason}), so there is no torch-alone "
                        "inference program; load it with load_pruned(path, into=YourNet(...)).")


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str | Path, program=None) -> dict:
    """ONNX with a free batch dimension (needs the `onnx` extra): the legacy TorchScript exporter
    first, torch.export's (dynamo) exporter when that fails. Returns {"file", "exporter", "error"}."""
    path = Path(path)
    failures = []
    with _quiet():
        return _export_onnx(module, example_input, path, program, failures)


@contextmanager
def _quiet():
    """The exporters print graphs and progress (some from C++, straight to the file descriptors);
    the report says in one sentence what happened instead."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with tempfile.TemporaryFile() as sink, redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _export_onnx(module, example_input, path, program, failures) -> dict:
    try:
        torch.onnx.export(module, (example_input,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        return {"file": path.name, "exporter": "torchscript", "error": None}
    except Exception as err:  # noqa: BLE001
        failures.append(f"the legacy exporter raised {type(err).__name__}")
    try:
        source = program if program is not None else module
        shapes = None if program is not None else ({0: torch.export.Dim("batch", min=1, max=1 << 16)},)
        onnx_program = torch.onnx.export(source, (example_input,), input_names=["input"], output_names=["logits"],
                                         dynamic_shapes=shapes, dynamo=True, verbose=False)
        onnx_program.save(str(path))
        return {"file": path.name, "exporter": "dynamo", "error": None}
    except Exception as err:  # noqa: BLE001
        failures.append(f"the dynamo exporter raised {type(err).__name__}")
    path.unlink(missing_ok=True)
    return {"file": None, "exporter": None,
            "error": f"the ONNX export failed ({'; '.join(failures)}), so there is no pruned.onnx; "
                     "the other files are complete."}


# ----------------------------------------------------------------------------- loading
def _resolve(path: str | Path) -> Path:
    """The export folder, given it or any file in it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / REPORT).is_file() or not ((folder / WEIGHTS).is_file() or (folder / "pruned.pt").is_file()):
        raise ExportError(f"{path} is not a jointprune pruned export: expected a folder (or a file in it) "
                          f"holding {REPORT} and {WEIGHTS} as written by jointprune.")
    return folder


def _reject_constant(name):
    raise ValueError(f"{name} is not strict JSON")


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_bytes(), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        detail = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise ExportError(f"{path} is not a valid {what} ({detail}).") from None


def load_report(path: str | Path) -> dict:
    """The export's pruned.json as a dict (strict JSON; missing values are null)."""
    report = _resolve(path) / REPORT
    data = _read_json(report, REPORT)
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        raise ExportError(f"{report} is not a jointprune report: it needs the keys {', '.join(REQUIRED_KEYS)}.")
    return data


def load_pruned(path: str | Path, into: nn.Module | None = None) -> nn.Module:
    """Load a pruned network that `jointprune fit` exported (the folder or any file in it).

    Nothing in the files is executed or unpickled: `pruned.json` is parsed as JSON, the weights
    are read with safetensors, and the network is rebuilt from a checked list of operators.

    * ``load_pruned(path)``: an inference ``nn.Module`` (a ``torch.fx.GraphModule`` of Core ATen
      operators) that needs torch alone, not torchvision nor your model's package. Eval semantics
      are fixed (BN running statistics; no dropout or stochastic depth), ``train()`` does not
      change them. Input: a float tensor ``(N, *report["input_shape"])``, any batch size ``N``
      (``report["batch"] == "dynamic"``), preprocessed as in training: values scaled to [0, 1],
      then ``(x - mean) / std`` per channel with ``report["normalization"]``; for ImageNet-style
      data first resize/crop as ``report["preprocess"]`` says. Output: logits ``(N, classes)``;
      ``report["classes"]`` names them when the data had names.
    * ``load_pruned(path, into=net)``: ``net`` is a fresh, dense instance of the class you trained
      (same constructor arguments). It is cut to the saved widths by replaying torch-pruning's
      surgery with the saved kept-channel indices, and loaded with the saved weights: your own
      class, trainable, with its own train/eval behaviour (dropout, stochastic depth, BN updates),
      counted by ``torch_pruning.utils.count_ops_and_params`` at exactly ``report["pruned_flops"]``.
      Returned in eval mode. Another class or other widths are refused with a sentence.

    ``load_report(path)`` gives ``pruned.json`` as a dict. Errors are ``ExportError`` (a
    ``ValueError``) with one sentence.
    """
    folder = _resolve(path)
    report = load_report(folder)
    if report.get("format") != FORMAT:
        raise ExportError(f"{folder} was written in format {report.get('format')!r} by an earlier jointprune, "
                          f"whose pickled pruned.pt load_pruned no longer opens (unpickling a file can run code); "
                          f"only {FORMAT!r} folders load.")
    tensors = _read_weights(folder / WEIGHTS)
    if into is not None:
        from .replay import replay_into
        return replay_into(into, report, {k: v for k, v in tensors.items() if not k.startswith("_program_constants.")},
                           str(folder))
    if not (report.get("files") or {}).get("program"):
        raise ExportError(f"{folder} holds no inference program ({report.get('program_error') or 'none was saved'}); "
                          "load it with load_pruned(path, into=YourNet(...)).")
    description = _read_json(folder / PROGRAM, PROGRAM) if (folder / PROGRAM).is_file() else None
    if description is None:
        raise ExportError(f"{folder} lacks {PROGRAM}, which its {REPORT} lists.")
    try:
        return build_module(description, tensors).eval()
    except ProgramError as err:
        raise ExportError(f"{folder / PROGRAM} is not a program jointprune wrote: {err}") from None
    except Exception as err:  # noqa: BLE001 - e.g. a tensor name clashing with a module attribute
        raise ExportError(f"{folder / PROGRAM} does not rebuild into a network ({type(err).__name__}).") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load
    if not path.is_file():
        raise ExportError(f"{path} is missing; the export folder needs it.")
    try:
        return safetensors_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise ExportError(f"{path} is not a readable safetensors file ({type(err).__name__}).") from None
