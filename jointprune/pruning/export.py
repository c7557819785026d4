"""`pruned.pt` + `pruned.json`: the sub-network as a self-contained program plus its report.

`pruned.pt` holds the network traced with torch.fx: a GraphModule whose generated code replaces
the user's `forward`, while its layers stay standard `torch.nn` modules. Loading it needs torch
only (not jointprune's nor the user's classes), it is trainable and switches train/eval, and
torch-pruning's counter finds the same FLOPs on it as `pruned.json` reports. A network fx
cannot trace is saved as a `torch.export` program instead (dynamic batch; inference only).
`pruned.json` records which ("format"). Both files are written under temporary names.
"""
from __future__ import annotations

from ..errors import JointPruneError

import io
import json
from pathlib import Path

import torch
import torch.nn as nn

from ..utils.atomic import atomic_write_bytes, atomic_write_json

REQUIRED_KEYS = ("dense_flops", "pruned_flops", "flops_budget", "dense_params", "pruned_params", "groups")


class ExportError(JointPruneError):
    pass


def save_pruned(module: nn.Module, dirpath: str | Path, report: dict, example_input: torch.Tensor,
                onnx: bool = False) -> Path:
    """Write `<dirpath>/pruned.pt` and `<dirpath>/pruned.json` (and `pruned.onnx` if asked)."""
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ExportError(f"the pruned report lacks {', '.join(missing)}; it needs {', '.join(REQUIRED_KEYS)}.")
    dirpath = Path(dirpath)
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        x = example_input.to(device)
        if x.shape[0] < 2:  # a batch of 1 would be specialised by export; 2 keeps the dim symbolic
            x = torch.cat([x, x])
        buffer = io.BytesIO()
        report = dict(report, format=_save_program(module, x, buffer))
        atomic_write_bytes(dirpath / "pruned.pt", buffer.getvalue())
        if onnx:
            export_onnx(module, x, dirpath / "pruned.onnx")
    finally:
        module.train(was_training)
    atomic_write_json(dirpath / "pruned.json", report)
    return dirpath


def _save_program(module: nn.Module, x: torch.Tensor, buffer: io.BytesIO) -> str:
    """fx GraphModule when the network traces to the same outputs, else a torch.export program."""
    try:
        traced = torch.fx.symbolic_trace(module)
        with torch.no_grad():
            same = torch.allclose(traced(x), module(x), atol=1e-5, rtol=1e-4)
        if same:
            torch.save(traced, buffer)
            return "fx"
    except Exception:  # noqa: BLE001 - data-dependent control flow and the like: use torch.export
        pass
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: batch},)), buffer)
    return "export"


class ExportedNetwork(nn.Module):
    """A torch.export program as an nn.Module; eval semantics are baked in, so train()/eval()
    only set the flag instead of failing inside the exported graph."""

    def __init__(self, program_module: nn.Module):
        super().__init__()
        self.program = program_module

    def forward(self, x):
        return self.program(x)

    def train(self, mode: bool = True):
        self.training = mode
        return self


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Optional ONNX export (needs the `onnx` extra: onnx + onnxscript)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.onnx.export(module, (example_input,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _resolve(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    program = path / "pruned.pt" if path.is_dir() else path
    report = program.with_name("pruned.json")
    if not program.is_file() or not report.is_file():
        raise ExportError(f"{path} is not a jointprune pruned export: expected a directory (or its pruned.pt) "
                          "holding pruned.pt and pruned.json as written by jointprune.")
    return program, report


def load_report(path: str | Path) -> dict:
    _, report = _resolve(path)
    try:
        data = json.loads(report.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{report} is not a valid pruned.json ({err.msg}).") from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        raise ExportError(f"{report} is not a jointprune report: it needs the keys {', '.join(REQUIRED_KEYS)}.")
    return data


def load_pruned(path: str | Path) -> nn.Module:
    """The pruned network as a plain `nn.Module` ready for inference (eval semantics baked in)."""
    program, _ = _resolve(path)
    report = load_report(path)
    data = io.BytesIO(program.read_bytes())
    try:
        if report.get("format", "export") == "fx":
            # our own file, written by save_pruned: a pickled GraphModule of torch.nn layers
            module = torch.load(data, weights_only=False)
            if not isinstance(module, nn.Module):
                raise TypeError("not a module")
            return module.eval()
        return ExportedNetwork(torch.export.load(data).module()).eval()
    except Exception as err:  # a truncated or foreign file: say what it is, not a zip traceback
        raise ExportError(f"{program} is not a readable jointprune pruned.pt ({type(err).__name__}).") from None
