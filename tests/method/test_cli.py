"""`jointprune fit|validate|test --config`, as users call it."""
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from cli_helpers import HERE, ROOT, run_cli  # noqa: E402

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


def test_num_classes_comes_from_the_data(tmp_path):
    """Digits has 10 classes; the CNN's own default (7 here) is overridden by the link."""
    out = run_cli("fit", "--config", TINY, "--model.cnn.init_args.width", "4", "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    printed = yaml.safe_load(out.stdout)
    assert printed["model"]["cnn"]["init_args"]["width"] == 4
    assert "num_classes" not in printed["model"]["cnn"]["init_args"]  # linked, not a user setting
    assert printed["model"]["flops_budget"] == 0.5


def test_bad_budget_is_one_sentence():
    out = run_cli("fit", "--config", TINY, "--model.flops_budget", "1.5")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "flops_budget must be a fraction of the dense FLOPs in (0, 1], got 1.5." in last
    assert "Traceback" not in out.stderr


def test_unknown_model_class_is_reported():
    out = run_cli("fit", "--config", TINY, "--model.cnn.class_path", "tiny.NoSuchNet")
    assert out.returncode != 0
    assert "NoSuchNet" in out.stderr and "Traceback" not in out.stderr


def test_unknown_data_class_is_reported():
    out = run_cli("fit", "--config", TINY, "--data.class_path", "jointprune.data.NoSuchData")
    assert out.returncode != 0
    assert "NoSuchData" in out.stderr and "Traceback" not in out.stderr


def test_schedule_beyond_max_epochs_is_one_sentence():
    out = run_cli("fit", "--config", TINY, "--model.schedule.agent_until", "40")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "jointprune: error: agent_until=40 is beyond max_epochs=4; use an epoch in [0, 4].")


def test_missing_data_is_one_sentence(tmp_path):
    out = run_cli("fit", "--config", TINY, "--data.class_path", "jointprune.data.CIFAR10DataModule",
                  "--data.init_args.root", tmp_path / "nowhere", "--data.init_args.reward_size", "64")
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("jointprune: error:") and "nowhere" in last and "Traceback" not in out.stderr


def test_python_dash_m_and_console_script_agree():
    out = run_cli("--help")
    assert out.returncode == 0 and "fit" in out.stdout and "validate" in out.stdout and "test" in out.stdout
    assert (ROOT / "experiments" / "quickstart.yaml").exists()
