"""`jointprune fit|validate|test --config`, as users call it: a whole run and `--help` in a
subprocess; the bad-input sentences, which stop before training, through the same `main` in
this process (call_cli)."""
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import HERE, ROOT, call_cli, run_cli  # noqa: E402

TINY = HERE / "tiny.yaml"


def test_fit_then_test_with_a_user_cnn(tmp_path):
    """A CNN the library never heard of, by class_path; num_classes linked from the data."""
    out = run_cli("fit", "--config", TINY, "--trainer.default_root_dir", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[jointprune] epoch 1:" in out.stdout + out.stderr  # the per-epoch summary line
    report = json.loads((tmp_path / "pruned" / "pruned.json").read_text())
    assert report["pruned_flops"] <= 0.5 * report["dense_flops"]
    assert report["num_classes"] == 10
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["cnn"]["class_path"] == "tiny.TinyCNN"
    assert saved["model"]["cnn"]["init_args"]["num_classes"] == 10  # the data's, not TinyCNN's default 7


def test_num_classes_comes_from_the_data(tmp_path):
    """Digits has 10 classes; the CNN's own default (7 here) is overridden by the link."""
    out = call_cli("fit", "--config", TINY, "--model.cnn.init_args.width", "4", "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    printed = yaml.safe_load(out.stdout)
    assert printed["model"]["cnn"]["init_args"]["width"] == 4
    assert printed["model"]["flops_budget"] == 0.5


def _last_line(out) -> str:
    return out.stderr.strip().splitlines()[-1]


# An impossible budget stops the run right after the CNN is built and checked: reaching that
# sentence shows the network was named, built with the data's 10 classes and traced.
IMPOSSIBLE = ("--model.flops_budget", "0.001")


def test_a_torchvision_builder_function_gets_the_datas_classes():
    out = call_cli("fit", "--config", TINY, "--model.cnn", "torchvision.models.mobilenet_v3_small", *IMPOSSIBLE)
    assert out.returncode == 2, out.stderr[-2000:]
    assert _last_line(out).startswith("jointprune: error: flops_budget=0.001 cannot be met"), out.stderr[-2000:]


def test_a_zoo_name_gets_the_datas_classes():
    out = call_cli("fit", "--config", TINY, "--model.cnn", "cifar_resnet20", *IMPOSSIBLE)
    assert out.returncode == 2, out.stderr[-2000:]
    assert _last_line(out).startswith("jointprune: error: flops_budget=0.001 cannot be met"), out.stderr[-2000:]


def test_a_num_classes_that_contradicts_the_data_is_one_sentence():
    out = call_cli("fit", "--config", TINY, "--model.cnn.init_args.num_classes", "5")
    assert out.returncode == 2
    assert _last_line(out) == (
        "jointprune: error: model.cnn.init_args.num_classes=5 disagrees with the data, which has 10 classes; "
        "leave num_classes unset (the data's is used) or set it to 10.")


def test_a_tuple_output_is_one_sentence_before_training():
    out = call_cli("fit", "--config", TINY, "--model.cnn.class_path", "cli_networks.TupleCNN")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "returns a tuple in training mode, not a logits tensor of shape (batch, classes)" in _last_line(out)
    assert "[jointprune] epoch" not in out.stdout + out.stderr


def test_a_forward_export_cannot_capture_is_one_sentence_before_training():
    out = call_cli("fit", "--config", TINY, "--model.cnn.class_path", "cli_networks.DataDependentCNN")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert _last_line(out).startswith("jointprune: error: torch.export cannot capture model.cnn's forward")
    assert "[jointprune] epoch" not in out.stdout + out.stderr


def test_an_imagenet_folder_without_class_folders_is_one_line(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "img.JPEG").write_bytes(b"not a class folder")
    out = call_cli("fit", "--config", TINY, "--data.class_path", "jointprune.data.ImageNetDataModule",
                  "--data.init_args.root", tmp_path, "--data.init_args.crop_size", "32")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert _last_line(out) == (f"jointprune: error: ImageNet data at {tmp_path / 'train'} has no class folders: "
                               "expected class sub-folders of JPEG/PNG images (torchvision ImageFolder layout).")


def test_bad_budget_is_one_sentence():
    out = call_cli("fit", "--config", TINY, "--model.flops_budget", "1.5")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "flops_budget must be a fraction of the dense FLOPs in (0, 1], got 1.5." in last
    assert "Traceback" not in out.stderr


def test_unknown_model_class_is_reported():
    out = call_cli("fit", "--config", TINY, "--model.cnn.class_path", "tiny.NoSuchNet")
    assert out.returncode != 0
    assert "NoSuchNet" in out.stderr and "Traceback" not in out.stderr


def test_unknown_data_class_is_reported():
    out = call_cli("fit", "--config", TINY, "--data.class_path", "jointprune.data.NoSuchData")
    assert out.returncode != 0
    assert "NoSuchData" in out.stderr and "Traceback" not in out.stderr


def test_schedule_beyond_max_epochs_is_one_sentence():
    out = call_cli("fit", "--config", TINY, "--model.schedule.agent_until", "40")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "jointprune: error: agent_until=40 is beyond max_epochs=4; use an epoch in [0, 4].")


def test_missing_data_is_one_sentence(tmp_path):
    out = call_cli("fit", "--config", TINY, "--data.class_path", "jointprune.data.CIFAR10DataModule",
                  "--data.init_args.root", tmp_path / "nowhere", "--data.init_args.reward_size", "64")
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("jointprune: error:") and "nowhere" in last and "Traceback" not in out.stderr


def test_python_dash_m_and_console_script_agree():
    out = run_cli("--help")
    assert out.returncode == 0 and "fit" in out.stdout and "validate" in out.stdout and "test" in out.stdout
    assert (ROOT / "experiments" / "quickstart.yaml").exists()
