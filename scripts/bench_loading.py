"""Measure the loading choices on the embedded model: 8-bit compute dtype, PEFT's fp32 upcast, method sizes.

    python scripts/bench_loading.py                 # all three tables
    python scripts/bench_loading.py --only methods  # the trainable-parameter table of README.md

Timings: median seconds of a forward+backward pass of SmolLM2-135M with `lora-all` (batch 8, 96 tokens)
after one warm-up step, on this machine's default device, for combinations of quantization, dtype, PEFT's
fp32 upcast of the frozen non-quantized weights, and bf16 autocast (what the Trainer's `bf16: true` does).
They depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch

from trainer_ext.loading import load_model
from trainer_ext.methods import METHODS


def step_seconds(model, steps: int, batch: int, seq_len: int, autocast: bool) -> float:
    """Median wall time of `steps` forward+backward passes on random tokens (after one warm-up pass)."""
    torch.manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=model.device)
    model.train()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def upcast_frozen(model) -> None:
    """Do what PEFT's `prepare_model_for_kbit_training` does: frozen non-quantized weights to fp32."""
    for param in model.parameters():
        if not param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)


# (quantization, dtype, keep PEFT's fp32 upcast of frozen non-int8 weights, bf16 autocast)
CASES = [
    ("8bit", "bfloat16", True, True),
    ("8bit", "bfloat16", False, True),
    ("8bit", "bfloat16", True, False),
    ("8bit", "bfloat16", False, False),
    ("8bit", "float16", True, False),
    ("none", "bfloat16", False, False),
    ("none", "float32", False, True),
]


def compute_table(model_name: str, steps: int, batch: int, seq_len: int) -> list[str]:
    rows = [
        "| quantization | dtype | frozen non-int8 weights | bf16 autocast | s / step |",
        "|---|---|---|---|---:|",
    ]
    print("\n".join(rows), flush=True)
    for quantization, dtype, upcast, autocast in CASES:
        loaded = load_model(model_name, quantization=quantization, method="lora-all", dtype=dtype)
        if upcast:
            upcast_frozen(loaded.model)
        frozen = "fp32 (PEFT upcast)" if upcast else dtype
        seconds = step_seconds(loaded.model, steps, batch, seq_len, autocast)
        rows.append(
            f"| {quantization} | {dtype} | {frozen} | {'yes' if autocast else 'no'} | {seconds:.2f} |"
        )
        print(rows[-1], flush=True)
        del loaded
    return rows


def methods_table(model_name: str) -> list[str]:
    rows = ["| method | trainable parameters | of total | share |", "|---|---:|---:|---:|"]
    for method in METHODS:
        loaded = load_model(model_name, quantization="none", method=method, dtype="float32")
        share = 100.0 * loaded.trainable_params / loaded.total_params
        rows.append(f"| `{method}` | {loaded.trainable_params:,} | {loaded.total_params:,} | {share:.2f}% |")
        del loaded
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", choices=["compute", "methods"], default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=96)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="MatMul8bitLt")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "compute"):
        compute_table(args.model, args.steps, args.batch, args.seq_len)
    if args.only in (None, "methods"):
        print("\n".join(methods_table(args.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
