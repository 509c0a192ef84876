"""Time float32 linear layers on the CPU with their weights laid out four ways, by number of rows.

    python -m benchmarks.linear_layout            # a few minutes on 2 cores; writes linear_layout.md
    python -m benchmarks.linear_layout --rounds 3 --no_write
    python -m benchmarks.linear_layout --run runs/moderation-lora-all   # and whole messages of a run

For each linear shape of SmolLM2-135M and each number of rows (tokens of one forward pass: the label pass
of one message, one tweet's own tokens, a batch of 16 tweets), the median microseconds of one product
``x @ weight.T`` computed with

- ``row-major``: the weight as `nn.Linear` keeps it, a contiguous `(out, in)` matrix;
- ``column-major``: the same values stored as the transpose of a contiguous `(in, out)` matrix, as
  `trainer_ext.modeling.cpu_layout.use_column_major_weights` lays them out for prediction;
- ``weight-first``: the row-major weight as the left operand, ``(weight @ x.T).T`` made contiguous, as
  `trainer_ext.modeling.cpu_layout.WeightFirstLinear` computes the LM head's few rows;
- ``prepacked``: oneDNN's product with the weight reordered once into its blocked layout, as
  `trainer_ext.modeling.cpu_layout.PrepackedLinear` computes it (bf16 with native bf16, float32 on AVX2).

With ``--run`` (a run directory), it also times whole messages: `Classifier.predict` of one tweet of the
study's eval split per call, the run loaded unquantized in float32 with its adapter merged, with the model's
linear layers laid out each way in turn (``row-major``: as `nn.Linear` keeps them; ``column-major``: every
decoder weight, as on CPUs with AVX-512; ``weight-first head``: only the LM head, as on CPUs with AVX2
for quantized weights; ``prepacked, weight-first head``: that and every decoder weight prepacked for
oneDNN, as on CPUs with AVX2 for unquantized weights), in interleaved rounds, and reports each layout's
median and mean milliseconds per message.

The shapes are those of SmolLM2-135M's decoder layers and its LM head (576 -> 49,152, tied to the input
embeddings); each head weight is 113 MB, so only ``--head_copies`` distinct ones are cycled through.

Each call reads the next of ``--layers`` distinct weights (30, one per SmolLM2 layer), so that the weights
come from memory as in a real forward pass instead of staying in the CPU's caches. The layouts are
timed in interleaved rounds; the run is refused above a 1-minute load average of ``--max_load`` unless
``--force``. Writes `OUT_DIR/linear_layout.json` and `linear_layout.md`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks.common import (
    REPO_ROOT,
    count_type,
    eval_split_examples,
    refuse_busy_machine,
    refuse_missing_run,
    report_header,
    write_report,
)
from benchmarks.int8_matmul import LAYER_SHAPES
from trainer_ext.runs.info import cpu_model

ROWS = [1, 3, 8, 16, 28, 48, 64, 128, 448]
LAYOUTS = ("row-major", "column-major", "weight-first", "prepacked")
HEAD_SHAPE = ("lm_head", 576, 49152)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=count_type(1, "rows"), nargs="+", default=ROWS, help="rows per product"
    )
    parser.add_argument(
        "--layers", type=count_type(1, "weights"), default=30, help="distinct weights cycled through"
    )
    parser.add_argument(
        "--head_copies",
        type=count_type(1, "weights"),
        default=2,
        help="distinct LM head weights cycled through",
    )
    parser.add_argument(
        "--calls",
        type=count_type(1, "calls"),
        default=60,
        help="calls per layout and round (a tenth for the LM head, at least 2)",
    )
    parser.add_argument("--rounds", type=count_type(1, "rounds"), default=5, help="interleaved rounds")
    parser.add_argument("--run", help="also time whole messages of this run directory, per layout")
    parser.add_argument(
        "--messages", type=count_type(1), default=12, help="messages per layout and round (--run)"
    )
    parser.add_argument("--max_load", type=float, default=0.5, help="refuse above this 1-minute load average")
    parser.add_argument("--force", action="store_true", help="time even on a busy machine")
    parser.add_argument("--no_write", action="store_true", help="print the report instead of writing it")
    parser.add_argument(
        "--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"), help="where the report is written"
    )
    return parser


def _weight_first(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.mm(weight, x.t()).t().contiguous()  # (out, rows) -> (rows, out)


def _prepacked(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # (rows, out)


def time_shape(in_features: int, out_features: int, rows: int, args, copies: int, calls: int):
    """Median microseconds per call of each layout for `rows` rows, cycling through `copies` weights."""
    scale = in_features**-0.5
    row_major = [torch.randn(out_features, in_features) * scale for _ in range(copies)]  # (out, in)
    weights = {
        "row-major": row_major,
        "column-major": [w.t().contiguous().t() for w in row_major],
        "weight-first": row_major,
        "prepacked": [torch.ops.mkldnn._reorder_linear_weight(w) for w in row_major],
    }
    products = {
        "row-major": F.linear,
        "column-major": F.linear,
        "weight-first": _weight_first,
        "prepacked": _prepacked,
    }
    x = torch.randn(rows, in_features)  # (rows, in)
    for layout in LAYOUTS:  # same results, and a warm-up
        torch.testing.assert_close(
            products[layout](x, weights[layout][0]), F.linear(x, row_major[0]), atol=1e-5, rtol=1e-4
        )
    samples: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.rounds):
        for layout in LAYOUTS:
            chosen, product = weights[layout], products[layout]
            start = time.perf_counter()
            for call in range(calls):
                product(x, chosen[call % len(chosen)])
            samples[layout].append((time.perf_counter() - start) / calls * 1e6)
    return {layout: statistics.median(values) for layout, values in samples.items()}


def _plain_layout(model) -> None:
    """Back to `nn.Linear` as it is: contiguous `(out, in)` weights, the plain class, no packed copies."""
    from trainer_ext.modeling.cpu_layout import PrepackedLinear, WeightFirstLinear

    for module in model.modules():
        if type(module) is PrepackedLinear:
            module._drop_packed()
        if type(module) in (WeightFirstLinear, PrepackedLinear):
            module.__class__ = torch.nn.Linear
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            with torch.no_grad():
                module.weight.data = module.weight.data.contiguous()


def _prepacked_layout(model) -> None:
    """The LM head weight first and every other float32 layer a float32 `PrepackedLinear`, as
    `lay_out_for_prediction` lays out an unquantized model on CPUs with AVX2 (here on any CPU)."""
    from trainer_ext.modeling.cpu_layout import use_prepacked_weights, use_weight_first_head

    _plain_layout(model)
    use_weight_first_head(model)
    use_prepacked_weights(model, dtypes=(torch.float32,))


def time_messages(run: str, messages: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median and mean milliseconds of `Classifier.predict` of one message, per whole-model layout, and the
    size of the prepacked layout's packed copies (float32 weights, in MB)."""
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.modeling.cpu_layout import (
        PrepackedLinear,
        use_column_major_weights,
        use_weight_first_head,
    )

    layouts = {
        "row-major": _plain_layout,
        "column-major": lambda model: (_plain_layout(model), use_column_major_weights(model)),
        "weight-first head": lambda model: (_plain_layout(model), use_weight_first_head(model)),
        "prepacked, weight-first head": _prepacked_layout,
    }
    clf = Classifier.from_pretrained(run, quantization="none", dtype="float32", merge_adapter=True)
    texts = [example.text for example in eval_split_examples()[:messages]]
    seconds: dict[str, list[float]] = {layout: [] for layout in layouts}
    for _ in range(rounds):
        for layout, apply in layouts.items():
            apply(clf.model)
            clf.predict(texts[0])  # warm-up
            for text in texts:
                start = time.perf_counter()
                clf.predict(text)
                seconds[layout].append(time.perf_counter() - start)
    packed_mb = sum(m.weight.numel() * 4 for m in clf.model.modules() if type(m) is PrepackedLinear) / 1e6
    report = {
        layout: {"p50_ms": statistics.median(values) * 1e3, "mean_ms": statistics.fmean(values) * 1e3}
        for layout, values in seconds.items()
    }
    report["prepacked, weight-first head"]["packed_copies_mb"] = round(packed_mb)
    return report


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if refuse_busy_machine(args.max_load, args.force) or (args.run and refuse_missing_run(args.run)):
        return 2
    report = report_header("linear_layout", argv)
    report.update(cpu=cpu_model(), torch_threads=torch.get_num_threads(), results=[])
    lines = [
        "# float32 linear layers on the CPU: row-major, column-major, weight-first and prepacked products",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}; torch "
        f"threads {report['torch_threads']}; 1-minute load average at start {report['load_average']:.2f}).",
        "",
        f"Median microseconds of one product, cycling through {args.layers} distinct weights "
        f"({args.head_copies} for the LM head). Speed-ups: row-major time / that layout's time (above 1: "
        "faster than `nn.Linear` as it is).",
        "",
        "| layer (in -> out) | rows | "
        + " | ".join(f"{layout} us" for layout in LAYOUTS)
        + " | "
        + " | ".join(f"{layout} speed-up" for layout in LAYOUTS[1:])
        + " |",
        "|---|" + "---:|" * (2 * len(LAYOUTS)),
    ]
    shapes = [(name, n_in, n_out, args.layers, args.calls) for name, n_in, n_out, _ in LAYER_SHAPES]
    shapes.append((*HEAD_SHAPE, args.head_copies, max(args.calls // 10, 2)))
    for name, in_features, out_features, copies, calls in shapes:
        for rows in args.rows:
            us = time_shape(in_features, out_features, rows, args, copies, calls)
            report["results"].append(
                {"layer": name, "in": in_features, "out": out_features, "rows": rows, "us": us}
            )
            times = " | ".join(f"{us[layout]:.0f}" for layout in LAYOUTS)
            ratios = " | ".join(f"{us['row-major'] / us[layout]:.2f}x" for layout in LAYOUTS[1:])
            lines.append(f"| {name} ({in_features} -> {out_features}) | {rows} | {times} | {ratios} |")
    if args.run:
        report["messages"] = time_messages(args.run, args.messages, args.rounds)
        plain = report["messages"]["row-major"]["p50_ms"]
        lines += [
            "",
            f"Whole messages of `{args.run}` (unquantized float32, adapter merged): "
            f"`Classifier.predict` of one tweet, {args.messages} tweets x {args.rounds} rounds per layout. "
            "Speed-up: row-major p50 / that layout's p50.",
            "",
            "| layout | p50 ms | mean ms | speed-up |",
            "|---|---:|---:|---:|",
        ]
        for layout, ms in report["messages"].items():
            lines.append(
                f"| {layout} | {ms['p50_ms']:.1f} | {ms['mean_ms']:.1f} | {plain / ms['p50_ms']:.2f}x |"
            )
        packed_mb = report["messages"]["prepacked, weight-first head"]["packed_copies_mb"]
        lines += ["", f"The prepacked layout keeps a second copy of the decoder weights: {packed_mb} MB."]
    markdown = "\n".join(lines) + "\n"
    if args.no_write:
        print(markdown)
    else:
        write_report(args.out_dir, "linear_layout", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
