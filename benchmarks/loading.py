"""Measure the loading choices on the embedded model: 8-bit compute dtype, PEFT's fp32 upcast, method sizes.

    python -m benchmarks.loading                 # all three tables
    python -m benchmarks.loading --only methods  # the trainable-parameter table of README.md

Timings: median seconds of a forward+backward pass of SmolLM2-135M with `lora-all` (batch 8, 96 tokens)
on this machine's default device, for combinations of quantization, dtype, PEFT's fp32 upcast of the
frozen non-quantized weights, and bf16 autocast (what the Trainer's `bf16: true` does). All cases are
loaded first and timed in interleaved rounds after a warm-up round, so that a machine whose load varies
slows them alike; the last column is each case's time relative to the first row.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch

from trainer_ext.modeling.loading import load_model
from trainer_ext.vocabulary import METHODS


def one_step(model, input_ids: torch.Tensor, autocast: bool) -> float:
    """Wall time of one forward+backward pass."""
    start = time.perf_counter()
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def upcast_frozen(model) -> None:
    """Do what PEFT's `prepare_model_for_kbit_training` does: frozen non-quantized weights to fp32."""
    for param in model.parameters():
        if not param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)


# (quantization, dtype, frozen non-quantized weights upcast to fp32 as PEFT does, bf16 autocast)
CASES = [
    ("8bit", "bfloat16", True, True),
    ("8bit", "bfloat16", False, True),
    ("8bit", "bfloat16", True, False),
    ("8bit", "bfloat16", False, False),
    ("8bit", "float16", True, False),
    ("none", "bfloat16", False, False),
    ("none", "float32", False, True),
]


def compute_table(model_name: str, rounds: int, batch: int, seq_len: int) -> list[str]:
    """Load every case, then time them in interleaved rounds so that a varying machine load hits all alike."""
    models = []
    for quantization, dtype, upcast, _ in CASES:
        loaded = load_model(model_name, quantization=quantization, method="lora-all", dtype=dtype)
        if upcast:
            upcast_frozen(loaded.model)
        loaded.model.train()
        models.append(loaded.model)
    torch.manual_seed(0)
    input_ids = torch.randint(0, models[0].config.vocab_size, (batch, seq_len), device=models[0].device)
    times: list[list[float]] = [[] for _ in CASES]
    for round_index in range(rounds + 1):  # round 0 warms up
        order = list(range(len(CASES)))
        order = order[round_index % len(order) :] + order[: round_index % len(order)]
        for index in order:
            seconds = one_step(models[index], input_ids, autocast=CASES[index][3])
            if round_index:
                times[index].append(seconds)
    base = statistics.median(times[0])
    rows = [
        "| quantization | dtype | frozen non-int8 weights | bf16 autocast | s / step | vs. first row |",
        "|---|---|---|---|---:|---:|",
    ]
    for (quantization, dtype, upcast, autocast), case_times in zip(CASES, times, strict=True):
        seconds = statistics.median(case_times)
        frozen = "fp32 (PEFT upcast)" if upcast else dtype
        rows.append(
            f"| {quantization} | {dtype} | {frozen} | {'yes' if autocast else 'no'} | {seconds:.2f} | "
            f"{seconds / base:.2f} |"
        )
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
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per case, after a warm-up")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=96)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="MatMul8bitLt")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "compute"):
        print("\n".join(compute_table(args.model, args.rounds, args.batch, args.seq_len)))
    if args.only in (None, "methods"):
        print("\n".join(methods_table(args.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
