"""Extraction: the physically pruned network computes what the masked one does, at the predicted
FLOPs, for every registered model and for a user's own CNN; and it reloads in a fresh process."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from jointprune.models import list_models
from jointprune.pruning import (
    BudgetClipper,
    ChannelStructure,
    FlopsModel,
    MaskError,
    MaskPlan,
    extract_subnetwork,
    full_masks,
    group_importance,
    load_report,
    save_pruned,
    top_k_masks,
)

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import (  # noqa: E402
    BranchyCNN,
    calibrate_bn,
    image_size,
    make_model,
    make_report,
    one_thread,  # noqa: F401
    random_episode,
)

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
# The big torchvision nets (and ResNet-110) get one budget; the rest three.
ONE_BUDGET = {"cifar_resnet110", "tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_mobilenet_v2"}

# A fresh interpreter that imports only torch and jointprune (never the models' own classes) and
# reloads exports on request. One such process serves the whole module: importing torch's export
# machinery costs seconds, and it warms up while the first model is being pruned.
RELOADER = (
    "import sys, torch\n"
    "torch.set_num_threads(1)\n"
    "from jointprune import load_pruned\n"
    "import torch.export.pt2_archive._package, torch._export.serde.serialize  # warm up\n"
    "print('ready', flush=True)\n"
    "for line in sys.stdin:\n"
    "    export, x_path, y_path = line.rstrip('\\n').split('\\t')\n"
    "    try:\n"
    "        m = load_pruned(export)\n"
    "        assert isinstance(m, torch.nn.Module), type(m)\n"
    "        leaked = [k for k in sys.modules if k.startswith(('jointprune.models', 'torchvision', 'test_', 'pruning_helpers'))]\n"
    "        assert not leaked, leaked\n"
    "        with torch.no_grad():\n"
    "            torch.save(m(torch.load(x_path)), y_path)\n"
    "        print('ok', sum(p.numel() for p in m.parameters()), flush=True)\n"
    "    except Exception as err:\n"
    "        print('error', type(err).__name__, str(err).replace('\\n', ' ')[:2000], flush=True)\n"
)


class Reloader:
    def __init__(self, cwd: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.stderr = open(cwd / "stderr.txt", "w+")  # a file, not a pipe: warnings cannot block it
        self.proc = subprocess.Popen([sys.executable, "-c", RELOADER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env, cwd=cwd)
        self.ready = False

    def _line(self, timeout: float = 240.0) -> str:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        if not line:
            self.proc.kill()
            self.stderr.seek(0)
            raise AssertionError(f"the reload process died or hung: {self.stderr.read()[-3000:]}")
        return line.strip()

    def outputs(self, export_dir: Path, x: torch.Tensor) -> torch.Tensor:
        """Outputs of `load_pruned(export_dir)` on `x`, computed in the other process."""
        if not self.ready:
            assert self._line() == "ready"
            self.ready = True
        torch.save(x, export_dir / "x.pt")
        self.proc.stdin.write(f"{export_dir}\t{export_dir / 'x.pt'}\t{export_dir / 'y.pt'}\n")
        self.proc.stdin.flush()
        reply = self._line()
        assert reply.startswith("ok "), reply
        return torch.load(export_dir / "y.pt")

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()


@pytest.fixture(scope="module")
def reloader(tmp_path_factory):
    r = Reloader(tmp_path_factory.mktemp("reloader"))
    yield r
    r.close()


def _root_width(small: nn.Module, name: str) -> int:
    m = small.get_submodule(name)
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


def _check_extraction(model, st, fm, plan, masks, kept, budget, x):
    """Masked == extracted (eval), FLOPs prediction == torch-pruning's count <= budget."""
    with torch.no_grad():
        masked = plan.forward(model, x, masks)
    small = extract_subnetwork(model, st, masks).eval()
    with torch.no_grad():
        extracted = small(x)
    diff, scale = (masked - extracted).abs().max().item(), masked.abs().max().item()
    # Absolute, and relative too: some heads (MobileNetV2's 0.01-std classifier) give tiny logits.
    assert diff <= TOL and diff <= TOL * scale, f"masked vs extracted differ by {diff:.2e} (logits up to {scale:.2e})"
    predicted = fm(kept)
    counted = tp.utils.count_ops_and_params(small, x[:1])[0]
    assert predicted == counted
    assert counted <= budget * fm.dense
    for g, k in zip(st.groups, kept):  # the extracted net has exactly the chosen widths
        assert _root_width(small, g.name) == k
    return small, extracted


# ResNet-110 is ResNet-56 twice as deep (the same blocks, the same code path) and its probe and
# export alone take 15-20 s on 2 cores: it runs with the slow tests (`pytest -m slow`).
DEEP_TWIN = {"cifar_resnet110"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEP_TWIN else n
                                  for n in list_models()])
