"""utils/allocator.py: latency is timed on a steady host allocator. Checked by what the allocator
does (page faults per forward, counted by the kernel), not by timings, which a shared machine
cannot make reliable in a test."""
import platform
import subprocess
import sys

import pytest

from jointprune.utils.allocator import steady_allocator

# Five eval forwards of MobileNetV2 (width 0.5, 16x16, batch 64) after three warm-up ones: the
# minor page faults per forward, in a fresh process, with or without the steady allocator first.
FAULTS = """
import resource, sys, torch
torch.set_num_threads(1)
from jointprune.models import create_model
if sys.argv[1] == "steady":
    from jointprune.utils.allocator import steady_allocator
    steady_allocator()
net = create_model("cifar_mobilenet_v2", num_classes=10, width_mult=0.5).eval()
x = torch.randn(64, 3, 16, 16)
with torch.no_grad():
    for _ in range(3):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the steady allocator acts on glibc's malloc only")


def faults_per_forward(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@glibc
def test_a_cold_process_faults_on_every_forward_and_a_steady_one_does_not():
    cold, steady = faults_per_forward("cold"), faults_per_forward("steady")
    assert cold > 1000  # the activations are mapped and unmapped on every call
    assert steady < cold / 20


@glibc
def test_the_setting_is_made_once_and_described():
    first = steady_allocator()
    assert first.startswith("glibc: mmap threshold 32 MiB")
    assert steady_allocator() is first  # idempotent: later timings do not call mallopt again
