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


def call_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """`run_cli` in this process: the CLI's own `main` (what `jointprune` and `python -m
    jointprune` call) with its output captured, in a scratch directory. For runs that stop
    before training (bad input, --print_config): a subprocess each costs ~8 s of imports on
    2 cores. An uncaught exception propagates, so a traceback fails the test loudly."""
    import contextlib
    import io

    from jointprune.cli import main
    argv, _, cwd = _command(args, None, cwd)
    out, err, code = io.StringIO(), io.StringIO(), 0
    here, sys_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = argv[2:3]  # as the console script sees it (LightningCLI warns when args and argv both)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv[3:])  # argv: python -m jointprune ...
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        os.chdir(here)
        sys.argv = sys_argv
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
