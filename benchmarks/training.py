"""Speed measurements behind `make bench`: training steps (ours and TRL's `SFTTrainer`) and the
machine's matmul rate (label decoding: `benchmarks.decoding`).

Each measurement runs in a fresh process (`benchmarks.speed` starts one per configuration), so memory
peaks and allocator state of one configuration cannot leak into the next. Timings are wall-clock seconds of
whole optimizer steps (collation, forward, backward, optimizer) after warm-up steps, taken by a
`TrainerCallback` at the end of each step; no timing here asserts anything, it is only recorded.

Why the share of the machine a step reaches is an estimate: counting FLOPs (`torch.utils.flop_counter`) costs
Python work on every operator, so it runs during the warm-up steps only; the timed steps' FLOPs are the
warm-up FLOPs per padded token times the timed steps' padded tokens (the attention term grows with the
square of the length, so long warm-up batches overstate it by a few percent).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from benchmarks.common import reset_peak_rss, status_kib, storage_bytes

# Recipe overrides of each precision mode; "8bit" is the main job's own setting (bf16 autocast and bf16
# compute where the machine runs bf16 well, else float32: see `resolve_auto_bf16` in
# `trainer_ext.training.recipe`), "8bit-bf16" the main job's setting before that choice (bf16 on any machine).
PRECISIONS: dict[str, list[str]] = {
    "fp32": ["--quantization", "none", "--dtype", "float32", "--bf16", "false"],
    "bf16": ["--quantization", "none", "--dtype", "bfloat16", "--bf16", "true"],
    "8bit": ["--quantization", "8bit", "--dtype", "auto", "--bf16", "auto"],
    "8bit-bf16": ["--quantization", "8bit", "--dtype", "bfloat16", "--bf16", "true"],
}
MATMUL_SHAPES: dict[str, tuple[int, int, int]] = {
    "2048x576 @ 576x1536": (2048, 576, 1536),  # tokens x hidden @ hidden x MLP width of SmolLM2-135M
    "2048x2048 @ 2048x2048": (2048, 2048, 2048),
}


@dataclass(frozen=True)
class TrainConfig:
    """One measured training configuration."""

    trainer: str  # "ours" (LabelTrainer) or "trl" (SFTTrainer with completion_only_loss)
    precision: str  # a key of PRECISIONS
    sampling: str  # the Trainer's train_sampling_strategy: "group_by_length" or "random"
    extra: tuple[str, ...] = ()  # more recipe arguments


TRAIN_CONFIGS: dict[str, TrainConfig] = {
    "trl-fp32": TrainConfig("trl", "fp32", "random"),
    "ours-fp32": TrainConfig("ours", "fp32", "group_by_length"),
    "trl-bf16": TrainConfig("trl", "bf16", "random"),
    "ours-bf16": TrainConfig("ours", "bf16", "group_by_length"),
    "trl-8bit": TrainConfig("trl", "8bit", "random"),
    "ours-8bit": TrainConfig("ours", "8bit", "group_by_length"),
    # Ablations: each trainer with the other's sampler, so the head and the batching are seen apart.
    "trl-bf16-grouped": TrainConfig("trl", "bf16", "group_by_length"),
    "ours-bf16-random": TrainConfig("ours", "bf16", "random"),
    # The main job in bf16 on any CPU, as before `bf16: auto` (slow where bf16 is, see `PRECISIONS`).
    "ours-8bit-bf16": TrainConfig("ours", "8bit-bf16", "group_by_length"),
    # Ablation: the main job without running the batch's shared prompt prefix once.
    "ours-8bit-unshared": TrainConfig("ours", "8bit", "group_by_length", ("--share_prompt_prefix", "false")),
}
MAIN_JOB = "ours-8bit"
OPT_IN_CONFIGS = ("ours-8bit-bf16",)  # measured only when `--only` names them


# The machine


def load_average() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``); `None` elsewhere."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return None
    fields = [int(v) for v in stat.read_text(encoding="utf-8").splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds this process has used (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def others_cpu_share(
    start: tuple[float, float | None, float], end: tuple[float, float | None, float]
) -> float | None:
    """Share of the machine's cores other processes used between two `cpu_snapshot`s (0 = a quiet machine)."""
    if start[1] is None or end[1] is None or end[0] <= start[0]:
        return None
    others = (end[1] - start[1]) - (end[2] - start[2])
    return round(max(others, 0.0) / ((end[0] - start[0]) * (os.cpu_count() or 1)), 3)


def cpu_snapshot() -> tuple[float, float | None, float]:
    """(wall clock, machine busy CPU seconds, own CPU seconds), for `others_cpu_share`."""
    return time.perf_counter(), busy_cpu_seconds(), own_cpu_seconds()


