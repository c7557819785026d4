"""Run the real CLI in a subprocess, as a user would."""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _command(args, env_extra, cwd):
    """(argv, env, cwd) for `python -m jointprune ...` in a scratch directory."""
    import tempfile
    args = [str(ROOT / a) if str(a).startswith("experiments/") else str(a) for a in args]
    cwd = cwd or tempfile.mkdtemp(prefix="jointprune-cli-")
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{ROOT}", WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"),
               OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return [sys.executable, "-m", "jointprune", *args], env, cwd


def run_cli(*args, timeout=600, env_extra=None, cwd=None) -> subprocess.CompletedProcess:
    """Runs in a scratch directory (so nothing lands in the checkout); repo-relative config
    paths are made absolute."""
    argv, env, cwd = _command(args, env_extra, cwd)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start_cli(*args, env_extra=None, cwd=None) -> subprocess.Popen:
    """`run_cli` without waiting: for tests that signal the run."""
    argv, env, cwd = _command(args, env_extra, cwd)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
