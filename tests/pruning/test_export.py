"""save_pruned / load_pruned / load_report: the export folder, its two ways to load, and why
opening it never runs code from the files."""
from __future__ import annotations

import ast
import json
import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torchvision.ops import StochasticDepth

import jointprune
from jointprune.pruning import (
    BudgetClipper,
    ChannelStructure,
    ExportError,
    FlopsModel,
    extract_subnetwork,
    group_importance,
    load_pruned,
    load_report,
    save_pruned,
    top_k_masks,
)
from jointprune.pruning.export import FORMAT

sys.path.insert(0, str(Path(__file__).parent))
from pruning_helpers import (  # noqa: E402
    REPORT_KEYS,
    BranchyCNN,
    calibrate_bn,
    one_sentence,
    one_thread,  # noqa: F401
    random_episode,
)

REPO = Path(__file__).resolve().parents[2]
FILES = ["pruned.json", "pruned.program.json", "pruned.safetensors"]


class DropCNN(nn.Module):
    """A user's CNN with dropout and stochastic depth (torchvision's), whose train mode differs."""

    def __init__(self, width: int = 12, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                    nn.Conv2d(width, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.drop_path = StochasticDepth(0.5, "row")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, num_classes))

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.drop_path(self.branch(x)))


def prune(model: nn.Module, shape, budget: float, seed: int = 0):
    """(pruned copy, its report as final_report writes it: kept indices included)."""
    x = torch.randn(1, *shape)
    st = ChannelStructure(model, x)
    fm = FlopsModel(st)
    kept = random_episode(BudgetClipper(fm, budget), np.random.default_rng(seed))
    masks = top_k_masks(group_importance(model, st), kept)
    small = extract_subnetwork(model, st, masks).eval()
    report = {"dense_flops": int(fm.dense), "pruned_flops": int(tp.utils.count_ops_and_params(small, x)[0]),
              "flops_budget": budget, "dense_params": sum(p.numel() for p in model.parameters()),
              "pruned_params": sum(p.numel() for p in small.parameters()), "input_shape": list(shape),
              "groups": [{"name": g.name, "dense": g.size, "kept": int(m.sum()),
                          "kept_indices": torch.nonzero(m).flatten().tolist()} for g, m in zip(st.groups, masks)],
              "history": [{"decoder_loss": float("nan")}], "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    return small, report


@pytest.fixture(scope="module")
def branchy():
    torch.manual_seed(0)
    small, report = prune(calibrate_bn(BranchyCNN(), (8, 3, 16, 16)), (3, 16, 16), 0.5)
    return small, torch.randn(3, 3, 16, 16), report


@pytest.fixture(scope="module")
def branchy_export(branchy, tmp_path_factory):
    small, x, report = branchy
    return save_pruned(small, tmp_path_factory.mktemp("branchy") / "run" / "pruned", report, x[:1])


@pytest.fixture(scope="module")
def dropcnn(tmp_path_factory):
    torch.manual_seed(1)
    small, report = prune(calibrate_bn(DropCNN(), (8, 3, 8, 8)), (3, 8, 8), 0.6, seed=3)
    return small, save_pruned(small, tmp_path_factory.mktemp("drop") / "pruned", report, torch.zeros(1, 3, 8, 8))


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{name} in {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ----------------------------------------------------------------------------- the folder
def test_folder_files_modes_and_strict_json(branchy, branchy_export):
    small, x, report = branchy
    out = branchy_export
    assert sorted(p.name for p in out.iterdir()) == FILES  # no temporaries left
    assert [p.name for p in out.parent.iterdir()] == ["pruned"]
    old = os.umask(0o022)
    os.umask(old)
    assert old == 0o022  # the test machine's default; the modes below follow from it
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    saved = strict_json(out / "pruned.json")  # no bare NaN: strict parsers accept it
    assert saved["history"] == [{"decoder_loss": None}]
    assert saved == load_report(out)
    assert set(REPORT_KEYS) <= set(saved)
    assert saved["format"] == FORMAT and saved["batch"] == "dynamic" and saved["model_class"] == "BranchyCNN"
    assert saved["input_shape"] == [3, 16, 16] and saved["normalization"] == report["normalization"]
    assert saved["versions"]["torch"] == torch.__version__.split("+")[0] or saved["versions"]["torch"]
    strict_json(out / "pruned.program.json")


def test_the_folder_is_replaced_as_a_unit_or_not_at_all(branchy, branchy_export, tmp_path):
    import shutil
    small, x, report = branchy
    out = tmp_path / "pruned"
    shutil.copytree(branchy_export, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TypeError):  # a failure half-way through writing the folder
        save_pruned(small, out, dict(report, test_acc=0.9), x[:1], extra_files={"widths.png": None})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temporary folder left
    old = os.umask(0o027)  # and the files get the user's umask, whatever it is
    try:
        save_pruned(small, out, dict(report, test_acc=0.9), x[:1], extra_files={"widths.png": b"png"})
    finally:
        os.umask(old)
    assert load_report(out)["test_acc"] == 0.9 and (out / "widths.png").read_bytes() == b"png"
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o640}
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


def test_a_folder_with_other_files_is_refused_before_writing(branchy, tmp_path):
    small, x, report = branchy
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"exists and holds files other than a jointprune export") as exc:
        save_pruned(small, tmp_path, report, x[:1])
    assert one_sentence(str(exc.value))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_report_without_required_keys_is_refused(branchy, tmp_path):
    small, x, report = branchy
    bad = {k: v for k, v in report.items() if k not in ("pruned_flops", "groups")}
    with pytest.raises(ExportError, match=r"^the pruned report lacks pruned_flops, groups; it needs dense_flops") as exc:
        save_pruned(small, tmp_path / "out", bad, x[:1])
    assert one_sentence(str(exc.value))
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- load_pruned(path)
def test_inference_module_matches_and_takes_any_batch(branchy, branchy_export):
    small, x, _ = branchy
    with torch.no_grad():
        for path in (branchy_export, branchy_export / "pruned.json", str(branchy_export)):
            loaded = load_pruned(path)
            assert isinstance(loaded, nn.Module) and not loaded.training
            torch.testing.assert_close(loaded(x), small(x), rtol=0, atol=1e-5)
        loaded = jointprune.load_pruned(branchy_export)
        for batch in (1, 5):  # exported from a batch of 2
            xb = torch.randn(batch, 3, 16, 16)
            torch.testing.assert_close(loaded(xb), small(xb), rtol=0, atol=1e-5)
    # the original parameter names and counts, so state_dict() reads like the trained network's
    assert loaded.state_dict().keys() == small.state_dict().keys()
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())


