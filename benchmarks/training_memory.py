"""Where the memory of a training run goes: resident memory after each stage of the main job.

    python -m benchmarks.training_memory                 # cached model, then a first run (conversion)
    python -m benchmarks.training_memory --steps 10 --configs cached arena2

Each configuration runs the main recipe (`moderation_lora_all.yaml`, 8-bit, `lora-all`) in a fresh process,
through the same library functions as `trainer-ext train` (`prepare_data` -> `build` -> `Trainer.train`
-> `evaluate`), for `--steps` optimizer steps, and reads the process's resident set size (VmRSS) and its
peak so far (VmHWM, from /proc/self/status) after each stage. The batches come longest first
(`group_by_length`), so the first step is the one with the most activations:

- `cached`: the recipe as shipped, the converted embedded model already in the cache (every run after the
  first);
- `first-run`: an empty model cache (``TRAINER_EXT_CACHE`` set to a fresh directory), so the one-time
  conversion of the packaged GGUF file is part of the run;
- `max_length256`: the recipe with its former ``max_length: 256``, which let one 203-token tweet set the
  shape of the first batch;
- `batch8`: the recipe's batch of 8 run at once, not as two accumulated halves of 4;
- `checkpointing`: with ``gradient_checkpointing`` (layers recomputed in the backward pass);
- `dynamic-malloc`: glibc's default dynamic mmap threshold (``release_host_memory: false``, the library's
  default; the main recipe sets it true; see `trainer_ext.training.host_memory`);
- `release-host-memory`: the threshold fixed at 1 MiB by training itself (``release_host_memory: true``);
- `mmap1m`, `mmap128k`: the threshold fixed at 1 MiB or at glibc's initial 128 KiB through the
  environment (``MALLOC_MMAP_THRESHOLD_``): more, smaller mappings at 128 KiB;
- `pad16`: training batches padded to a multiple of 16 tokens (``pad_to_multiple_of: 16``), threshold
  fixed at 1 MiB: a few distinct shapes instead of one per length (`pad16-dynamic`: the dynamic
  threshold);
- `unpadded`: batches padded to their longest sample only (``pad_to_multiple_of: 1``), the threshold kept
  fixed as the recipe has it;
- `fp32`: float32 compute instead of bf16 autocast, the non-quantized weights in float32 (``bf16: false,
  dtype: float32``): faster on CPUs without native bf16, at a memory cost (on a CPU without AVX-512 the
  recipe's ``bf16: auto`` already computes in float32, and the two configurations are the same);
- `arena2`: glibc's malloc limited to two arenas (``MALLOC_ARENA_MAX=2``);
- `mmap`: glibc's malloc serving every block over 64 KiB with its own mapping, returned on free
  (``MALLOC_MMAP_THRESHOLD_=65536``), to show how much of the resident memory is freed memory the allocator
  keeps rather than live tensors.

Writes `OUT_DIR/training_memory.json` and `.md`. Memory in MB (10^6 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import DATA_DIR, REPO_ROOT, status_kib, write_report

MARKER = "MEMORY_STAGES "
# name -> (environment variables, recipe overrides)
CONFIGS: dict[str, tuple[dict[str, str | None], list[str]]] = {
    "cached": ({}, []),
    "first-run": ({"TRAINER_EXT_CACHE": None}, []),  # a fresh directory, filled in by `run_config`
    "max_length256": ({}, ["--max_length", "256"]),
    "batch8": ({}, ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1"]),
    "checkpointing": ({}, ["--gradient_checkpointing", "true"]),
    "dynamic-malloc": ({}, ["--release_host_memory", "false"]),
    "release-host-memory": ({}, ["--release_host_memory", "true"]),
    "mmap1m": ({"MALLOC_MMAP_THRESHOLD_": "1048576"}, []),
    "mmap128k": ({"MALLOC_MMAP_THRESHOLD_": "131072"}, []),
    "pad16": ({}, ["--pad_to_multiple_of", "16", "--release_host_memory", "true"]),
    "pad16-dynamic": ({}, ["--pad_to_multiple_of", "16", "--release_host_memory", "false"]),
    "unpadded": ({}, ["--pad_to_multiple_of", "1"]),
    "fp32": ({}, ["--bf16", "false", "--dtype", "float32"]),
    "arena2": ({"MALLOC_ARENA_MAX": "2"}, []),
    "mmap": ({"MALLOC_MMAP_THRESHOLD_": "65536"}, []),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["cached", "first-run"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps of each run")
    parser.add_argument("--eval_samples", type=int, default=64, help="eval tweets decoded after training")
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, default=[], help=argparse.SUPPRESS)  # a JSON list
    return parser


def worker(steps: int, eval_samples: int, overrides: list[str]) -> list[dict[str, Any]]:
    """Run the main job's stages in this process; the resident memory after each."""
    stages: list[dict[str, Any]] = []
    started = time.perf_counter()

    def mark(stage: str) -> None:
        stages.append({
            "stage": stage,
            "rss_mb": round(status_kib("VmRSS") * 1024 / 1e6, 1),
            "peak_mb": round(status_kib("VmHWM") * 1024 / 1e6, 1),
            "seconds": round(time.perf_counter() - started, 1),
        })  # fmt: skip

    mark("python")
    import torch

    mark("import torch")
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import transformers
    from transformers import TrainerCallback

    mark("import transformers, peft, accelerate")
    from trainer_ext.configs import config_path
    from trainer_ext.training.pipeline import build, prepare_data
    from trainer_ext.training.recipe import parse_recipe

    mark("import trainer_ext (datasets, evaluate, bitsandbytes)")

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (1, 2) or state.global_step % 10 == 0 or state.global_step == steps:
                mark(f"after step {state.global_step}")

    output = tempfile.mkdtemp(prefix="memory-run-")
    recipe = parse_recipe([
        "--config", str(config_path("recipes/moderation_lora_all.yaml")), "--data_dir", str(DATA_DIR),
        "--output_dir", output, "--max_steps", str(steps), "--report_to", "none", "--disable_tqdm", "true",
        "--eval_samples", str(eval_samples), *overrides,
    ])  # fmt: skip
    data = prepare_data(recipe)
    mark("data read and checked")
    loaded, _, trainer = build(recipe, data)
    mark("model loaded (8-bit, lora-all), datasets encoded, trainer built")
    trainer.add_callback(Marks())
    trainer.train()
    mark(f"trained {steps} steps")
    trainer.evaluate()
    mark(f"evaluated: loss and constrained labels of {len(trainer.eval_dataset)} tweets")
    stages.append({"versions": {"torch": torch.__version__, "transformers": transformers.__version__}})
    return stages


