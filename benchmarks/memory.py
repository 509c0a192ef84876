"""Measure the peak memory of training steps on the CPU and compare it with `trainer_ext.memory.estimate`.

Each configuration runs in a fresh Python process (so one run's allocator state cannot leak into the
next), which loads the model with `trainer_ext.modeling.loading.load_model`, builds the optimizer and runs
a few
training steps (forward with the Transformers loss, backward, optimizer step) on a batch of random tokens
with right padding. Two measurements of the peak:

- **process (RSS)**: the bytes of the model's parameters and buffers plus what the steps add to the
  resident set size: the peak during the steps (``VmHWM`` of ``/proc/self/status``, reset after loading
  through ``/proc/self/clear_refs``) minus the resident size after loading. Heap left over by loading
  (freed but not returned to the system) is left out; allocator overhead and kernels loaded lazily by
  the first step are in. glibc's default *dynamic* mmap threshold rises after large blocks are freed, so
  later tensors of that size come from the heap and freed ones stay resident: the RSS then runs 15-55%
  above the live tensors. The measuring processes therefore fix ``MALLOC_MMAP_THRESHOLD_`` (128 KiB by
  default, `--mmap_threshold 0` for glibc's default), so that a freed tensor leaves the resident set.
- **tensors**: the bytes of the model's parameters and buffers plus the peak of the tensor allocations
  during the steps, as `torch.profiler` records them (``profile_memory=True``). It is what the estimator
  models, without allocator overhead.

Results go to ``docs/benchmarks/memory.json`` and a Markdown table ``docs/benchmarks/memory.md``.
``--reestimate`` recomputes the estimates of an existing ``memory.json`` without measuring again.

    python -m benchmarks.memory                      # every configuration (about 15 minutes on 2 cores)
    python -m benchmarks.memory --only smollm2-8bit-lora-adam8bit
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import REPO_ROOT, status_kib, storage_bytes
from benchmarks.common import TOKENIZERS_DIR as TOKENIZERS


@dataclass(frozen=True)
class BenchConfig:
    """A measured configuration; `loss_tokens`: LabelTrainer's completion-only loss on so many tokens."""

    model: str
    quantization: str
    method: str
    optimizer: str
    gradient_checkpointing: bool = False
    loss_tokens: int | None = None


CONFIGS: dict[str, BenchConfig] = {
    "smollm2-8bit-lora-adam8bit": BenchConfig("smollm2-135m", "8bit", "lora-all", "adamw_8bit"),
    "smollm2-8bit-lora-adamw32": BenchConfig("smollm2-135m", "8bit", "lora-all", "adamw_torch"),
    "smollm2-8bit-lora-adam8bit-checkpointing": BenchConfig(
        "smollm2-135m", "8bit", "lora-all", "adamw_8bit", True
    ),
    "smollm2-8bit-lora-adam8bit-completion-loss": BenchConfig(
        "smollm2-135m", "8bit", "lora-all", "adamw_8bit", loss_tokens=4
    ),
    "smollm2-4bit-lora-adam8bit": BenchConfig("smollm2-135m", "4bit", "lora-all", "adamw_8bit"),
    "smollm2-bf16-lora-adam8bit": BenchConfig("smollm2-135m", "none", "lora-all", "adamw_8bit"),
    "smollm2-fp32-full-adamw32": BenchConfig("smollm2-135m", "none", "full", "adamw_torch"),
    "smollm2-fp32-full-adam8bit": BenchConfig("smollm2-135m", "none", "full", "adamw_8bit"),
    "gptj-small-8bit-lora-adam8bit": BenchConfig("gptj-small", "8bit", "lora-all", "adamw_8bit"),
    "neox-small-8bit-lora-adam8bit": BenchConfig("neox-small", "8bit", "lora-all", "adamw_8bit"),
}
# Random-weight models of the GPT-J and GPT-NeoX shapes, narrower and shallower (saved once per run).
SMALL_MODELS = {
    "gptj-small": ("gptj", dict(n_embd=1024, n_layer=4, n_head=16, rotary_dim=64, n_positions=512)),
    "neox-small": (
        "gpt_neox",
        dict(
            hidden_size=1024,
            num_hidden_layers=4,
            num_attention_heads=16,
            intermediate_size=4096,
            max_position_embeddings=512,
            rotary_pct=0.25,
        ),
    ),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="Run these configurations only.")
    parser.add_argument("--steps", type=int, default=2, help="Training steps per configuration.")
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per example.")
    parser.add_argument("--batch_size", type=int, default=2, help="Examples per step.")
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"), help="Where results go.")
    parser.add_argument(
        "--mmap_threshold",
        type=int,
        default=128 * 1024,
        help="glibc MALLOC_MMAP_THRESHOLD_ of the measuring processes (0: glibc's default, which keeps freed "
        "large blocks in the heap; see the module docstring)",
    )
    parser.add_argument(
        "--reestimate",
        action="store_true",
        help="Recompute the estimates in OUT_DIR/memory.json (no measurement).",
    )
    parser.add_argument(
        "--worker", help=argparse.SUPPRESS
    )  # JSON spec: run one configuration in this process
    return parser


