"""model.optim.memory_format: the CNN trains with channels_last conv weights (momentum too, and
again after the cut), and the network the user gets is back in the default layout."""
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn as nn

from jointprune.errors import JointPruneError
from jointprune.module import JointPruneModule
from jointprune.options import OptimOptions
from jointprune.utils.memory_format import to_memory_format

sys.path.insert(0, str(Path(__file__).parents[1] / "method"))
from test_fit import small_run  # noqa: E402
from tiny import TinyCNN  # noqa: E402

CL = torch.channels_last


def conv_weights(model: nn.Module):
    return [p for p in model.parameters() if p.dim() == 4]


def test_layout_changes_in_place_with_the_momentum_and_back():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 8, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    weight, before = net[0].weight, net[0].weight.detach().clone()
    to_memory_format(net, "channels_last", opt)
    assert net[0].weight is weight  # the optimizer (and a later DDP wrapper) still hold it
    assert weight.is_contiguous(memory_format=CL) and not weight.is_contiguous()
    assert torch.equal(weight, before)  # only the layout changed
    assert opt.state[weight]["momentum_buffer"].is_contiguous(memory_format=CL)
    assert net[1].weight.is_contiguous() and net[3].weight.is_contiguous()  # 1-D / 2-D: untouched
    to_memory_format(net, "contiguous", opt)
    assert weight.is_contiguous() and opt.state[weight]["momentum_buffer"].is_contiguous()


class LayoutSpy(L.Callback):
    """The conv weights' layout at every training batch, before and after the cut."""
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pm, batch, batch_idx):
        self.seen.append((pm.extracted, all(w.is_contiguous(memory_format=CL) for w in conv_weights(pm.cnn))))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_training_runs_in_the_chosen_layout_and_the_user_gets_the_default_one(tmp_path, layout):
    model, trainer, dm = small_run(tmp_path, optim=OptimOptions(memory_format=layout))
    spy = LayoutSpy()
    trainer.callbacks.append(spy)
    trainer.fit(model, dm)
    assert {extracted for extracted, _ in spy.seen} == {False, True}  # batches on both sides of the cut
    assert all(is_cl == (layout == "channels_last") for _, is_cl in spy.seen)
    assert all(w.is_contiguous() for w in conv_weights(model.cnn))
    assert (tmp_path / "export" / "pruned.safetensors").is_file()


def test_an_unknown_layout_is_refused_in_one_sentence():
    with pytest.raises(JointPruneError, match=r"model.optim.memory_format='nhwc' is not a layout; use one of"):
        JointPruneModule(TinyCNN(num_classes=10), optim=OptimOptions(memory_format="nhwc"),
                         input_shape=(3, 16, 16), num_classes=10)
