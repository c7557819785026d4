"""experiments/benchmarks/bench_memory_format.py: the half-FLOPs cut it times is within half the
FLOPs, and both layouts are timed on the same network."""
import torch
import torch_pruning as tp

from jointprune.models import create_model


def test_half_flops_cut_and_both_layouts_timed(load_benchmark):
    bench = load_benchmark("bench_memory_format")
    torch.manual_seed(0)
    dense = create_model("cifar_resnet20", num_classes=10)
    shape = (3, 16, 16)
    small = bench.half_flops(dense, shape)
    example = torch.zeros(1, *shape)
    dense_flops, _ = tp.utils.count_ops_and_params(dense, example)
    small_flops, _ = tp.utils.count_ops_and_params(small, example)
    assert 0.3 * dense_flops < small_flops <= 0.5 * dense_flops
    contiguous_ms, channels_last_ms, ratio = bench.time_pair(small, shape, rounds=1)
    assert contiguous_ms > 0 and channels_last_ms > 0
    assert abs(ratio - channels_last_ms / contiguous_ms) < 1e-9  # one round: the ratio of the two times