def _touch(model) -> None:
    """Read every parameter and buffer once: weights still mapped from the checkpoint file become resident
    now, not during the measured steps (they are counted once, as the model's bytes)."""
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.numel():
                tensor.reshape(-1)[:: max(1, 4096 // tensor.element_size())].sum()


def _profiled_peak(prof) -> int:
    """Peak of the running sum of tensor allocations and frees recorded by the profiler."""
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def _optimizer(name: str, params):
    import bitsandbytes as bnb
    import torch

    if name == "adamw_8bit":
        return bnb.optim.AdamW8bit(params, lr=1e-4)
    return torch.optim.AdamW(params, lr=1e-4)


def _batch(vocab_size: int, batch_size: int, seq_len: int, loss_tokens: int | None) -> dict:
    """Random tokens, right padding on all but the first example; labels on every token, or on the last
    `loss_tokens` tokens of each example (a completion)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, seq_len - seq_len // 8 :] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    if loss_tokens:
        lengths = attention_mask.sum(dim=1, keepdim=True)  # (B, 1)
        positions = torch.arange(seq_len).unsqueeze(0)  # (1, T)
        labels = labels.masked_fill(positions < lengths - loss_tokens, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _loss(model, batch: dict, completion_only: bool):
    if completion_only:  # what LabelTrainer computes: logits of the completion tokens only
        from trainer_ext.training.trainer import completion_loss

        return completion_loss(model, batch)[0]
    return model(**batch).loss


def run_worker(spec: dict) -> dict:
    """Load, train `steps` steps and measure, in this process (see the module docstring)."""
    import gc
    import time

    from torch.profiler import ProfilerActivity, profile

    from trainer_ext.modeling.loading import load_model

    gc.collect()
    rss_before = status_kib("VmRSS") * 1024
    start = time.perf_counter()
    loaded = load_model(
        spec["path"],
        quantization=spec["quantization"],
        method=spec["method"],
        device="cpu",
        gradient_checkpointing=spec["gradient_checkpointing"],
    )
    model = loaded.model
    model.train()
    optimizer = _optimizer(spec["optimizer"], [p for p in model.parameters() if p.requires_grad])
    batch = _batch(model.config.vocab_size, spec["batch_size"], spec["seq_len"], spec.get("loss_tokens"))
    load_seconds = time.perf_counter() - start
    _touch(model)
    gc.collect()
    rss_loaded = status_kib("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(spec["steps"]):
            _loss(model, batch, bool(spec.get("loss_tokens"))).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    step_seconds = (time.perf_counter() - start) / spec["steps"]
    peak_rss = status_kib("VmHWM") * 1024
    weights = storage_bytes(model)
    return {
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "trainable_params": loaded.trainable_params,
        "measured_weights_bytes": weights,
        "measured_tensor_peak_bytes": weights + _profiled_peak(prof),
        "measured_rss_peak_bytes": weights + peak_rss - rss_loaded,
        "rss_after_load_bytes": rss_loaded - rss_before,
        "load_seconds": round(load_seconds, 1),
        "step_seconds": round(step_seconds, 1),
    }


def _model_path(model: str, tmp: Path) -> str:
    if model in SMALL_MODELS:
        path = tmp / model
        if not path.exists():
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

            model_type, fields = SMALL_MODELS[model]
            tokenizer_dir = TOKENIZERS / ("gptj" if model_type == "gptj" else "gpt2")
            config = AutoConfig.for_model(
                model_type, vocab_size=50400 if model_type == "gptj" else 50432, **fields
            )
            AutoModelForCausalLM.from_config(config).save_pretrained(path)
            AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(path)
        return str(path)
    from trainer_ext.modeling.embedded import resolve_model_path

    return resolve_model_path(model)


def add_estimate(result: dict, seq_len: int, batch_size: int) -> dict:
    """Add the estimator's figures for a measured configuration, and its error against both measurements."""
    from trainer_ext.memory.estimate import estimate_memory

    estimate = estimate_memory(
        result["config"],
        quantization=result["quantization"],
        method=result["method"],
        seq_len=seq_len,
        batch_size=batch_size,
        optimizer=result["optimizer"],
        gradient_checkpointing=result["gradient_checkpointing"],
        device="cpu",
        loss_tokens=result.get("loss_tokens"),
    )
    result["estimate"] = {**estimate.to_dict(), "model": result["model"]}
    for kind in ("tensor", "rss"):
        measured = result[f"measured_{kind}_peak_bytes"]
        result[f"error_vs_{kind}_percent"] = round(100 * (estimate.total - measured) / measured, 1)
    return result


def _malloc_env(threshold: int) -> dict:
    return {"MALLOC_MMAP_THRESHOLD_": str(threshold)} if threshold else {}


def measure(name: str, args, tmp: Path) -> dict:
    """Run one configuration in a fresh process and add the estimator's figures for it."""
    bench = CONFIGS[name]
    spec = {
        **asdict(bench),
        "path": _model_path(bench.model, tmp),
        "steps": args.steps,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **_malloc_env(args.mmap_threshold)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    config = json.loads((Path(spec["path"]) / "config.json").read_text(encoding="utf-8"))
    result.update(name=name, **asdict(bench), config=config)
    return add_estimate(result, args.seq_len, args.batch_size)


def _gb(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.3f}"


def write_markdown(path: Path, report: dict) -> None:
    """The table of `docs/benchmarks/memory.md`."""
    rows = [
        "| configuration | dtype | estimate GB (weights / optimizer / activations) | tensors GB | RSS GB "
        "| error vs tensors | error vs RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        e = r["estimate"]
        rows.append(
            f"| {r['name']} | {r['dtype']} | {_gb(e['total'])} "
            f"({_gb(e['weights'])} / {_gb(e['optimizer_states'])}"
            f" / {_gb(e['activations'])}) | {_gb(r['measured_tensor_peak_bytes'])} "
            f"| {_gb(r['measured_rss_peak_bytes'])} | {r['error_vs_tensor_percent']:+.1f}% "
            f"| {r['error_vs_rss_percent']:+.1f}% |"
        )
    header = (
        f"# Peak memory of training steps on the CPU: estimate against measurement\n\n"
        f"Written by `python -m benchmarks.memory` on {report['date']} ({report['machine']}; torch "
        f"{report['torch']}, transformers {report['transformers']}, bitsandbytes {report['bitsandbytes']}). "
        f"Sequence length {report['seq_len']}, batch {report['batch_size']}, LoRA r=8, "
        f"{report['steps']} steps. "
        "GB = 10^9 bytes. Error = (estimate - measured) / measured.\n\n"
        "Measured per configuration in a fresh process: *tensors* = parameter and buffer bytes + the peak of "
        "tensor allocations during the steps (torch.profiler, `profile_memory=True`); *RSS* = parameter and "
        "buffer bytes + the growth of the peak resident set size during the steps over the loaded process "
        f"(glibc `MALLOC_MMAP_THRESHOLD_` = {report.get('malloc_mmap_threshold', 'glibc default')}). "
        "The method and the discussion are in `docs/benchmarks/README.md`; the loss is the model's own "
        "causal-LM loss over every position, or `LabelTrainer`'s completion-only loss where the "
        "configuration says so. Step times (in the JSON) are of profiled steps: not a speed benchmark.\n\n"
    )
    path.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    out_dir = Path(args.out_dir)
    if args.reestimate:
        report = json.loads((out_dir / "memory.json").read_text(encoding="utf-8"))
        for result in report["results"]:
            add_estimate(result, report["seq_len"], report["batch_size"])
        (out_dir / "memory.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        write_markdown(out_dir / "memory.md", report)
        return 0
    import bitsandbytes
    import torch
    import transformers

    names = args.only or list(CONFIGS)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "malloc_mmap_threshold": args.mmap_threshold or "glibc default",
    }
    results = _earlier_results(out_dir / "memory.json", report) if args.only else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        for name in names:
            results[name] = result = measure(name, args, Path(tmp))
            print(
                f"{name}: estimate {_gb(result['estimate']['total'])} GB, tensors "
                f"{_gb(result['measured_tensor_peak_bytes'])} GB "
                f"({result['error_vs_tensor_percent']:+.1f}%), "
                f"RSS {_gb(result['measured_rss_peak_bytes'])} GB ({result['error_vs_rss_percent']:+.1f}%)",
                flush=True,
            )
            report["results"] = [results[n] for n in CONFIGS if n in results]
            (out_dir / "memory.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            write_markdown(out_dir / "memory.md", report)
    return 0


def _earlier_results(path: Path, report: dict) -> dict:
    """Results of an earlier run with the same settings, which a run of `--only` configurations updates."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    settings = ("seq_len", "batch_size", "steps", "malloc_mmap_threshold")
    if any(earlier.get(key) != report[key] for key in settings):
        return {}
    return {result["name"]: result for result in earlier["results"]}


if __name__ == "__main__":
    sys.exit(main())
