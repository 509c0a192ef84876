"""Host memory of CPU training: with glibc's mmap threshold fixed, freed tensors leave the resident set."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc on Linux only"
)

# Frees every other one of 32 tensors of 2 MiB, in a fresh process: how much of the freed half leaves the
# resident set. A first 16 MiB block, freed, raises glibc's dynamic threshold above 2 MiB, as the first
# training step does; the tensors kept alive stop the heap from being trimmed.
PROBE = """
import json, sys
import torch
from trainer_ext.training.host_memory import fix_mmap_threshold

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else False
warm = torch.ones(4 * 2**20)
del warm
tensors = [torch.ones(2**19) for _ in range(32)]
before = rss()
del tensors[::2]
print(json.dumps({"fixed": fixed, "released_mib": before - rss()}))
"""


def _probe(mode: str, env: dict[str, str] | None = None) -> dict:
    import os

    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fixed_threshold_gives_freed_tensors_back_and_the_dynamic_one_keeps_them():
    fixed, dynamic = _probe("fix"), _probe("keep")
    assert fixed["fixed"] and not dynamic["fixed"]
    assert fixed["released_mib"] > 28  # 32 MiB freed
    assert dynamic["released_mib"] < 4


def test_the_environment_variable_wins():
    assert _probe("fix", {"MALLOC_MMAP_THRESHOLD_": "65536"})["fixed"] is False


def test_label_trainer_fixes_it_on_the_cpu_when_asked(tiny_model, tmp_path, monkeypatch):
    import trainer_ext.training.trainer as trainer_module
    from trainer_ext.tasks import LabelTask
    from trainer_ext.training.trainer import LabelTrainer, LabelTrainingArguments

    calls = []
    monkeypatch.setattr(trainer_module, "fix_mmap_threshold", lambda: calls.append(True) or True)
    model, tokenizer = tiny_model("gpt2")
    task = LabelTask(["yes", "no"])
    trims = []
    for release in (True, False):
        args = LabelTrainingArguments(output_dir=str(tmp_path), release_host_memory=release, report_to="none")
        trainer = LabelTrainer(model=model, args=args, task=task, processing_class=tokenizer)
        callbacks = trainer.callback_handler.callbacks
        trims.append(any(isinstance(c, trainer_module._TrimHeapCallback) for c in callbacks))
    assert calls == [True]
    assert trims == [True, False]  # the heap is trimmed after each step only when asked


def test_trim_heap_gives_free_heap_pages_back():
    probe = """
import json
import torch
from trainer_ext.training.host_memory import fix_mmap_threshold, status_kib, trim_heap

fix_mmap_threshold()
tensors = [torch.ones(2**16) for _ in range(2000)]  # 256 KiB each: below the threshold, from the heap
keep = tensors[-1]
del tensors  # freed, but the heap keeps its pages: the last tensor sits above them
before = status_kib("VmRSS")
print(json.dumps({"trimmed": trim_heap(), "released_mib": (before - status_kib("VmRSS")) / 1024}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trimmed"] and result["released_mib"] > 400  # 500 MiB freed
