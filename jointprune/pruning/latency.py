"""A latency model of any CNN, measured on the target device at start: latency(kept) for a vector
of kept channel counts, as a cost model for the budget clipper (name, dense, __call__).

latency(k) = rest + sum over layer calls of t_i(k_a, k_b), where each timed layer call (conv,
linear, batch norm, activation, pooling) depends on the kept counts of at most two groups (the
one feeding its input channels and the one setting its output channels). Which groups drive which
call's channel counts is *measured*, as in `flops.py`: remove one channel of each group in turn
with torch-pruning's surgery on a copy and record every call's shapes. Each t_i is a lookup table
measured on the device (layers built standalone at that shape, after a warm-up call, threads
pinned, CUDA synchronised) at `grid_points` counts per group spread evenly over the counts the
keep rule allows, and interpolated (linearly, bilinearly for two groups) in between. An entry is
the mean of the two fastest calls once they agree within 10 % (`steady_ms`), not a plain median:
on a shared machine a call of a few ms is preempted for whole time slices more often than not.
Calls whose shapes no group changes are not tabulated: they form the constant `rest`. The untimed
ops between two calls (a residual add, a reshape: a "gap") run on the tensor the call before them
made, so a gap after a call whose output channels a group sets scales with that group: linear
between its time in the dense network and in the network cut to the fewest counts, both timed
in place with hooks, each piece the fastest of a few forwards (`measure_gaps`; proportional to
the channels when such gaps are too small a share to be worth timing the fewest network). Held
constant, these gaps (12 % of ResNet-56's dense latency with its residual streams pruned) made
a hard cut look 1.6x slower than it measures.

Every timing runs on a steady host allocator (utils/allocator.py): with glibc's defaults a cold
process pays page faults for its activations on every forward, and the tables, built at the start
of a run, disagreed with measurements taken after training by a factor of two at hard cuts.

Latency is not monotone in channel counts (CPU kernels block channels in 8s and 16s): nothing
here assumes it is, and the clipper searches the feasible counts instead.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch_pruning.utils import op_counter

from ..errors import JointPruneError
from ..options import LatencyOptions
from ..utils.allocator import steady_allocator
from .latency_table import LatencyCache, device_name, pinned_threads, steady_ms, synchronize, time_ms
from .structure import BATCHNORM, ChannelStructure, StructureError, forward_with_hooks

CONV = nn.modules.conv._ConvNd


def check_latency_budget(budget) -> Optional[float]:
    if budget is None:
        return None
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or math.isnan(budget) \
            or not 0.0 < budget <= 1.0:
        raise JointPruneError(f"latency_budget must be a fraction of the dense network's measured latency "
                              f"in (0, 1], or null for none; got {budget!r}.")
    return float(budget)


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise JointPruneError(f"model.latency.batch_size must be an integer of at least 1, got {batch_size!r}.")
    return batch_size


def _timed_module(m: nn.Module) -> bool:
    """Layers the model times: parametrised convs/linears/BNs, and parameter-free layers the FLOPs
    counter knows (activations, pooling). Other leaves (dropout, flatten) fall into `rest`."""
    if isinstance(m, (CONV, nn.Linear, BATCHNORM)):
        return True
    return op_counter.is_supported_instance(m) and not any(True for _ in m.parameters(recurse=False)) \
        and not any(True for _ in m.children())


def timed_call(module: nn.Module, inputs, output) -> Optional[dict]:
    """For a layer the model times (else None): the module and the shapes its time depends on.
    Also recorded by the FLOPs model's probe (flops.py), whose surgery this model reuses."""
    if not _timed_module(module):
        return None
    shape = tuple(int(s) for s in inputs[0].shape)
    linear = isinstance(module, nn.Linear)
    rec = {"module": module, "shape": shape[1:],  # without the batch
           "cin": shape[-1] if linear else shape[1] if len(shape) > 1 else 1}
    if isinstance(module, (CONV, nn.Linear)):
        rec["cout"] = int(output.shape[-1] if linear else output.shape[1])
    if isinstance(module, CONV):
        rec["groups"] = int(module.groups)
    return rec


