"""Time the CPU 8-bit layers' matmul: bf16 weights, int8 dequantize-then-matmul, scaled product, kernel.

    python -m benchmarks.int8_matmul                  # a few minutes on 2 cores; writes int8_matmul.md
    python -m benchmarks.int8_matmul --rounds 3 --no_write

For each linear shape of SmolLM2-135M (hidden 576, intermediate 1536, 3 key/value heads of 64) and each
number of tokens per batch, the median milliseconds of one forward and of one forward+backward pass
(input gradient only: the weight is frozen, as under LoRA) of:

- ``bf16``: a regular matmul with bf16 weights (what an unquantized model runs);
- ``dequantize``: `dequantize_then_matmul_reference`: every int8 weight dequantized to bf16 before each
  matmul, forward and backward (the CPU 8-bit layers' first method, and still their path from as many rows
  as input features), the reference;
- ``scaled``: `trainer_ext.modeling.int8_cpu`'s scaled product, forced: the int8 rows converted to bf16
  as they are, the row scales applied to the product (forward) and to the output gradient (backward);
- ``kernel``: ``aten::_weight_int8pack_mm`` in the forward pass, forced on whatever the number of rows (the
  backward pass as the layer picks it);
- ``module``: what `WeightOnlyInt8Linear` runs, the paths it picks on this CPU (`int8_cpu.matmul_paths`:
  the kernel up to `KERNEL_MAX_ROWS` rows, the scaled product while there are fewer rows than input
  features, dequantize otherwise), named in the last column.

A second table adds the layers up to SmolLM2-135M's 210 decoder products (30 blocks of q, k, v, o, gate,
up and down projections), the part of one model pass that the 8-bit layers change.

All are timed in interleaved rounds after a warm-up, so that a varying machine load hits them alike. The
run is refused when the 1-minute load average exceeds ``--max_load``, unless ``--force``.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.training import load_average
from trainer_ext.modeling import int8_cpu
from trainer_ext.runs.info import cpu_model

# SmolLM2-135M's linear layers as (name, in_features, out_features, layers of that shape per block).
LAYER_SHAPES = [
    ("q_proj / o_proj", 576, 576, 2),
    ("k_proj / v_proj", 576, 192, 2),
    ("gate_proj / up_proj", 576, 1536, 2),
    ("down_proj", 1536, 576, 1),
]
BLOCKS = 30
# Tokens per batch as (batch, sequence length): training batches, a short prompt, one tweet (28 tokens),
# a message after a cached prefix, one step of generation.
TOKENS = [(16, 128), (8, 64), (1, 40), (1, 28), (1, 16), (1, 1)]
METHODS = ("bf16", "dequantize", "scaled", "kernel", "module")
RERUN = "python -m benchmarks.int8_matmul"


class _DequantizeThenMatmulReference(torch.autograd.Function):
    """Dequantize-then-matmul: ``x @ dequant(W).T``, dequantizing again in the backward pass."""

    @staticmethod
    def forward(ctx, x, int8_weight, row_scale):
        ctx.save_for_backward(int8_weight, row_scale)
        weight = int8_weight.to(x.dtype) * (row_scale.float() / 127.0).to(x.dtype).unsqueeze(1)  # (out, in)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        int8_weight, row_scale = ctx.saved_tensors
        weight = int8_weight.to(grad_out.dtype) * (row_scale.float() / 127.0).to(grad_out.dtype).unsqueeze(1)
        return grad_out @ weight, None, None  # (..., in)


def dequantize_then_matmul_reference(x: torch.Tensor, int8_weight: torch.Tensor, row_scale: torch.Tensor):
    """Dequantize-then-matmul as a function of the input `(..., in)`, the baseline of this benchmark."""
    return _DequantizeThenMatmulReference.apply(x, int8_weight, row_scale)


def make_calls(in_features: int, out_features: int) -> tuple[dict[str, Callable], torch.Tensor]:
    """The matmuls of a random layer, each a function of the input `(..., in)`, and its int8 weight."""
    weight = torch.randn(out_features, in_features) * in_features**-0.5  # (out, in)
    row_scale = weight.abs().amax(dim=1)  # (out,): bitsandbytes' SCB
    int8_weight = torch.round(weight * (127.0 / row_scale.unsqueeze(1))).to(torch.int8).contiguous()
    bf16_weight = weight.to(torch.bfloat16)

    def int8_matmul(x, forward_path=None):
        """`WeightOnlyInt8Linear`'s matmul; its own choice of paths, or `forward_path` forced."""
        paths = int8_cpu.matmul_paths(x, int8_weight)
        if forward_path is not None:
            paths = (forward_path, True if forward_path == "scaled" else paths[1])
        return int8_cpu.weight_only_int8_linear(x, int8_weight, row_scale, None, paths)

    calls = {
        "bf16": lambda x: F.linear(x, bf16_weight),
        "dequantize": lambda x: dequantize_then_matmul_reference(x, int8_weight, row_scale),
        "scaled": lambda x: int8_matmul(x, "scaled"),
        "kernel": lambda x: int8_matmul(x, "kernel"),
        "module": int8_matmul,
    }
    return calls, int8_weight


def run_once(call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, backward: bool) -> None:
    if backward:
        out = call(x)
        out.backward(torch.ones_like(out))
        x.grad = None
    else:
        with torch.no_grad():
            call(x)


