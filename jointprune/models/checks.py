"""Checks on the user's dense network, run before the first epoch, each failing in one sentence
that names what is wrong and what is allowed (instead of a traceback, possibly after training)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import JointPruneError


class NetworkError(JointPruneError):
    """A network jointprune cannot train or prune, said in one sentence."""


def check_num_classes(num_classes: int | None) -> None:
    if num_classes is not None and num_classes < 2:
        raise NetworkError(f"the data has {num_classes} class{'es' if num_classes != 1 else ''}; "
                           "classification needs at least 2 classes (check the data's folders or labels).")


def check_outputs(cnn: nn.Module, input_shape, num_classes: int | None = None) -> int:
    """Run the network in train and eval mode on a batch of 2 zero images and check that it
    returns (batch, classes) logits; returns the number of classes. Leaves weights and BN
    statistics as they were."""
    check_num_classes(num_classes)
    x = torch.zeros(2, *input_shape, device=_device(cnn))
    buffers = {name: b.clone() for name, b in cnn.named_buffers()}
    was_training = cnn.training
    out = None
    try:
        for mode in (True, False):  # auxiliary heads (GoogLeNet, Inception) return tuples only in training
            cnn.train(mode)
            with torch.no_grad():
                try:
                    out = cnn(x)
                except Exception as err:  # noqa: BLE001 - the network's own error, said in one line
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise NetworkError(
                        f"model.cnn cannot take inputs of shape {tuple(input_shape)} (the data's input_shape) in "
                        f"{'training' if mode else 'eval'} mode ({type(err).__name__}: {first[:200]}); use larger "
                        "images (e.g. the data's crop_size) or a network made for this input size.") from None
            _check_logits(out, mode)
    finally:
        cnn.train(was_training)
        with torch.no_grad():
            for name, b in cnn.named_buffers():
                b.copy_(buffers[name])
    classes = int(out.shape[1])
    if classes < 2:
        raise NetworkError(f"model.cnn outputs {classes} class score per image; classification needs at least 2 "
                           "(set its num_classes to the data's number of classes).")
    if num_classes is not None and classes != num_classes:
        raise NetworkError(f"model.cnn outputs {classes} classes but the data has {num_classes}; "
                           f"set model.cnn.init_args.num_classes: {num_classes}.")
    return classes


def _check_logits(out, training: bool) -> None:
    mode = "training" if training else "eval"
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        raise NetworkError(
            f"model.cnn returns a {kind} in {mode} mode, not a logits tensor of shape (batch, classes); make forward "
            "return only the logits (for torchvision's GoogLeNet or Inception v3 pass aux_logits: false, "
            "otherwise wrap the network in a module whose forward returns the logits tensor).")
    if out.dim() != 2 or out.shape[0] != 2:
        raise NetworkError(
            f"model.cnn returns a tensor of shape {tuple(out.shape)} for a batch of 2 images in {mode} mode; "
            "it must return logits of shape (batch, classes): flatten the pooled features before the classifier.")


def check_exportable(cnn: nn.Module, input_shape):
    """torch.export (non-strict, dynamic batch) must capture the dense network's forward: the pruned
    network is written with it at the end of training, so a forward it cannot capture (Python
    control flow on tensor values, ...) is said now rather than after the whole run. Returns the
    ExportedProgram (eval mode), which the export at the end reuses (pruning/capture.py)."""
    x = torch.zeros(2, *input_shape, device=_device(cnn))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    was_training = cnn.training
    cnn.eval()
    try:
        return torch.export.export(cnn, (x,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as err:  # noqa: BLE001 - many torch.export error types; the first line says which
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise NetworkError(
            f"torch.export cannot capture model.cnn's forward ({type(err).__name__}: {first[:160]}), so the pruned "
            "network could not be saved; make forward free of Python control flow on tensor values (if/while on "
            "a tensor, .item(), .tolist()) or set model.export.check_at_start: false to skip this check.") from None
    finally:
        cnn.train(was_training)


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