BLOCKED_RELOAD = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torchvision", "test_export", "pruning_helpers") or name.startswith("jointprune.models"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    import torch
    from jointprune import load_pruned
    export, x_path, y_path = sys.argv[1:]
    net = load_pruned(export)
    with torch.no_grad():
        torch.save(net(torch.load(x_path)), y_path)
""")


def reload_blocked(out: Path, x: torch.Tensor, tmp_path: Path, timeout: int) -> torch.Tensor:
    """The export's outputs on x, computed in a subprocess where torchvision cannot be imported."""
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", BLOCKED_RELOAD, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(tmp_path / "y.pt")


def test_inference_module_needs_torch_alone(dropcnn, tmp_path):
    """Reloaded where torchvision and the user's package cannot be imported: the DropCNN uses
    torchvision's StochasticDepth and lives in this test module."""
    small, out = dropcnn
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reload_blocked(out, x, tmp_path, 300), small.eval()(x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- load_pruned(path, into=)
def test_into_rebuilds_the_users_class_trainable_and_counted(dropcnn):
    small, out = dropcnn
    report = load_report(out)
    net = load_pruned(out, into=DropCNN())
    assert type(net) is DropCNN and not net.training
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), small(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(net(x), load_pruned(out)(x), rtol=0, atol=1e-5)
    assert tp.utils.count_ops_and_params(net, x[:1])[0] == report["pruned_flops"]
    assert net.branch[0].out_channels == report["groups"][0]["kept"] < 12
    # train mode is the original's: dropout and stochastic depth act again, BN statistics move
    net.train()
    torch.manual_seed(0)
    a = net(x)
    b = net(x)
    assert not torch.allclose(a, b)
    before = net.branch[1].running_mean.clone()
    loss = nn.functional.cross_entropy(net(x), torch.zeros(6, dtype=torch.long))
    loss.backward()
    assert net.branch[0].weight.grad is not None and net.branch[0].weight.grad.abs().sum() > 0
    assert not torch.equal(before, net.branch[1].running_mean)


def test_into_refuses_another_class_or_other_widths(dropcnn, branchy_export):
    _, out = dropcnn
    cases = [
        (lambda: load_pruned(out, into=BranchyCNN()), r"holds a pruned DropCNN, but into= is a BranchyCNN"),
        (lambda: load_pruned(out, into=DropCNN(width=16)),
         r"into= does not match the saved network: layer 'branch\.0' should have 12 output channels"),
        (lambda: load_pruned(out, into=DropCNN(num_classes=5)), r"into= does not match the saved network after the cut"),
        (lambda: load_pruned(branchy_export, into=torch.zeros(3)), r"into= must be a fresh instance"),
    ]
    for call, match in cases:
        with pytest.raises(ExportError, match=match) as exc:
            call()
        assert one_sentence(str(exc.value)), str(exc.value)


# ----------------------------------------------------------------------------- nothing runs on load
class Payload:
    """Unpickling this runs a shell command (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def payloads(marker: Path) -> dict[str, bytes]:
    raw = pickle.dumps(Payload(marker))
    pickle.loads(raw)  # the payload is live: it does create the marker when unpickled
    assert marker.exists()
    marker.unlink()
    import io
    buf = io.BytesIO()
    torch.save(Payload(marker), buf)  # the same, as a torch.save zip (what pruned.pt used to be)
    return {"pickle": raw, "torch.save": buf.getvalue()}


@pytest.mark.parametrize("claimed", [FORMAT, "fx", "export", None, "something-else"])
def test_a_planted_pickle_never_runs(claimed, branchy, branchy_export, tmp_path):
    small, x, report = branchy
    marker = tmp_path / "marker"
    for kind, payload in payloads(marker).items():
        # every file a load may open, and the old pickled program's name, all planted at once ...
        d = tmp_path / f"all-{kind}"
        d.mkdir()
        bad_json = json.dumps(dict(load_report(branchy_export), format=claimed)).encode()
        for name in ["pruned.safetensors", "pruned.program.json", "pruned.pt", "pruned.onnx"]:
            (d / name).write_bytes(payload)
        for json_payload in (bad_json, payload):
            (d / "pruned.json").write_bytes(json_payload)
            for call in (lambda: load_pruned(d), lambda: load_pruned(d, into=BranchyCNN()),
                         lambda: load_pruned(d / "pruned.pt")):
                with pytest.raises(ExportError) as exc:
                    call()
                assert one_sentence(str(exc.value)), str(exc.value)
        # ... and each one alone in an otherwise valid export
        for name in FILES + ["pruned.pt"]:
            d = tmp_path / f"{name}-{kind}"
            d.mkdir()
            for f in branchy_export.iterdir():
                (d / f.name).write_bytes(f.read_bytes())
            if name != "pruned.json":
                (d / "pruned.json").write_bytes(bad_json)
            (d / name).write_bytes(payload)
            for call in (lambda: load_pruned(d), lambda: load_pruned(d, into=BranchyCNN()), lambda: load_report(d)):
                try:
                    call()
                except ExportError as err:
                    assert one_sentence(str(err)), str(err)
        assert not marker.exists()


def test_no_unpickling_in_the_load_path():
    """No call in jointprune/pruning (nor the top-level package) can unpickle: no
    weights_only=False, no pickle/torch/torch.export/torch.jit load."""
    import ast
    sources = [REPO / "jointprune" / "__init__.py", *sorted((REPO / "jointprune" / "pruning").glob("*.py"))]
    assert len(sources) > 5
    found = []
    for src in sources:
        for node in ast.walk(ast.parse(src.read_text())):
            if not isinstance(node, ast.Call):
                continue
            if any(k.arg == "weights_only" and not (isinstance(k.value, ast.Constant) and k.value.value is True)
                   for k in node.keywords):
                found.append((src.name, node.lineno, "weights_only"))
            name = ast.unparse(node.func)
            if name in ("pickle.load", "pickle.loads", "torch.load", "torch.export.load", "torch.jit.load"):
                found.append((src.name, node.lineno, name))
    assert not found


def test_a_crafted_program_is_refused_before_anything_runs(branchy_export, tmp_path):
    def crafted(edit):
        d = tmp_path / f"crafted{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        for f in branchy_export.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        program = json.loads((d / "pruned.program.json").read_text())
        edit(program["nodes"])
        (d / "pruned.program.json").write_text(json.dumps(program))
        return d

    def call_target(target):
        def edit(nodes):
            call = next(n for n in nodes if n["op"] == "call")
            call["target"] = target
        return edit

    def tensor_name(name):
        def edit(nodes):
            next(n for n in nodes if n["op"] == "tensor")["name"] = name
        return edit

    marker = tmp_path / "marker"
    cases = [
        (call_target("builtins.exec"), r"is not an ATen operator name"),
        (call_target("aten.from_file.default"), r"is not in the Core ATen opset"),
        (call_target("aten.no_such_op.default"), r"does not exist in this torch"),
        (tensor_name(f'x", __import__("os").system("touch {marker}")) or getattr(self, "y'),
         r"is not a dotted Python path"),
        (tensor_name("__class__"), r"is not a dotted Python path"),
        (lambda nodes: nodes.append({"op": "python", "code": "1"}), r"node kind 'python'"),
        (lambda nodes: nodes[-1]["args"].append({"object": "os.system"}), r"is not one the program format allows"),
    ]
    for edit, match in cases:
        with pytest.raises(ExportError, match=match) as exc:
            load_pruned(crafted(edit))
        assert one_sentence(str(exc.value)), str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("case, match", [
    ("missing-dir", r"is not a jointprune pruned export: expected a folder \(or a file in it\) holding pruned\.json"),
    ("empty-dir", r"is not a jointprune pruned export"),
    ("only-json", r"is not a jointprune pruned export"),
    ("garbage-weights", r"pruned\.safetensors is not a readable safetensors file \(\w+\)\.$"),
    ("truncated-weights", r"pruned\.safetensors is not a readable safetensors file \(\w+\)\.$"),
    ("json-missing-keys", r"pruned\.json is not a jointprune report: it needs the keys dense_flops, pruned_flops"),
    ("json-not-a-dict", r"pruned\.json is not a jointprune report: it needs the keys"),
    ("json-invalid", r"pruned\.json is not a valid pruned\.json \(.+\)\.$"),
    ("json-nan", r"pruned\.json is not a valid pruned\.json \(.+\)\.$"),
    ("old-format", r"was written in format 'fx' by an earlier jointprune, whose pickled pruned\.pt"),
])
def test_paths_that_are_not_a_pruned_export_are_one_sentence(case, match, branchy_export, tmp_path):
    d = tmp_path / "export"
    if case != "missing-dir":
        d.mkdir()
    if case not in ("missing-dir", "empty-dir"):
        for f in branchy_export.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
    report = (d / "pruned.json").read_text() if d.exists() and (d / "pruned.json").exists() else ""
    if case == "only-json":
        (d / "pruned.safetensors").unlink()
    elif case == "garbage-weights":
        (d / "pruned.safetensors").write_bytes(b"this is not a safetensors file" * 10)
    elif case == "truncated-weights":
        data = (d / "pruned.safetensors").read_bytes()
        (d / "pruned.safetensors").write_bytes(data[: len(data) // 2])
    elif case.startswith("json") or case == "old-format":
        text = {"json-missing-keys": json.dumps({"dense_flops": 1.0, "groups": {}}),
                "json-not-a-dict": json.dumps([1, 2, 3]),
                "json-invalid": "{ not json",
                "json-nan": report.replace('"flops_budget": 0.5', '"flops_budget": NaN'),
                "old-format": json.dumps(dict(json.loads(report), format="fx"))}[case]
        (d / "pruned.json").write_text(text)
    with pytest.raises(ExportError, match=match) as exc:
        load_pruned(d)
    assert one_sentence(str(exc.value)), str(exc.value)
    assert isinstance(exc.value, ValueError)
    if case.startswith("json") or case in ("missing-dir", "empty-dir"):
        with pytest.raises(ExportError, match=match):
            load_report(d)


# ----------------------------------------------------------------------------- ONNX
def test_onnx_export_runs_in_onnxruntime_like_pytorch(branchy, tmp_path):
    onnx = pytest.importorskip("onnx")
    small, x, report = branchy
    out = save_pruned(small, tmp_path / "pruned", report, x[:1], onnx=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES + ["pruned.onnx"])
    assert load_report(out)["onnx"] == {"file": "pruned.onnx", "exporter": "torchscript", "error": None}
    proto = onnx.load(str(out / "pruned.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch dimension is free
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    xb = torch.randn(5, 3, 16, 16)
    (got,) = session.run(None, {"input": xb.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, small(xb).numpy(), atol=1e-4, rtol=0)


def test_a_failed_onnx_export_leaves_the_rest_and_says_why(branchy, tmp_path, monkeypatch):
    small, x, report = branchy

    def fails(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", fails)
    out = save_pruned(small, tmp_path / "pruned", report, x[:1], onnx=True)
    assert sorted(p.name for p in out.iterdir()) == FILES
    saved = load_report(out)
    assert saved["files"]["onnx"] is None and saved["onnx"]["file"] is None
    error = saved["onnx"]["error"]
    assert error.startswith("the ONNX export failed (the legacy exporter raised RuntimeError; the dynamo exporter "
                            "raised RuntimeError)") and one_sentence(error)
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(out)(x), small(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_onnx_falls_back_to_the_dynamo_exporter(tmp_path):
    """Adaptive average pooling to a size that does not divide the input (VGG's 7x7 head on a
    CIFAR-sized map) fails in the legacy exporter; the dynamo exporter handles it."""
    ort = pytest.importorskip("onnxruntime")
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                          nn.Flatten(), nn.Linear(36, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    report = {"dense_flops": 1, "pruned_flops": 1, "flops_budget": 1.0, "dense_params": 1, "pruned_params": 1,
              "groups": []}
    out = save_pruned(model, tmp_path / "pruned", report, x, onnx=True)
    assert load_report(out)["onnx"]["exporter"] == "dynamo"
    session = ort.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    xb = torch.randn(5, 3, 4, 4)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": xb.numpy()})[0], model(xb).numpy(), atol=1e-4)


# ----------------------------------------------------------------------------- other networks
class DataDependent(nn.Module):
    """A branch on a shape: torch.export keeps the branch taken at the example's shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.register_buffer("offset", torch.ones(4), persistent=False)

    def forward(self, x):
        y = self.conv(x).mean((2, 3)) + self.offset
        if x.shape[-1] > 2:
            return y
        return -y


def test_non_persistent_buffers_and_shape_branches_survive(tmp_path):
    model = DataDependent().eval()
    x = torch.randn(2, 3, 4, 4)
    report = {"dense_flops": 1, "pruned_flops": 1, "flops_budget": 1.0, "dense_params": 1, "pruned_params": 1,
              "groups": []}
    out = save_pruned(model, tmp_path / "pruned", report, x[:1])
    torch.testing.assert_close(load_pruned(out)(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "googlenet", "convnext_tiny", "vgg11_bn"])
def test_torchvision_networks_reload_with_torch_alone(name, tmp_path):
    """The networks whose fx export used to need torchvision to load (stochastic depth,
    GoogLeNet's annotations) reload where torchvision cannot be imported."""
    import torchvision
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, num_classes=5, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    report = {"dense_flops": 1, "pruned_flops": 1, "flops_budget": 1.0, "dense_params": 1, "pruned_params": 1,
              "groups": []}
    out = save_pruned(model, tmp_path / "pruned", report, x[:1])
    with torch.no_grad():
        torch.testing.assert_close(reload_blocked(out, x, tmp_path, 600), model(x), rtol=1e-4, atol=1e-4)


def test_the_readme_example_runs(tmp_path):
    """The README's "Use the pruned network" snippet, on an export shaped like the quickstart's."""
    from jointprune.models import CifarResNet
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Use the pruned network"):]
    code = section[section.index("```python\n") + 10:section.index("```\n", section.index("```python\n") + 10)]
    torch.manual_seed(0)
    model = CifarResNet(depth=20, num_classes=10).eval()
    flops, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, 32, 32))
    report = {"dense_flops": flops, "pruned_flops": flops, "flops_budget": 1.0, "dense_params": params,
              "pruned_params": params, "groups": [], "input_shape": [3, 32, 32],
              "normalization": {"mean": [0.3] * 3, "std": [0.3] * 3}, "classes": [str(d) for d in range(10)]}
    out = save_pruned(model, tmp_path / "pruned", report, torch.zeros(1, 3, 32, 32))
    code = code.replace('"runs/quickstart/pruned"', repr(str(out)))
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert printed.returncode == 0, printed.stderr[-2000:]
    names = ast.literal_eval(printed.stdout.strip())  # the list of class names the snippet prints
    assert len(names) == 8 and set(names) <= set(report["classes"])


def test_hyphenated_module_names_round_trip(tmp_path):
    """torchvision's RegNet names blocks "block1-0": such names load (fx writes them as
    getattr(x, "block1-0")), while names with quotes, spaces or dunders stay refused."""
    from jointprune.pruning.program import ProgramError, check_tensor_name
    assert check_tensor_name("trunk_output.block1.block1-0.proj.0.weight")
    for bad in ('a."b', "a.b c", "a.__class__", "a.-b", "a\\b"):
        with pytest.raises(ProgramError, match="is not a dotted Python path"):
            check_tensor_name(bad)
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("block1-0", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                             nn.Conv2d(4, 4, 3), nn.ReLU()))
    net.add_module("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    small, report = prune(net.eval(), (3, 12, 12), 0.7)
    x = torch.randn(2, 3, 12, 12)
    loaded = load_pruned(save_pruned(small, tmp_path / "pruned", report, x[:1]))
    assert "block1-0.0.weight" in dict(loaded.named_parameters())
    assert torch.allclose(loaded(x), small(x), atol=1e-5)
