"""``make bench``: training and label-decoding speed, ours against TRL's `SFTTrainer` and `generate`.

    python -m benchmarks.speed                         # all but ours-8bit-bf16 (about 15 minutes, 2 cores)
    python -m benchmarks.speed --only ours-8bit trl-bf16 decoding --steps 10
    python -m benchmarks.speed --lora_r 4              # any recipe key overrides the recipe

Measured pair by pair, each configuration in a fresh process (see `benchmarks.training`):

- training steps of the main job's recipe with `LabelTrainer` and with TRL's `SFTTrainer`
  (``completion_only_loss``) on the same model, data, LoRA settings, batch size, optimizer and precision
  (fp32, bf16, and the main job's 8-bit weights computing in bf16, or in float32 on a CPU without native
  bf16 or AVX-512): samples/s, real tokens/s, peak memory, and the share of the machine's measured matmul
  rate the steps reach; ``ours-8bit-bf16`` (the main job in bf16 on any CPU) only when ``--only`` names it;
- label decoding on the eval prompts: constrained scoring, batched greedy generation and a plain
  one-prompt-at-a-time `model.generate` loop: samples/s and accuracy (see `benchmarks.decoding`).

Timings are only worth something on a quiet machine: the run is refused when the 1-minute load average
exceeds ``--max_load`` (1.5), unless ``--force``. Results go to ``OUT_DIR/speed.json`` and ``speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT
from trainer_ext.configs import config_path

RESULT_MARKER = "BENCH_RESULT "
PARTS = ("matmul", "training", "decoding")


def make_parser() -> argparse.ArgumentParser:
    from benchmarks.training import TRAIN_CONFIGS

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description=__doc__.split("\n\n")[0],
        epilog="Other --key value pairs override the recipe (e.g. --model_name_or_path DIR --lora_r 4).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        default=str(config_path("recipes/moderation_lora_all.yaml")),
        help="Recipe of the main job (default: the shipped moderation_lora_all.yaml).",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*TRAIN_CONFIGS, "decoding"],
        help="Measure only these training configurations and/or the decoding part (the matmul rate always).",
    )
    parser.add_argument("--warmup_steps", type=int, default=3, help="Untimed optimizer steps first.")
    parser.add_argument("--steps", type=int, default=20, help="Timed optimizer steps per configuration.")
    parser.add_argument(
        "--eval_samples", type=int, help="Decode only the first N eval samples (default: all)."
    )
    parser.add_argument(
        "--profile_steps",
        type=int,
        default=0,
        help="Profile this many steps after the timed ones (top operators).",
    )
    parser.add_argument("--eval_batch_size", type=int, help="Prompts per batch (default: the recipe's).")
    parser.add_argument(
        "--run_dir", help="Trained run to decode with (default: the recipe's output_dir, if it holds a run)."
    )
    parser.add_argument(
        "--matmul_seconds", type=float, default=1.0, help="Time spent on each matmul rate measurement."
    )
    parser.add_argument("--out_dir", default="docs/benchmarks", help="Where speed.json and speed.md go.")
    parser.add_argument(
        "--max_load", type=float, default=1.5, help="Refuse to run above this 1-minute load average."
    )
    parser.add_argument("--force", action="store_true", help="Run and write the report whatever the load.")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # KIND JSON: one measurement, here
    return parser


def run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in this process."""
    if kind == "matmul":
        from benchmarks.training import run_matmul

        return run_matmul(spec)
    if kind == "training":
        from benchmarks.training import run_training

        return run_training(spec)
    from benchmarks.decoding import run_decoding

    return run_decoding(spec)


class WorkerError(RuntimeError):
    """A measurement process that failed; the message holds the end of its error output."""