def matmul_rate(m: int, k: int, n: int, dtype: Any, min_seconds: float = 1.0) -> float:
    """GFLOP/s of `(m, k) @ (k, n)` products in `dtype` on the CPU with the threads torch uses, computed as
    a linear layer computes them (``F.linear`` with an `(n, k)` weight).

    The layout matters where bf16 is not native: on a 2-core AVX2-only CPU, bf16 reached 13.1 and 16.5
    GFLOP/s through ``F.linear`` (float32: 113.8 and 76.6; docs/benchmarks/speed_avx2_precision), while a
    ``torch.mm`` of a `(k, n)` bf16 matrix took minutes at these shapes (about 1.2 GFLOP/s in a probe).

    Args:
        m (`int`), k (`int`), n (`int`): The shapes.
        dtype (`torch.dtype`): `torch.float32` or `torch.bfloat16`.
        min_seconds (`float`, *optional*, defaults to 1.0): Time to measure for, after two warm-up products.
    """
    import torch
    import torch.nn.functional as F

    a, weight = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    for _ in range(2):
        F.linear(a, weight)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or count < 3:
        F.linear(a, weight)
        count += 1
    return 2 * m * k * n * count / elapsed / 1e9


def run_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """The machine's fp32 and bf16 matmul rates (GFLOP/s) for `MATMUL_SHAPES`."""
    import torch

    rates = {
        dtype: {
            name: round(matmul_rate(*shape, getattr(torch, dtype), spec.get("min_seconds", 1.0)), 1)
            for name, shape in MATMUL_SHAPES.items()
        }
        for dtype in ("float32", "bfloat16")
    }
    return {"gflops": rates, "torch_threads": torch.get_num_threads()}


# Memory


# Training steps


class BatchRecorder:
    """Wraps a data collator and records the shape and token counts of every batch it builds, in order.

    Args:
        collator (`Callable`): The trainer's collator (output: `input_ids`, `attention_mask`, `labels`).
    """

    def __init__(self, collator: Callable[[list], dict]) -> None:
        self.collator = collator
        self.batches: list[dict[str, int]] = []

    def __call__(self, features: list) -> dict:
        batch = self.collator(features)
        rows, width = batch["input_ids"].shape  # (B, T)
        self.batches.append(
            {
                "rows": int(rows),
                "padded_tokens": int(rows * width),
                "real_tokens": int(batch["attention_mask"].sum()),
                "loss_tokens": int((batch["labels"] != -100).sum()),
            }
        )
        return batch