def _record(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Per timed call, in call order: the module and the shapes its time depends on."""
    calls: list[dict] = []

    def hook(module, inputs, output):
        calls.append(timed_call(module, inputs, output))

    forward_with_hooks(model, x, hook, [m for m in model.modules() if _timed_module(m)])
    return calls


QUANTITIES = ("cin", "cout", "groups")


def _quantities(call: dict) -> dict[str, int]:
    return {k: call[k] for k in QUANTITIES if k in call}


def _quantity_rows(calls: list[dict]) -> np.ndarray:
    return np.array([[_quantities(c).get(k, 0) for k in QUANTITIES] for c in calls], dtype=np.float64)


def _probe(structure: ChannelStructure) -> tuple[list[dict], list[str], np.ndarray]:
    """The dense calls, their module names, and d[i, q, g]: how much quantity q of call i drops
    when group g loses one channel (0 or 1 for ordinary CNNs). Used when the FLOPs model's probe
    (`FlopsModel.timed_probe`, the same surgery) is not at hand."""
    x = structure.example_input[:1].cpu()
    probe = copy.deepcopy(structure.model).cpu().eval()
    probe_structure = ChannelStructure(probe, x, prune_coupled=structure.prune_coupled)
    names = [g.name for g in structure.groups]
    if [g.name for g in probe_structure.groups] != names:
        raise StructureError("the network's channel groups changed between two traces; "
                             "jointprune needs a deterministic forward pass.")
    module_names = {m: n for n, m in probe.named_modules()}
    base = _record(probe, x)
    call_names = [module_names[c["module"]] for c in base]  # before the surgery replaces modules
    modules = dict(probe.named_modules())
    steps = []
    for name in names:
        root = modules[name]
        fn = probe_structure.graph.get_pruner_of_module(root).prune_out_channels
        last = probe_structure.graph.get_out_channels(root) - 1
        probe_structure.graph.get_pruning_group(root, fn, [last]).prune()
        steps.append(_check_static(_record(probe, x), base))
    return probe_from_steps(structure, base, steps, [1] * len(names), call_names)


def _check_static(calls, base):
    """`calls` (or a network's timed pieces), refused unless as many as the dense network's `base`."""
    if len(calls) != len(base):
        raise StructureError("the network's forward pass changed its layer calls after pruning; "
                             "jointprune needs a static forward pass.")
    return calls


def probe_from_steps(structure: ChannelStructure, base: list[dict], steps: list[list[dict]],
                     per_step: list[int], names: list[str]):
    """`_probe`'s result from a probe's records: `base` the dense timed calls, `steps[g]` the calls
    after group g's step of `per_step[g]` channels (cumulative, as the surgery goes), `names` the
    calls' module names. The calls returned point at the (dense) live model's modules, since the
    probe's own are cut by then. The FLOPs model's probe feeds this too (`FlopsModel.timed_probe`)."""
    for step in steps:
        _check_static(step, base)
    live = dict(structure.model.named_modules())
    prev = _quantity_rows(base)
    d = np.zeros((len(base), len(QUANTITIES), len(steps)))
    for g, step in enumerate(steps):
        now = _quantity_rows(step)
        d[:, :, g] = (prev - now) / per_step[g]
        prev = now
    calls = [dict(c, module=live[n]) for c, n in zip(base, names)]
    return calls, list(names), d


def _layer_at(call: dict, q: dict[str, int]) -> nn.Module:
    """A standalone copy of the call's layer with the channel counts `q`."""
    m = call["module"]
    if isinstance(m, CONV):
        kwargs = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                      groups=q["groups"], bias=m.bias is not None, padding_mode=m.padding_mode)
        if m.transposed:
            kwargs["output_padding"] = m.output_padding
        return type(m)(q["cin"], q["cout"], **kwargs)
    if isinstance(m, nn.Linear):
        return nn.Linear(q["cin"], q["cout"], bias=m.bias is not None)
    if isinstance(m, BATCHNORM):
        return type(m)(q["cin"], eps=m.eps, momentum=m.momentum, affine=m.affine,
                       track_running_stats=m.track_running_stats)
    return copy.deepcopy(m)  # parameter-free: the same layer runs at any channel count


def _input_at(call: dict, q: dict[str, int], batch: int) -> list[int]:
    shape = list(call["shape"])
    if isinstance(call["module"], nn.Linear):
        shape[-1] = q["cin"]
    elif shape:
        shape[0] = q["cin"]
    return [batch, *shape]


def _config(m: nn.Module):
    if isinstance(m, CONV):
        return [m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode, m.bias is not None, m.transposed]
    if isinstance(m, nn.Linear):
        return [m.bias is not None]
    if isinstance(m, BATCHNORM):
        return [m.affine, m.track_running_stats, m.eps]
    return m.extra_repr()


def _key(call: dict, q: dict[str, int], batch: int) -> str:
    """HALP-style table key: layer type and config (kernel, stride, ...), batch, input shape
    (channels and feature map), output channels and groups."""
    m = call["module"]
    return json.dumps([type(m).__name__, _config(m), _input_at(call, q, batch), q.get("cout"), q.get("groups")])


def _grid(candidates: np.ndarray, points: int) -> np.ndarray:
    """`points` counts spread evenly (by index) over the allowed counts, fewest and dense included."""
    idx = np.unique(np.rint(np.linspace(0, len(candidates) - 1, max(points, 2))).astype(int))
    return candidates[idx].astype(np.float64)


def _locate(grid: np.ndarray, x: np.ndarray):
    """Indices (i0, i1) and weight t of x between grid[i0] and grid[i1] (clamped at the ends)."""
    if len(grid) == 1:
        zero = np.zeros(len(x), dtype=int)
        return zero, zero, np.zeros(len(x))
    i0 = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
    t = np.clip((x - grid[i0]) / (grid[i0 + 1] - grid[i0]), 0.0, 1.0)
    return i0, i0 + 1, t


class LatencyModel:
    """latency(kept) in milliseconds of one forward pass at `batch_size` on `device`.

    Holds only numbers (no modules), so it can be sent from rank 0 to the other ranks."""

    name = "latency"

    def __init__(self, sizes, grids, terms, rest: float, info: dict, savings_scale: float = 1.0,
                 gaps: Optional["GapTerms"] = None):
        self.sizes = np.asarray(sizes, dtype=np.float64)
        self.grids = grids                  # per group: the counts measured
        self.terms = terms                  # {(a,) or (a, b): table of ms over the grids}
        self.rest = float(rest)             # ms that no group changes
        self.gaps = gaps                    # ms between calls, scaling with the channels before them
        self.info = info                    # device, batch size, threads, timing and cache figures
        self.savings_scale = 1.0
        self.dense = float(self(self.sizes))
        # latency(k) = dense - scale x (dense - tables(k)): a calibration against one measured
        # sub-network (LatencyOptions.calibrate) rescales the savings, dense stays as measured.
        self.savings_scale = float(savings_scale)

    @classmethod
    def measure(cls, structure: ChannelStructure, candidates: list[np.ndarray], device: torch.device,
                batch_size: int, threads: int, options: LatencyOptions = LatencyOptions(),
                probe=None) -> "LatencyModel":
        """Measure the tables (or read them from the cache) for `structure` with the counts each
        group allows (`candidates`, ascending, the dense count last). `probe`: the FLOPs model's
        `timed_probe` of the same structure, which saves doing the surgery a second time."""
        check_batch_size(batch_size)
        started = time.perf_counter()
        calls, call_names, d = probe if probe is not None else _probe(structure)
        probed = time.perf_counter()
        n_groups = len(structure.groups)
        grids = [_grid(np.asarray(c), options.grid_points) for c in candidates]
        sizes = np.array(structure.sizes, dtype=np.float64)
        cache = LatencyCache(options.cache_dir, device, threads, enabled=options.cache)
        plans = []  # (call index, groups, [(grid index tuple, quantities)])
        for i, call in enumerate(calls):
            groups = tuple(int(g) for g in np.flatnonzero(np.abs(d[i]).sum(0)))
            if not groups:
                continue  # no group changes this call: part of `rest`
            if len(groups) > 2:
                raise StructureError(f"layer {call_names[i]} depends on {len(groups)} channel groups; "
                                     "the latency model supports at most two (its input and its output).")
            base = _quantities(call)
            points = []
            for idx in itertools.product(*(range(len(grids[g])) for g in groups)):
                drop = {g: sizes[g] - grids[g][j] for g, j in zip(groups, idx)}
                q = {k: int(round(v - sum(d[i, QUANTITIES.index(k), g] * drop[g] for g in groups)))
                     for k, v in base.items()}
                points.append((idx, q))
            plans.append((i, groups, points))
        timed = 0
        todo = {}  # key -> (call index, counts): each distinct shape once (ResNets repeat them per stage)
        for i, groups, points in plans:
            for _, q in points:
                key = _key(calls[i], q, batch_size)
                if cache.get(key) is None:
                    todo.setdefault(key, (i, q))
        with pinned_threads(threads):
            inputs = InputPool([_input_at(calls[i], q, batch_size) for i, q in todo.values()], device)
            for key, (i, q) in todo.items():
                cache.put(key, _measure_layer(calls[i], call_names[i], q, batch_size, inputs, device, options))
                timed += 1
            layers_done = time.perf_counter()
            fewest = [int(g[0]) for g in grids]
            net_key = "pieces:" + hashlib.sha1(json.dumps(
                [_key(c, _quantities(c), batch_size) for c in calls]
                + [list(structure.example_input.shape[1:]), structure.prune_coupled, fewest]).encode()).hexdigest()
            varying = {i for i, _, _ in plans}
            pieces = cache.get(net_key)
            if pieces is None:
                pieces = measure_gaps(structure, fewest, device, batch_size, options.network_repeats,
                                      lambda dense: split_pieces([dense], d, calls, varying, sizes, fewest)[1])
                cache.put(net_key, pieces)
                timed += 1
        rest, gaps = split_pieces(pieces, d, calls, varying, sizes, fewest)
        terms: dict[tuple, np.ndarray] = {}
        for i, groups, points in plans:
            table = terms.setdefault(groups, np.zeros([len(grids[g]) for g in groups]))
            for idx, q in points:
                table[idx] += cache.get(_key(calls[i], q, batch_size))
        info = {"device": str(device), "device_name": device_name(device), "batch_size": int(batch_size),
                "threads": int(threads), "torch": torch.__version__, "grid_points": options.grid_points,
                "allocator": steady_allocator(),
                "timed_entries": timed, "cache_hit": timed == 0, "cache_file": str(cache.path),
                "build_seconds": time.perf_counter() - started, "probe_seconds": probed - started,
                "layer_seconds": layers_done - probed, "groups": n_groups}
        info["rest_ms"], info["gap_ms"] = rest, float(gaps.dense.sum())
        model = cls(sizes, grids, terms, rest, info, gaps=gaps)
        if options.calibrate:
            calib_key = "calibration:" + net_key
            measured = cache.get(calib_key)
            if measured is None:
                with pinned_threads(threads):
                    measured = _measure_fewest(structure, [int(g[0]) for g in grids], device, batch_size, threads,
                                               options.calibration_repeats)
                cache.put(calib_key, measured)
                info["timed_entries"] = timed = timed + 1
                info["cache_hit"] = False
            predicted = model([g[0] for g in grids]) / model.dense
            # Clamped: one noisy measurement must not turn the model upside down.
            scale = float(np.clip((1 - measured) / (1 - predicted), 0.2, 2.0)) if predicted < 0.999 else 1.0
            model.savings_scale = scale
            info.update(calibration_measured=measured, calibration_predicted=predicted, savings_scale=scale)
        cache.save()
        info["build_seconds"] = time.perf_counter() - started
        return model

    def __call__(self, kept) -> float | np.ndarray:
        """Milliseconds for one kept-count vector [G] or a batch [N, G]."""
        k = np.asarray(kept, dtype=np.float64)
        single = k.ndim == 1
        k = np.atleast_2d(k)
        total = np.full(len(k), self.rest)
        if self.gaps is not None:
            total += self.gaps(k, self.sizes)
        for groups, table in self.terms.items():
            if len(groups) == 1:
                i0, i1, t = _locate(self.grids[groups[0]], k[:, groups[0]])
                total += (1 - t) * table[i0] + t * table[i1]
            else:
                a0, a1, s = _locate(self.grids[groups[0]], k[:, groups[0]])
                b0, b1, t = _locate(self.grids[groups[1]], k[:, groups[1]])
                total += ((1 - s) * (1 - t) * table[a0, b0] + s * (1 - t) * table[a1, b0]
                          + (1 - s) * t * table[a0, b1] + s * t * table[a1, b1])
        if self.savings_scale != 1.0:
            total = self.dense - self.savings_scale * (self.dense - total)
        return float(total[0]) if single else total


def _fewest_network(structure: ChannelStructure, fewest: list[int]) -> nn.Module:
    """The network physically cut to the `fewest` counts (the first channels of each group)."""
    from .extract import extract_subnetwork  # local: extraction is only needed for these timings
    masks = [torch.arange(g.size) < k for g, k in zip(structure.groups, fewest)]
    return extract_subnetwork(structure.model, structure, masks)


def _measure_fewest(structure: ChannelStructure, fewest: list[int], device: torch.device, batch: int,
                   threads: int, repeats: int) -> float:
    """Measured latency ratio (fewest / dense) of the network cut to the fewest counts measured."""
    small = _fewest_network(structure, fewest)
    return measure_pair(structure.model, small, tuple(structure.example_input.shape[1:]), device, batch, threads,
                        warmup=1, repeats=repeats)["ratio"]


class InputPool:
    """One random buffer for every table entry's input, each a view of its first elements: drawing
    a fresh random batch per entry (a million values for a 16-channel 32x32 batch of 64) cost
    about as much as timing the layer. A view, not a copy, so the largest input is held once."""

    def __init__(self, shapes: list[list[int]], device: torch.device):
        self.buffer = torch.randn(max((math.prod(s) for s in shapes), default=0), device=device)

    def __call__(self, shape: list[int]) -> torch.Tensor:
        return self.buffer[:math.prod(shape)].view(shape)


def _measure_layer(call: dict, name: str, q: dict, batch: int, inputs: InputPool, device: torch.device,
                   options) -> float:
    try:
        layer = _layer_at(call, q).to(device).eval()
        x = inputs(_input_at(call, q, batch))
        return steady_ms(lambda: layer(x), device, options.warmup, options.repeats, options.max_repeats)
    except (RuntimeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise JointPruneError(f"the latency of layer {name} cannot be measured at {q.get('cin')} input and "
                              f"{q.get('cout', q.get('cin'))} output channels on {device} ({reason}); "
                              "set model.latency_budget: null to prune to FLOPs only.") from err


class GapTerms:
    """The time between timed calls, per gap: `dense` ms in the dense network, `fewest` ms in the
    network cut to the fewest counts, linear in between in the channels `per[gap, group]` of the
    call before the gap (channels(k) = channels_dense - per @ (sizes - k))."""

    def __init__(self, dense, fewest, per, channels_dense, channels_fewest):
        self.dense, self.fewest = np.asarray(dense), np.asarray(fewest)
        self.per = np.asarray(per)
        self.channels_dense, self.channels_fewest = np.asarray(channels_dense), np.asarray(channels_fewest)

    def __call__(self, k: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        channels = self.channels_dense - (sizes - k) @ self.per.T          # [N, gaps]
        span = np.maximum(self.channels_dense - self.channels_fewest, 1e-9)
        t = np.clip((channels - self.channels_fewest) / span, 0.0, 1.0)
        return (self.fewest + t * (self.dense - self.fewest)).sum(1)


def split_pieces(pieces, d: np.ndarray, calls: list[dict], varying: set[int], sizes: np.ndarray,
                 fewest) -> tuple[float, GapTerms]:
    """`pieces` (the dense network's, and the fewest network's when measured: gap, call 0, gap,
    call 1, ..., call n-1, gap) into the constant rest (calls no group changes, gaps after them)
    and the scaling gaps (after a call whose output channels a group sets). Without the fewest
    network's pieces a gap is taken as proportional to its channels."""
    pieces = [np.asarray(p, dtype=np.float64) for p in pieces]
    dense, small = pieces[0], pieces[-1] if len(pieces) > 1 else None
    sizes, fewest = np.asarray(sizes, dtype=np.float64), np.asarray(fewest, dtype=np.float64)
    rest, scaled = float(dense[0]), []
    for i, call in enumerate(calls):
        if i not in varying:
            rest += float(dense[2 * i + 1])
        out = QUANTITIES.index("cout" if "cout" in call else "cin")
        per = d[i, out]
        if not per.any():
            rest += float(dense[2 * i + 2])
            continue
        channels = float(_quantities(call)["cout" if "cout" in call else "cin"])
        least = channels - float(per @ (sizes - fewest))
        at_least = dense[2 * i + 2] * least / channels if small is None else small[2 * i + 2]
        # fewer channels never cost more time in an elementwise op: a noisy floor timing is capped
        scaled.append((dense[2 * i + 2], min(at_least, dense[2 * i + 2]), per, channels, least))
    columns = list(zip(*scaled)) if scaled else [[], [], np.zeros((0, len(sizes))), [], []]
    return rest, GapTerms(columns[0], columns[1], np.array(columns[2]).reshape(-1, len(sizes)), columns[3], columns[4])


# Time the network cut to the fewest counts only when the gaps that scale are at least this share
# of the dense forward. That costs a cold forward of a new network (0.2 s for the quickstart's
# ResNet-20, a third of the tables' build). With the residual-coupled groups dense, the gaps that
# scale are 1.8-2.5 % (ResNet-56, MobileNetV2, ResNet-50), and proportional scaling is close
# enough; pruned too, they are 5.5-8 %, and proportional scaling would miss the fewest network's
# gaps by half (per-op overhead stays).
MEASURE_FEWEST_SHARE = 0.03


def measure_gaps(structure: ChannelStructure, fewest: list[int], device: torch.device, batch: int,
                 repeats: int, gaps_of: Callable[[np.ndarray], "GapTerms"]) -> list[list[float]]:
    """Every piece of one forward (gap, call 0, gap, ..., call n-1, gap) timed in place in the
    dense network, and in the network cut to the `fewest` counts (same calls in the same order)
    when the gaps that scale (`gaps_of(dense pieces)`) are worth it (MEASURE_FEWEST_SHARE)."""
    shape = tuple(structure.example_input.shape[1:])
    dense = time_pieces(structure.model, shape, device, batch, repeats)
    if gaps_of(dense).dense.sum() < MEASURE_FEWEST_SHARE * dense.sum():
        return [dense.tolist()]
    cut = _check_static(time_pieces(_fewest_network(structure, fewest), shape, device, batch, repeats), dense)
    return [dense.tolist(), cut.tolist()]


@torch.no_grad()
def time_pieces(model: nn.Module, input_shape, device: torch.device, batch: int, repeats: int) -> np.ndarray:
    """Milliseconds of every piece of one forward, timed in place with hooks: each timed call, and
    each gap between calls where untimed ops such as adds run (gap, call 0, gap, ..., call n-1,
    gap), every piece's fastest of `repeats` forwards. Timing pieces rather than the whole forward
    keeps a loaded machine's preemptions out, as `steady_ms` keeps them out of the tables."""
    steady_allocator()  # as every timing (utils/allocator.py)
    net = copy.deepcopy(model).to(device, memory_format=torch.contiguous_format).eval()
    x = torch.randn(batch, *input_shape, device=device)
    modules = [m for m in net.modules() if _timed_module(m)]
    stamps: list[float] = []

    def stamp(*_):  # returns None: a hook's return value would replace the input or output
        synchronize(device)
        stamps.append(time.perf_counter())

    hooks = [h for m in modules for h in (m.register_forward_pre_hook(stamp), m.register_forward_hook(stamp))]
    best = None
    try:
        for _ in range(repeats):  # no separate warm-up: the cold first forward loses every piece's minimum
            stamps.clear()
            stamp()
            net(x)
            stamp()
            pieces = np.diff(np.asarray(stamps)) * 1000.0
            best = pieces if best is None else np.minimum(best, pieces)
    except RuntimeError as err:
        raise JointPruneError(f"the network's latency cannot be measured on {device} at batch {batch} "
                              f"({str(err).splitlines()[0]}); lower model.latency.batch_size.") from err
    finally:
        for h in hooks:
            h.remove()
    return best


def measure_pair(dense: nn.Module, pruned: nn.Module, input_shape, device: torch.device, batch: int,
                 threads: int, warmup: int, repeats: int) -> dict:
    """The dense and the pruned network timed back to back (alternating which goes first), so that
    load from other processes hits both sides of each ratio alike. `noise` is a robust standard
    deviation (1.4826 x MAD) of the per-pair ratios."""
    # the default layout, as deployed (a live network may be training in channels_last)
    nets = [copy.deepcopy(m).to(device, memory_format=torch.contiguous_format).eval() for m in (dense, pruned)]
    x = torch.randn(batch, *input_shape, device=device)
    times: list[list[float]] = [[], []]
    with pinned_threads(threads), torch.no_grad():
        for net in nets:
            time_ms(lambda: net(x), device, warmup, 0)
        for r in range(repeats):
            for j in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[j] += time_ms(lambda: nets[j](x), device, 0, 1)
    ratios = np.array(times[1]) / np.array(times[0])
    ratio = float(np.median(ratios))
    return {"dense_ms": float(np.median(times[0])), "pruned_ms": float(np.median(times[1])), "ratio": ratio,
            "noise": float(1.4826 * np.median(np.abs(ratios - ratio)))}
