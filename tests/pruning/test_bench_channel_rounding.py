"""experiments/benchmarks/bench_channel_rounding.py: the same random actions cut the network under
each rounding, every cut keeps multiples of its rounding and meets the FLOPs budget, and the
interleaved timer reports ratios to the dense program."""
import torch
import torch_pruning as tp

from jointprune.models import create_model


def test_cuts_follow_each_rounding_and_meet_the_budget(load_benchmark):
    bench = load_benchmark("bench_channel_rounding")
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=10)
    shape = (3, 16, 16)
    cuts = bench.random_cuts(dense, shape, allocations=1, budget=0.5)
    assert set(cuts) == {(0, r) for r in bench.ROUNDINGS}
    dense_flops, _ = tp.utils.count_ops_and_params(dense, torch.zeros(1, *shape))
    sizes = [16] * 3 + [32] * 3 + [64] * 3  # ResNet-20's internal groups
    for (_, r), (kept, ratio, net) in cuts.items():
        assert all(k % r == 0 or k == size for k, size in zip(kept, sizes)), (r, kept)
        flops, _ = tp.utils.count_ops_and_params(net, torch.zeros(1, *shape))
        assert 0.4 < flops / dense_flops <= 0.5 + 1e-6 and abs(flops / dense_flops - ratio) < 1e-3
    assert any(k % 2 for k in cuts[(0, 1)][0])  # unrounded random cuts do leave odd widths
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    timed = bench.interleaved({"dense": bench.train_stepper(dense, x, y),
                               "cut": bench.train_stepper(cuts[(0, 4)][2], x, y)}, rounds=2, baseline="dense")
    assert timed["dense"][1] == 1.0 and timed["cut"][0] > 0