def median_ms(
    calls: dict, x: torch.Tensor, backward: bool, rounds: int, min_seconds: float
) -> dict[str, float]:
    """Median milliseconds per call of each method, timed in interleaved rounds after a warm-up."""
    repeats = {}
    for name, call in calls.items():  # warm-up, and how many calls make one measurement of min_seconds
        run_once(call, x, backward)
        start = time.perf_counter()
        run_once(call, x, backward)
        repeats[name] = max(1, round(min_seconds / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(rounds):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            start = time.perf_counter()
            for _ in range(repeats[name]):
                run_once(calls[name], x, backward)
            times[name].append((time.perf_counter() - start) / repeats[name] * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(rounds: int, min_seconds: float) -> list[dict]:
    """One row per layer shape, tokens per batch and pass."""
    torch.manual_seed(0)
    rows_out = []
    for layer, in_features, out_features, per_block in LAYER_SHAPES:
        for batch, seq_len in TOKENS:
            calls, int8_weight = make_calls(in_features, out_features)
            x = torch.randn(batch, seq_len, in_features, dtype=torch.bfloat16)  # (B, T, in)
            forward_path, scaled_backward = int8_cpu.matmul_paths(x, int8_weight)
            for backward in (False, True):
                x.requires_grad_(backward)
                ms = median_ms(calls, x, backward, rounds, min_seconds)
                rows_out.append(
                    {
                        "layer": f"{layer} ({in_features} → {out_features})",
                        "tokens": f"{batch}x{seq_len}",
                        "pass": "forward+backward" if backward else "forward",
                        "module_uses": (
                            f"{forward_path}, {'scaled' if scaled_backward else 'dequantize'}"
                            if backward
                            else forward_path
                        ),
                        "per_block": per_block,
                        **ms,
                    }
                )
    return rows_out


def table(rows: list[dict]) -> list[str]:
    lines = [
        f"| layer (in → out) | tokens | pass | {' | '.join(f'{m} ms' for m in METHODS)} "
        "| module vs. dequantize | module vs. bf16 | module uses |",
        "|---|---|---|" + "---:|" * (len(METHODS) + 2) + "---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['tokens']} | {r['pass']} | {' | '.join(f'{r[m]:.3f}' for m in METHODS)} | "
            f"{r['module'] / r['dequantize']:.2f} | {r['module'] / r['bf16']:.2f} | {r['module_uses']} |"
        )
    return lines


def model_totals(rows: list[dict]) -> list[str]:
    """The per-layer medians added up to one pass of SmolLM2-135M's decoder products."""
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        total = totals.setdefault((r["tokens"], r["pass"]), dict.fromkeys(METHODS, 0.0))
        for method in METHODS:
            total[method] += r[method] * r["per_block"] * BLOCKS
    products = BLOCKS * sum(shape[3] for shape in LAYER_SHAPES)
    lines = [
        f"| tokens | pass | {' | '.join(f'{m} ms' for m in METHODS)} | module vs. dequantize "
        "| module vs. bf16 |",
        "|---|---|" + "---:|" * (len(METHODS) + 2),
    ]
    for (tokens, pass_), total in totals.items():
        lines.append(
            f"| {tokens} | {pass_} | {' | '.join(f'{total[m]:.1f}' for m in METHODS)} | "
            f"{total['module'] / total['dequantize']:.2f} | {total['module'] / total['bf16']:.2f} |"
        )
    intro = f"All {products} decoder products of SmolLM2-135M, added up from the table above:"
    return [intro, "", *lines]


def write_markdown(
    path: Path, lines: list[str], argv: list[str], load_before: float, load_after: float
) -> None:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Weight-only int8 matmuls on the CPU",
        "",
        f"Written by `{shlex.join([*RERUN.split(), *argv])}` on {date}; rerun it on a quiet machine.",
        "",
        f"Machine: {cpu_model()}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}. torch {torch.__version__}.",
        f"1-minute load average before the run: {load_before}, after: {load_after}.",
        "",
        "Median milliseconds per call; bf16 activations. *dequantize*: int8 weights dequantized to bf16 "
        "before each matmul, forward and backward (the layers' path from as many rows as input "
        "features); *scaled*: the int8 rows converted to bf16 unscaled, the row scales applied to the "
        "product and to the output gradient; *kernel*: `aten::_weight_int8pack_mm` in the forward pass, "
        "forced (the backward as the layer picks it); *module*: what `WeightOnlyInt8Linear` runs on this "
        f"CPU (the kernel up to {int8_cpu.KERNEL_MAX_ROWS} rows, the scaled product while there are fewer "
        "rows than input features, dequantize otherwise), the paths it took in *module uses* (forward, "
        "then backward). *module vs. x* = module ms / x ms (below 1: faster).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*header, *lines, ""]), encoding="utf-8")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=RERUN, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="Timed rounds per case, after a warm-up.")
    parser.add_argument(
        "--min_seconds", type=float, default=0.05, help="Time of one measurement of a method."
    )
    parser.add_argument("--out", default="docs/benchmarks/int8_matmul.md", help="Where the table goes.")
    parser.add_argument("--no_write", action="store_true", help="Print the table only.")
    parser.add_argument("--max_load", type=float, default=0.8, help="Refuse to run above this load average.")
    parser.add_argument("--force", action="store_true", help="Measure even on a busy machine.")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    if int8_cpu._INT8_KERNEL is None:
        print(f"{RERUN}: aten::_weight_int8pack_mm is not vectorized on this CPU; nothing to compare.")
        return 1
    load_before = load_average()
    if load_before > args.max_load and not args.force:
        print(
            f"{RERUN}: the machine is busy (1-minute load average {load_before} > {args.max_load}); timings "
            "taken now would measure the other processes. Wait until it is quiet (see `uptime`), or pass "
            "--force to measure anyway (the report then shows the load).",
            file=sys.stderr,
        )
        return 3
    rows = measure(args.rounds, args.min_seconds)
    lines = [*table(rows), "", *model_totals(rows)]
    load_after = load_average()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load_before} -> {load_after}")
    print("\n".join(lines))
    if not args.no_write:
        write_markdown(Path(args.out), lines, argv, load_before, load_after)
        print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
