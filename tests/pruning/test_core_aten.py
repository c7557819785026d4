"""Core ATen by rewriting a CNN's eval-mode training IR in place: only Core ATen operators come
out, the program computes what the network computes, and anything the rewrite does not know is
left to run_decompositions()."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.export import Dim, ExportedProgram

from jointprune.models import CifarResNet, MobileNetV2
from jointprune.pruning.capture import DenseCapture, retargeted_program
from jointprune.pruning.core_aten import INPLACE, core_aten, rewritten_program
from jointprune.pruning.program import build_module, serialize_program


def capture(net: nn.Module, side: int = 16) -> ExportedProgram:
    return torch.export.export(net.eval(), (torch.randn(2, 3, side, side),),
                               dynamic_shapes=({0: Dim("batch", min=1, max=1 << 16)},))


def operators(program) -> set:
    return {n.target for n in program.graph.nodes if n.op == "call_function"}


def all_core(program) -> bool:
    return all(torch.Tag.core in t.tags or t is torch.ops.aten.sym_size.int
               for t in operators(program) if isinstance(t, torch._ops.OpOverload))


@pytest.fixture
def no_retrace(monkeypatch):
    def refuse(self, *a, **k):
        raise AssertionError("run_decompositions was called")
    monkeypatch.setattr(ExportedProgram, "run_decompositions", refuse)


class Head(nn.Module):
    """flatten + dropout + linear, the classifier forms the rewrite handles."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, groups=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 5, bias=False)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1)))


class InPlace(nn.Module):
    """What torchvision's ResNet, MobileNetV3 and EfficientNet do in place (`relu_`, `out +=
    identity`, inplace hardswish/silu/hardsigmoid), a max pool, and readers of a mutated tensor
    both before and after the mutation (a wrong renaming would change the output)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.acts = nn.Sequential(nn.Hardswish(inplace=True), nn.SiLU(inplace=True), nn.Hardsigmoid(inplace=True))
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        out = self.pool(torch.relu_(self.bn(self.conv(x))))
        before = out * 2.0              # reads `out` before it is mutated
        y = self.conv2(out)
        y += out                        # add_: `y` mutated
        y.relu_()                       # its result unused: later readers read `y`
        z = self.acts(y) + before + y   # reads the mutated `y`
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


@pytest.mark.parametrize("make", [lambda: CifarResNet(depth=8, num_classes=5, width=4),
                                  lambda: MobileNetV2(num_classes=5, width_mult=0.25),
                                  Head, InPlace], ids=["resnet", "mobilenetv2", "head", "inplace"])
def test_rewrite_gives_core_aten_that_matches_eager(make, no_retrace):
    torch.manual_seed(0)
    net = make().eval()
    for m in net.modules():  # non-trivial BN statistics, so a wrong BN form would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    program = capture(net)
    assert not all_core(program)  # the training IR holds conv2d, linear, batch_norm, ...
    if make is InPlace:  # ... and here relu_, add_, hardswish_, silu_, hardsigmoid_
        assert len(operators(program) & set(INPLACE)) == 5
    core = core_aten(program)
    assert all_core(core), operators(core)
    x = torch.randn(5, 3, 16, 16)  # another batch size than the capture's
    with torch.no_grad():
        torch.testing.assert_close(core.module()(x), net(x), rtol=1e-5, atol=1e-5)
        description, constants = serialize_program(core)  # and the saved form rebuilds it
        rebuilt = build_module(description, {**dict(net.state_dict()), **constants})
        torch.testing.assert_close(rebuilt(x), net(x), rtol=1e-5, atol=1e-5)


def test_unknown_operator_is_left_to_run_decompositions():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)).eval()
    program = capture(net)
    assert rewritten_program(program) is None
    core = core_aten(program)
    assert all_core(core)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(core.module()(x), net(x))


def test_dropout_as_the_output_is_left_to_run_decompositions():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.1)).eval()
    assert rewritten_program(capture(net)) is None


def test_a_mutated_view_or_input_is_left_to_run_decompositions():
    """Renaming is only right for an intermediate tensor that nothing else aliases."""
    class MutatesView(nn.Module):
        def forward(self, x):
            y = torch.relu(x)
            flat = y.view(y.shape[0], -1)
            flat.add_(1.0)              # mutates `y` through the view
            return y * 2.0

    class MutatesInput(nn.Module):
        def forward(self, x):
            x.relu_()
            return x * 2.0

    for net in (MutatesView(), MutatesInput()):
        program = torch.export.export(net, (torch.randn(2, 3, 4, 4),))
        assert rewritten_program(program) is None
        x = torch.randn(2, 3, 4, 4)
        with torch.no_grad():
            torch.testing.assert_close(core_aten(program).module()(x.clone()), net(x.clone()))


def test_unlisted_argument_form_is_left_to_run_decompositions():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same")).eval()  # conv2d.padding (a string)
    program = capture(net)
    assert rewritten_program(program) is None
    assert all_core(core_aten(program))


def test_retargeted_capture_carries_the_pruned_shapes(no_retrace):
    """The dense capture handed pruned weights: the program's values (what ONNX export reads)
    follow the pruned tensors, and it computes the pruned network."""
    torch.manual_seed(0)
    dense = CifarResNet(depth=8, num_classes=5, width=4).eval()
    shared = DenseCapture.of(capture(dense))
    block = [m for m in dense.modules() if type(m).__name__ == "BasicBlock"][0]
    block.conv1 = nn.Conv2d(block.conv1.in_channels, 2, 3, padding=1, bias=False)
    block.bn1 = nn.BatchNorm2d(2)
    block.conv2 = nn.Conv2d(2, block.conv2.out_channels, 3, padding=1, bias=False)
    pruned = dense.eval()
    program = retargeted_program(shared, pruned, torch.randn(2, 3, 16, 16))
    assert program is not None and all_core(program)
    channels = [n.meta["val"].shape[1] for n in program.graph.nodes
                if n.op == "call_function" and n.target is torch.ops.aten.convolution.default]
    assert channels.count(2) == 1  # the pruned convolution's output, not the dense 4


def test_a_rewrite_that_does_not_reproduce_the_module_is_not_used(monkeypatch):
    from jointprune.pruning import core_aten as module_under_test
    aten = torch.ops.aten

    def wrong_batch_norm(graph, node):  # the right form with another epsilon: same shapes, other numbers
        x, w, b, mean, var = node.args[:5]
        out = module_under_test._call(graph, aten._native_batch_norm_legit_no_training.default,
                                      (x, w, b, mean, var, 0.1, 10.0))
        import operator
        return module_under_test._call(graph, operator.getitem, (out, 0))

    monkeypatch.setitem(module_under_test.REWRITES, aten.batch_norm.default, wrong_batch_norm)
    net = Head().eval()
    x = torch.randn(2, 3, 16, 16)
    program = capture(net)
    assert rewritten_program(program) is not None  # the wrong rewrite is applied ...
    core = core_aten(program, net, x)  # ... but caught against the eager module
    assert all_core(core)
    with torch.no_grad():
        torch.testing.assert_close(core.module()(x), net(x))