def measure(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh Python process and return its result."""
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    if kind == "training":  # the whole-run figures count from here: start-up is part of a user's wait
        spec = {**spec, "launched_at": time.time()}
    command = [sys.executable, "-m", "benchmarks.speed", "--worker", kind, json.dumps(spec)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        raise WorkerError(f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _command(argv: list[str]) -> str:
    import shlex

    program = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else ""
    if program and Path(program).resolve() == Path(__file__).resolve():
        return shlex.join(["python", "-m", "benchmarks.speed", *argv])
    if program:
        with contextlib.suppress(ValueError):  # another drive (Windows)
            program = os.path.relpath(program)
        return shlex.join(["python", program, *argv])
    return shlex.join(["trainer-ext", "bench", *argv])


def _plan(args) -> tuple[list[str], bool]:
    from benchmarks.training import OPT_IN_CONFIGS, TRAIN_CONFIGS

    only = args.only or [*(name for name in TRAIN_CONFIGS if name not in OPT_IN_CONFIGS), "decoding"]
    return [name for name in TRAIN_CONFIGS if name in only], "decoding" in only


def _report_header(args, argv: list[str], recipe, recipe_args: list[str], load: float) -> dict[str, Any]:
    from trainer_ext.modeling.cpu_features import cpu_capability, cpu_supports_bf16
    from trainer_ext.runs.info import cpu_model

    training = recipe.training
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": _command(argv),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "native_bf16": cpu_supports_bf16(),
            "cpu_capability": cpu_capability(),  # AVX2, AVX512, ...
        },
        "versions": _versions(),
        "recipe": args.config,
        "recipe_overrides": recipe_args,
        "model": recipe.model.model_name_or_path,
        "method": recipe.lora.method,
        "lora_r": recipe.lora.lora_r,
        "lora_alpha": recipe.lora.lora_alpha,
        "optimizer": str(getattr(training.optim, "value", training.optim)),
        "batch_size": training.per_device_train_batch_size * training.gradient_accumulation_steps,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "profile_steps": args.profile_steps,
        "max_load": args.max_load,
        "forced": args.force,
        "load_before": load,
    }


def _measure_all(args, recipe, recipe_args: list[str], report: dict[str, Any], out_json: Path) -> int:
    """Run every planned measurement, saving the report after each; the number of failures."""
    from dataclasses import asdict

    from benchmarks.training import TRAIN_CONFIGS

    names, decoding = _plan(args)
    failures = 0
    base = {"recipe": args.config, "overrides": recipe_args}
    with tempfile.TemporaryDirectory(prefix="trainer_ext_bench_") as tmp:
        jobs: list[tuple[str, str, dict[str, Any]]] = [
            ("matmul", "matmul", {"min_seconds": args.matmul_seconds})
        ]
        for name in names:
            spec = {
                **base,
                "config": asdict(TRAIN_CONFIGS[name]),
                "output_dir": str(Path(tmp) / name),
                "warmup_steps": args.warmup_steps,
                "steps": args.steps,
                "profile_steps": args.profile_steps,
            }
            jobs.append(("training", name, spec))
        if decoding:
            run_dir = args.run_dir or recipe.training.output_dir
            spec = {**base, "output_dir": str(Path(tmp) / "decoding"), "run_dir": run_dir}
            spec.update(samples=args.eval_samples, batch_size=args.eval_batch_size)
            jobs.append(("decoding", "decoding", {k: v for k, v in spec.items() if v is not None}))
        for kind, name, spec in jobs:
            print(f"Measuring {name} ...", flush=True)
            try:
                result = measure(kind, spec)
            except WorkerError as error:
                failures += 1
                result = {"error": str(error)}
                print(f"python -m benchmarks.speed: {name} failed: {error}", file=sys.stderr)
            if kind == "training":
                report["training"][name] = {**asdict(TRAIN_CONFIGS[name]), **result}
            else:
                report[kind] = result
            out_json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make bench`` and ``benchmarks/speed.py``."""
    from trainer_ext.training.recipe import RecipeError, parse_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    args, recipe_args = make_parser().parse_known_args(argv)
    if args.worker:
        result = run_worker(args.worker[0], json.loads(args.worker[1]))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    if args.steps < 1 or args.warmup_steps < 1:
        print("python -m benchmarks.speed: --steps and --warmup_steps must be at least 1.", file=sys.stderr)
        return 2
    try:
        recipe = parse_recipe(["--config", args.config, *recipe_args])
    except RecipeError as error:
        print(f"python -m benchmarks.speed: {error}", file=sys.stderr)
        return 2
    from benchmarks.report import summarize, write_markdown
    from benchmarks.training import load_average

    load = load_average()
    if load > args.max_load and not args.force:
        print(
            f"python -m benchmarks.speed: the machine is busy (1-minute load average {load} > "
            f"{args.max_load}); "
            "timings taken now would measure the other processes. Wait until it is quiet (see `uptime`), "
            "or pass --force to measure anyway (the report then shows the load).",
            file=sys.stderr,
        )
        return 3
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**_report_header(args, argv, recipe, recipe_args, load), "training": {}}
    failures = _measure_all(args, recipe, recipe_args, report, out_dir / "speed.json")
    report["load_after"] = load_average()
    report["summary"] = summarize(report)
    (out_dir / "speed.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_markdown(out_dir / "speed.md", report)
    print(f"Wrote {out_dir / 'speed.json'} and {out_dir / 'speed.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
