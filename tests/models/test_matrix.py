"""Every torchvision classification family and our zoo, end to end through the pruning engine.

For each network (random init, small input): channel groups are found, the exact FLOPs model
agrees with torch-pruning's counter on the extracted network, the masked network computes what
the extracted one does, a kept-count allocation meets the 0.5 budget while using at least 97 % of
it, and the exported network reloads. The allocation here is a uniform ratio filled up greedily
(`allocate_under_budget`), built in the test: it shows the budget is *reachable* with each
group's kept counts (multiples of `ChannelGroup.multiple`), independently of the agent's clipper.

The full matrix is slow (`pytest -m slow tests/models/test_matrix.py`); a few small,
representative networks run in the default suite. Set JOINTPRUNE_MATRIX_OUT=file.jsonl to
collect one line of results per network (the README's table comes from it).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp
import torchvision.models as tvm

from jointprune.models import create_model
from jointprune.pruning import (ChannelStructure, FlopsModel, MaskPlan, extract_subnetwork, group_importance,
                                load_pruned, save_pruned, top_k_masks)

sys.path.insert(0, str(Path(__file__).parent.parent / "pruning"))
from pruning_helpers import calibrate_bn, make_report, one_thread  # noqa: E402,F401

BUDGET, MAX_RATIO, MIN_USE = 0.5, 0.8, 0.97

# family -> (builder, kwargs, input size)
TORCHVISION = {
    "AlexNet": (tvm.alexnet, {}, 64),
    "VGG": (tvm.vgg11_bn, {}, 32),
    "ResNet": (tvm.resnet18, {}, 64),
    "ResNeXt": (tvm.resnext50_32x4d, {}, 64),
    "Wide-ResNet": (tvm.wide_resnet50_2, {}, 64),
    "DenseNet": (tvm.densenet121, {}, 64),
    "SqueezeNet": (tvm.squeezenet1_1, {}, 64),
    # Auxiliary heads make forward return a tuple in training; jointprune asks for aux_logits=False.
    "GoogLeNet": (tvm.googlenet, {"aux_logits": False, "init_weights": True}, 64),
    "Inception v3": (tvm.inception_v3, {"aux_logits": False, "init_weights": True}, 96),
    "MobileNetV2": (tvm.mobilenet_v2, {}, 64),
    "MobileNetV3": (tvm.mobilenet_v3_small, {}, 64),
    "MNASNet": (tvm.mnasnet0_5, {}, 64),
    "ShuffleNetV2": (tvm.shufflenet_v2_x0_5, {}, 64),
    "EfficientNet": (tvm.efficientnet_b0, {}, 64),
    "EfficientNetV2": (tvm.efficientnet_v2_s, {}, 64),
    "RegNetX": (tvm.regnet_x_400mf, {}, 64),
    "RegNetY": (tvm.regnet_y_400mf, {}, 64),
    "ConvNeXt": (tvm.convnext_tiny, {}, 64),
}
ZOO = {
    "cifar_resnet20": ({}, 32),
    "cifar_mobilenet_v1": ({"width_mult": 0.35}, 32),
    "cifar_mobilenet_v2": ({"width_mult": 0.35}, 32),
    "tv_resnet18": ({}, 64),
}
FAST = {"cifar_resnet20", "MobileNetV3", "RegNetX"}


def build(name: str):
    if name in TORCHVISION:
        fn, kwargs, size = TORCHVISION[name]
        return fn(weights=None, num_classes=5, **kwargs), size
    kwargs, size = ZOO[name]
    return create_model(name, num_classes=5, **kwargs), size


def candidates(group) -> np.ndarray:
    """Kept counts allowed for a group: multiples of its conv-group count, at most MAX_RATIO removed."""
    m = group.multiple
    fewest = math.ceil((1 - MAX_RATIO) * group.size - 1e-9)
    counts = [k for k in range(m, group.size + 1, m) if k >= fewest]
    return np.asarray(counts or [group.size])


def allocate_under_budget(structure, flops, budget: float) -> list[int]:
    """The largest uniform keep ratio that fits the budget, then single steps added greedily
    (largest group first) while the budget still holds."""
    cands = [candidates(g) for g in structure.groups]
    limit = budget * flops.dense

    def uniform(keep):
        return [int(c[min(np.searchsorted(c, keep * g.size), len(c) - 1)]) for c, g in zip(cands, structure.groups)]

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flops(uniform(mid)) <= limit else (lo, mid)
    kept = uniform(lo)
    if flops(kept) > limit:
        return kept  # even the fewest counts do not fit: the caller's assertion says so
    order = np.argsort([-g.size for g in structure.groups])
    for _ in range(8):
        grew = False
        for g in order:
            pos = np.searchsorted(cands[g], kept[g])
            if pos + 1 < len(cands[g]):
                trial = list(kept)
                trial[g] = int(cands[g][pos + 1])
                if flops(trial) <= limit:
                    kept, grew = trial, True
        if not grew:
            break
    return kept


def check_network(name: str, tmp_path: Path) -> dict:
    torch.manual_seed(0)
    started = time.perf_counter()
    model, size = build(name)
    x = torch.randn(2, 3, size, size)
    calibrate_bn(model, (4, 3, size, size))
    st = ChannelStructure(model, x[:1])
    fm = FlopsModel(st)
    kept = allocate_under_budget(st, fm, BUDGET)
    masks = top_k_masks(group_importance(model, st, "l1"), kept)
    small = extract_subnetwork(model, st, masks)
    with torch.no_grad():
        masked, extracted = MaskPlan(st).forward(model, x, masks), small(x)
    counted = tp.utils.count_ops_and_params(small, x[:1])[0]
    report = make_report(fm, kept, BUDGET, model, small)
    save_pruned(small, tmp_path, report, x[:1])
    with torch.no_grad():
        reloaded = load_pruned(tmp_path)(x)
    return {"family": name, "groups": len(st), "grouped": sum(g.multiple > 1 for g in st.groups),
            "dense_reasons": st.dense_reasons, "flops_model": fm(kept), "flops_counted": float(counted),
            "ratio": fm(kept) / fm.dense, "used": fm(kept) / (BUDGET * fm.dense),
            "masked_vs_extracted": float((masked - extracted).abs().max()),
            "output_scale": float(extracted.abs().max()),
            "reload_diff": float((reloaded - extracted).abs().max()), "seconds": time.perf_counter() - started}


def assert_passes(result: dict) -> None:
    out = os.environ.get("JOINTPRUNE_MATRIX_OUT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
    assert result["groups"] > 0
    assert round(result["flops_model"]) == round(result["flops_counted"])
    assert result["ratio"] <= BUDGET + 1e-12 and result["used"] >= MIN_USE, result
    # Relative to the logits' scale: deep random-init nets reach logits of several hundred.
    assert result["masked_vs_extracted"] <= 1e-4 * max(1.0, result["output_scale"]), result
    assert result["reload_diff"] <= 1e-4 * max(1.0, result["output_scale"]), result


ALL = list(TORCHVISION) + list(ZOO)


@pytest.mark.parametrize("name", sorted(FAST))
def test_representative_networks_prune_end_to_end(name, tmp_path):
    assert_passes(check_network(name, tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in FAST])
def test_every_family_prunes_end_to_end(name, tmp_path):
    assert_passes(check_network(name, tmp_path))