def run_config(name: str, steps: int, eval_samples: int) -> dict[str, Any]:
    env = dict(os.environ)
    variables, overrides = CONFIGS[name]
    with tempfile.TemporaryDirectory(prefix="memory-cache-") as fresh:
        for key, value in variables.items():
            env[key] = value if value is not None else fresh
        command = [sys.executable, "-m", "benchmarks.training_memory", "--worker", "--steps", str(steps),
                   "--eval_samples", str(eval_samples), f"--overrides={json.dumps(overrides)}"]  # fmt: skip
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{name}: the worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    stages = json.loads(lines[-1][len(MARKER) :])
    return {"config": name, "env": {k: v or "(fresh directory)" for k, v in variables.items()},
            "overrides": overrides,
            "versions": stages[-1]["versions"], "stages": stages[:-1]}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Memory of a training run, stage by stage",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}). The main recipe "
        f"(SmolLM2-135M, 8-bit, lora-all, batch 8 as 2 x 4) for {report['steps']} steps, then evaluation; "
        "resident memory (VmRSS) after each stage and its peak so far (VmHWM), MB.",
    ]
    for run in report["runs"]:
        changes = " ".join([*(f"{k}={v}" for k, v in run["env"].items()), *run.get("overrides", [])])
        lines += ["", f"## {run['config']} {changes}", "", "| stage | s | RSS MB | peak MB |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        lines += [
            f"| {s['stage']} | {s['seconds']} | {s['rss_mb']:,.0f} | {s['peak_mb']:,.0f} |"
            for s in run["stages"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import platform

    args = make_parser().parse_args(argv)
    if args.worker:
        print(MARKER + json.dumps(worker(args.steps, args.eval_samples, args.overrides)), flush=True)
        return 0
    report = {
        "command": "python -m benchmarks.training_memory "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}",
        "steps": args.steps,
        "runs": [run_config(name, args.steps, args.eval_samples) for name in args.configs],
    }
    write_report(args.out_dir, "training_memory", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