def test_every_registered_model_prunes_extracts_and_reloads(name, tmp_path, reloader):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    torch.manual_seed(0)
    model = make_model(name)
    s = image_size(name)
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))
    calibrate_bn(model, (4, 3, s, s))
    with torch.no_grad():
        dense_out = model(x)
    assert dense_out.shape == (3, 5) and torch.isfinite(dense_out).all()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    st = ChannelStructure(model, x[:1])
    fm = FlopsModel(st)
    assert fm.dense == tp.utils.count_ops_and_params(model, x[:1])[0]
    plan = MaskPlan(st)
    scores = group_importance(model, st, "l1")
    centres = [0.5] if name in ONE_BUDGET else [0.3, 0.5, 0.7]
    for i, centre in enumerate(centres):
        budget = float(centre + rng.uniform(-0.04, 0.04))
        kept = random_episode(BudgetClipper(fm, budget), rng)
        masks = top_k_masks(scores, kept)
        small, extracted = _check_extraction(model, st, fm, plan, masks, kept, budget, x)
        assert not torch.allclose(extracted, dense_out)  # something was really removed
        if i == len(centres) - 1:  # save the last one and reload it in the other process
            export = tmp_path / "export"
            save_pruned(small, export, make_report(fm, kept, budget, model, small), x[:1])
            reloaded = reloader.outputs(export, x)
            assert reloaded.shape == extracted.shape  # batch 3, though exported from a batch of 2
            assert (reloaded - extracted).abs().max().item() <= 1e-5
            report = load_report(export)
            assert report["pruned_flops"] == fm(kept) <= report["flops_budget"] * report["dense_flops"]
    # Neither masking nor extraction touched the live model.
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), dense_out)


def test_user_cnn_with_concat_depthwise_and_grouped_conv():
    model = calibrate_bn(BranchyCNN(), (8, 3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    st = ChannelStructure(model, x[:1])
    fm = FlopsModel(st)
    plan = MaskPlan(st)
    rng = np.random.default_rng(7)
    for criterion in ("l1", "l2", "bn_scale"):
        scores = group_importance(model, st, criterion)
        for _ in range(2):
            budget = float(rng.uniform(0.35, 0.9))
            kept = random_episode(BudgetClipper(fm, budget), rng)
            small, _ = _check_extraction(model, st, fm, plan, top_k_masks(scores, kept), kept, budget, x)
            # pw and the grouped conv lose channels in equal halves (groups=2); the depthwise
            # conv follows mix.
            assert kept[4] % 2 == 0 and kept[5] % 2 == 0
            assert small.grouped[0].groups == 2 and small.grouped[0].in_channels == kept[4]
            assert small.grouped[0].out_channels == kept[5] and small.head_conv[0].in_channels == kept[5]
            assert small.pw[0].out_channels == kept[4] and small.pw[0].in_channels == kept[3]
            assert small.dw[0].groups == small.dw[0].out_channels == kept[3]
            assert small.mix[0].in_channels == kept[1] + kept[2]
            assert small.fc.in_features == 4 * kept[6]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenet_v2"])
def test_prune_coupled_residual_channels(name):
    model = calibrate_bn(make_model(name), (4, 3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    st = ChannelStructure(model, x[:1], prune_coupled=True)
    fm = FlopsModel(st)
    plan = MaskPlan(st)
    scores = group_importance(model, st, "l2")
    rng = np.random.default_rng(3)
    residual = [g.index for g in st.groups if g.residual]
    assert residual
    for budget in (0.2, 0.45):
        # Prune the residual streams hard so that the adds really lose channels.
        actions = rng.uniform(0, 0.8, len(st))
        actions[residual] = 0.6
        kept = random_episode(BudgetClipper(fm, budget), rng, actions=actions)
        assert all(kept[g] < st.sizes[g] for g in residual)
        _check_extraction(model, st, fm, plan, top_k_masks(scores, kept), kept, budget, x)


def test_full_masks_extract_an_identical_network_and_modes_are_kept():
    model = calibrate_bn(make_model("cifar_resnet20"), (4, 3, 32, 32)).train()
    x = torch.randn(2, 3, 32, 32)
    st = ChannelStructure(model, x[:1])
    small = extract_subnetwork(model, st, full_masks(st))
    assert small.training and small is not model
    model.eval()
    small.eval()
    with torch.no_grad():
        assert torch.equal(small(x), model(x))
    assert tp.utils.count_ops_and_params(small, x[:1])[0] == FlopsModel(st).dense


def test_extract_rejects_bad_masks():
    model = make_model("cifar_resnet20")
    st = ChannelStructure(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(MaskError, match="expected one mask per prunable group"):
        extract_subnetwork(model, st, full_masks(st)[:3])


def test_grouped_conv_keeps_different_offsets_per_conv_group():
    """Top-k within each conv group may keep different input offsets in each: the extracted grouped
    conv gathers each conv group's own columns, so masked and extracted outputs agree."""
    model = calibrate_bn(BranchyCNN(), (8, 3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    st = ChannelStructure(model, x[:1])
    masks = full_masks(st)
    pw = next(g for g in st.groups if g.name == "pw.0")
    masks[pw.index] = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1] + [0, 1, 1, 1, 1, 1, 0, 1], dtype=torch.bool)
    small = extract_subnetwork(model, st, masks)
    assert small.grouped[0].in_channels == 12 and small.grouped[0].weight.shape[1] == 6
    with torch.no_grad():
        assert torch.allclose(MaskPlan(st).forward(model, x, masks), small(x), atol=1e-5)
