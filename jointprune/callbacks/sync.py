"""Keep the agent identical on every DDP rank: decide on rank 0, broadcast to the others."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_modules(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every other rank's (in place)."""
    if not distributed():
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def broadcast_object(obj):
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's share of a tensor held whole by every rank (strided, so shards balance)."""
    if not distributed():
        return tensor
    return tensor[dist.get_rank()::dist.get_world_size()]
