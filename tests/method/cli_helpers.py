"""Run the real CLI in a subprocess, as a user would."""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def run_cli(*args, timeout=600, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{HERE}{os.pathsep}{ROOT}", WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"),
               OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "jointprune", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
