"""The peak memory a run reports is its own, even when a big process started it (as `trainer-ext compare`
starts every training run while it holds a loaded model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer_ext.evaluation.reports import peak_memory_mb


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="resident sizes are read from /proc")
def test_a_process_started_by_a_big_one_reports_its_own_peak():
    held = bytearray(1024 * 2**20)  # 1 GiB, touched so that it is resident
    held[::4096] = b"\1" * len(held[::4096])
    parent = _rss_mib()
    assert peak_memory_mb() >= parent - 1  # this process's own peak includes what it holds
    code = "from trainer_ext.evaluation.reports import peak_memory_mb; print(peak_memory_mb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = float(done.stdout.strip().splitlines()[-1])
    # ru_maxrss would give the child at least the parent's resident size; its own peak is the imports'.
    assert 0 < child < parent - 700, (child, parent)
    del held
