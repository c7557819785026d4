"""Small models and helpers shared by the pruning tests (imported via sys.path, not a conftest)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from jointprune.models import create_model
from jointprune.pruning import BudgetClipper, ChannelStructure, FlopsModel

# Thin MobileNets keep the zoo-wide tests affordable on 2 cores; the block structure (what the
# dependency graph and the FLOPs model have to understand) does not depend on the width.
SMALL_KWARGS = {name: {"width_mult": 0.35}
                for name in ("cifar_mobilenet_v1", "cifar_mobilenet_v2", "mobilenet_v1", "mobilenet_v2",
                             "tv_mobilenet_v2")}
REPORT_KEYS = ("dense_flops", "pruned_flops", "flops_budget", "dense_params", "pruned_params", "groups")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Small tensors: extra threads only add contention on a shared 2-core machine. Module scope:
    # autouse fixtures come first, so the module's other fixtures (built models) run under it too.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def image_size(name: str) -> int:
    # CIFAR stems keep 32x32 inputs; ImageNet stems downsample 32x, so 64x64 leaves a 2x2 map.
    return 32 if name.startswith("cifar_") else 64


def make_model(name: str, num_classes: int = 5, **kwargs) -> nn.Module:
    return create_model(name, num_classes=num_classes, **{**SMALL_KWARGS.get(name, {}), **kwargs})


def calibrate_bn(model: nn.Module, shape, seed: int = 0, steps: int = 3) -> nn.Module:
    """Put every BN in a non-trivial state: random affine, running stats measured on data.

    Cumulative averaging (momentum=None) makes the running statistics the true statistics of the
    calibration batches, so eval-mode activations stay O(1) even in deep Kaiming-initialised
    ResNets and an absolute tolerance on the logits means something.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    with torch.no_grad():
        for m in bns:
            if m.affine:
                m.weight.copy_(torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=g))
                m.bias.copy_(torch.empty_like(m.bias).normal_(0.0, 0.2, generator=g))
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for _ in range(steps):
            model(1.5 * torch.randn(shape, generator=g) + 0.3)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    return model.eval()


def random_episode(clipper: BudgetClipper, rng: np.random.Generator, actions=None) -> list[int]:
    """One agent episode: random (or given) removal ratios, each clipped to stay within budget."""
    kept: list[int] = []
    for g in range(len(clipper.sizes)):
        a = float(rng.uniform(0.0, clipper.rule.max_ratio)) if actions is None else float(actions[g])
        kept.append(clipper.clip(kept, a)[0])
    return kept


def make_report(fm: FlopsModel, kept, budget: float, dense: nn.Module, small: nn.Module) -> dict:
    return {"dense_flops": fm.dense, "pruned_flops": fm(kept), "flops_budget": budget,
            "dense_params": sum(p.numel() for p in dense.parameters()),
            "pruned_params": sum(p.numel() for p in small.parameters()),
            "groups": {g.name: int(k) for g, k in zip(fm.structure.groups, kept)}}


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and len(message) < 400


class BranchyCNN(nn.Module):
    """A user's own CNN, registered nowhere: stem -> two branches concatenated -> 1x1 conv ->
    depthwise conv -> 1x1 conv -> grouped conv (groups=2) -> 1x1 conv -> 2x2 pool -> linear.

    The 2x2 pool before the flatten makes each channel four classifier inputs, so index
    expansion through `flatten` is exercised too.
    """

    def __init__(self, num_classes: int = 4):
        super().__init__()

        def cbr(cin, cout, k=3, stride=1, groups=1):
            return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = cbr(3, 8)
        self.branch_a = cbr(8, 6)
        self.branch_b = nn.Sequential(nn.Conv2d(8, 10, 3, padding=1, bias=True), nn.BatchNorm2d(10), nn.ReLU())
        self.mix = cbr(16, 12, k=1)
        self.dw = cbr(12, 12, stride=2, groups=12)          # depthwise: rides along in mix's group
        self.pw = cbr(12, 16, k=1)                            # feeds a grouped conv: pruned in 2 halves
        self.grouped = cbr(16, 16, groups=2)                  # grouped conv: its outputs in 2 halves too
        self.head_conv = cbr(16, 10, k=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(10 * 4, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.head_conv(self.grouped(self.pw(self.dw(self.mix(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


# Groups BranchyCNN must offer, in forward order (the root layer names torch-pruning picks).
BRANCHY_GROUPS = ["stem.0", "branch_a.0", "branch_b.0", "mix.0", "pw.0", "grouped.0", "head_conv.0"]


class ConvNet(nn.Module):
    """conv1(+bias) -> bn1 -> relu -> conv2 -> bn2 -> relu -> global pool -> fc: two groups (4, 3)."""

    def __init__(self, cin: int = 1, c1: int = 4, c2: int = 3, num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c1, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class AddNet(nn.Module):
    """Two convs whose outputs are added: their channels form one residual-coupled group."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.a(x) + self.b(x))), 1))


def structure_and_flops(model: nn.Module, x: torch.Tensor, **kwargs):
    st = ChannelStructure(model, x[:1], **kwargs)
    return st, FlopsModel(st)