class StepClock(TrainerCallback):
    """Records `cpu_snapshot()` at the end of every optimizer step and counts the warm-up steps' matmul FLOPs.

    Args:
        warmup_steps (`int`): Steps whose FLOPs are counted (they are not timed).
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.snapshots: list[tuple[float, float | None, float]] = []
        self.wall_times: list[float] = []  # `time.time()` at the end of every step, for the whole-run figures
        self.first_step_at: float | None = None
        self.warmup_flops = 0
        self._counter = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_at is None:
            self.first_step_at = time.time()
        if state.global_step < self.warmup_steps:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.warmup_flops += self._counter.get_total_flops()
            self._counter = None
        self.snapshots.append(cpu_snapshot())
        self.wall_times.append(time.time())


class StepProfiler(TrainerCallback):
    """Profiles `steps` optimizer steps after `start` steps with `torch.profiler` (CPU operators).

    Args:
        start (`int`): Steps to let pass first (the warm-up and timed steps).
        steps (`int`): Steps to profile.
        top (`int`, *optional*, defaults to 12): Operators to keep, by self CPU time.
    """

    def __init__(self, start: int, steps: int, top: int = 12) -> None:
        self.start, self.steps, self.top = start, steps, top
        self.operators: list[dict[str, Any]] = []
        self._profile = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.start and self.steps:
            from torch.profiler import ProfilerActivity, profile

            self._profile = profile(activities=[ProfilerActivity.CPU])
            self._profile.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._profile is not None and state.global_step == self.start + self.steps:
            self._profile.__exit__(None, None, None)
            events = list(self._profile.key_averages())
            total = sum(e.self_cpu_time_total for e in events) or 1.0
            events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
            self.operators = [
                {
                    "name": e.key,
                    "self_ms_per_step": round(e.self_cpu_time_total / 1000 / self.steps, 2),
                    "share": round(e.self_cpu_time_total / total, 3),
                    "calls_per_step": e.count // self.steps,
                }
                for e in events[: self.top]
            ]
            self._profile = None


def train_argv(spec: dict[str, Any]) -> list[str]:
    """Recipe arguments of a training measurement: the recipe, the precision mode, the step count."""
    config = TrainConfig(**spec["config"])
    return [
        "--config",
        spec["recipe"],
        *spec.get("overrides", []),
        *PRECISIONS[config.precision],
        "--train_sampling_strategy",
        config.sampling,
        *config.extra,
        "--output_dir",
        spec["output_dir"],
        "--max_steps",
        str(spec["warmup_steps"] + spec["steps"] + spec.get("profile_steps", 0)),
        "--logging_steps",
        str(10**6),
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]


def _timed_figures(
    clock: StepClock, batches: Sequence[dict[str, int]], warmup: int, steps: int, accumulation: int = 1
) -> dict[str, Any]:
    """Throughput of the steps after the warm-up: step i used batches i * accumulation to (i + 1) *
    accumulation - 1 (batches are built in step order). Per-batch figures are per optimizer step."""
    timed = batches[warmup * accumulation : (warmup + steps) * accumulation]
    start, end = clock.snapshots[warmup - 1], clock.snapshots[warmup + steps - 1]
    seconds = end[0] - start[0]
    total = {
        key: sum(b[key] for b in timed) for key in ("rows", "padded_tokens", "real_tokens", "loss_tokens")
    }
    timed = [
        {key: sum(b[key] for b in timed[i : i + accumulation]) for key in total}
        for i in range(0, len(timed), accumulation)
    ]  # one entry per optimizer step
    warm_padded = sum(b["padded_tokens"] for b in batches[: warmup * accumulation])
    flops = clock.warmup_flops / warm_padded * total["padded_tokens"]
    return {
        "timed_steps": len(timed),
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / len(timed), 3),
        "samples_per_second": round(total["rows"] / seconds, 3),
        "real_tokens_per_second": round(total["real_tokens"] / seconds, 1),
        "mean_real_tokens_per_batch": round(total["real_tokens"] / len(timed), 1),
        "mean_padded_tokens_per_batch": round(total["padded_tokens"] / len(timed), 1),
        "mean_loss_tokens_per_batch": round(total["loss_tokens"] / len(timed), 2),
        "padding_share": round(1 - total["real_tokens"] / total["padded_tokens"], 3),
        "warmup_gflops_per_padded_token": round(clock.warmup_flops / warm_padded / 1e9, 4),
        "estimated_gflops_per_second": round(flops / seconds / 1e9, 2),
        "others_cpu_share": others_cpu_share(start, end),
        "batch_real_tokens": [b["real_tokens"] for b in timed],
    }


def _whole_run_figures(
    clock: StepClock, batches: Sequence[dict[str, int]], launched_at: float, steps: int, accumulation: int
) -> dict[str, Any]:
    """What a user waits for: from the measuring process's launch (`launched_at`, `time.time()` taken by the
    parent right before it started the process) to the end of the first `steps` optimizer steps, start-up
    (imports, loading, data, building the trainer) and the untimed warm-up steps included."""
    seconds = clock.wall_times[steps - 1] - launched_at
    rows = sum(b["rows"] for b in batches[: steps * accumulation])
    return {
        "startup_seconds": round(clock.first_step_at - launched_at, 2),
        "whole_run_seconds": round(seconds, 2),
        "whole_run_samples_per_second": round(rows / seconds, 3),
    }


def run_training(spec: dict[str, Any]) -> dict[str, Any]:
    """Build a trainer for `spec` (see `train_argv`), run warm-up + timed steps, return the figures.

    Peak memory: the bytes of the model's parameters and buffers plus what the training steps add to the
    resident set size (their peak ``VmHWM`` minus the resident size right before training), as in
    ``benchmarks/memory.py``.
    """
    import gc

    from trainer_ext.training.recipe import parse_recipe

    config = TrainConfig(**spec["config"])
    recipe = parse_recipe(train_argv(spec))
    if config.trainer == "trl":
        from benchmarks.trl_baseline import build_trl_trainer

        loaded, trainer = build_trl_trainer(recipe)
    else:
        from trainer_ext.training.pipeline import build

        loaded, _, trainer = build(recipe)
    recorder = BatchRecorder(trainer.data_collator)
    trainer.data_collator = recorder
    clock = StepClock(spec["warmup_steps"])
    profiler = StepProfiler(spec["warmup_steps"] + spec["steps"], spec.get("profile_steps", 0))
    trainer.add_callback(clock)
    trainer.add_callback(profiler)
    gc.collect()
    rss_before = status_kib("VmRSS") * 1024
    reset_peak_rss()
    trainer.train()
    peak_added = status_kib("VmHWM") * 1024 - rss_before
    weights = storage_bytes(trainer.model)
    accumulation = trainer.args.gradient_accumulation_steps
    figures = _timed_figures(clock, recorder.batches, spec["warmup_steps"], spec["steps"], accumulation)
    if "launched_at" in spec:
        steps = spec["warmup_steps"] + spec["steps"]
        figures.update(_whole_run_figures(clock, recorder.batches, spec["launched_at"], steps, accumulation))
    return {
        **figures,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "bf16_autocast": bool(recipe.training.bf16),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "weights_mb": round(weights / 2**20, 1),
        "peak_memory_mb": round((weights + peak_added) / 2**20, 1),
        "batch_size": recipe.training.per_device_train_batch_size,
        "profile": profiler.operators,
    }
