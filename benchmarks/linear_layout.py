"""Time float32 linear layers on the CPU with row-major and column-major weights, by number of rows.

    python -m benchmarks.linear_layout            # about a minute on 2 cores; writes linear_layout.md
    python -m benchmarks.linear_layout --rounds 3 --no_write

For each linear shape of SmolLM2-135M and each number of rows (tokens of one forward pass: the label pass
of one message, one tweet's own tokens, a batch of 16 tweets), the median microseconds of
``F.linear(x, weight)`` with

- ``row-major``: the weight as `nn.Linear` keeps it, a contiguous `(out, in)` matrix;
- ``column-major``: the same values stored as the transpose of a contiguous `(in, out)` matrix, as
  `trainer_ext.modeling.cpu_layout.use_column_major_weights` lays them out for prediction.

Each call reads the next of ``--layers`` distinct weights (30, one per SmolLM2 layer), so that the weights
come from memory as in a real forward pass instead of staying in the CPU's caches. The two layouts are
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

from benchmarks.common import REPO_ROOT, refuse_busy_machine, report_header, write_report
from benchmarks.int8_matmul import LAYER_SHAPES
from trainer_ext.runs.info import cpu_model

ROWS = [1, 3, 8, 16, 28, 48, 64, 128, 448]
LAYOUTS = ("row-major", "column-major")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=ROWS)
    parser.add_argument("--layers", type=int, default=30, help="distinct weights cycled through")
    parser.add_argument("--calls", type=int, default=60, help="calls per layout and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max_load", type=float, default=0.5)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--no_write", action="store_true")
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    return parser


def time_shape(in_features: int, out_features: int, rows: int, args) -> dict[str, float]:
    """Median microseconds per call of each layout for `rows` rows."""
    scale = in_features**-0.5
    row_major = [torch.randn(out_features, in_features) * scale for _ in range(args.layers)]  # (out, in)
    weights = {"row-major": row_major, "column-major": [w.t().contiguous().t() for w in row_major]}
    x = torch.randn(rows, in_features)  # (rows, in)
    for layout in LAYOUTS:  # same results, and a warm-up
        torch.testing.assert_close(
            F.linear(x, weights[layout][0]), F.linear(x, row_major[0]), atol=1e-5, rtol=1e-4
        )
    samples: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.rounds):
        for layout in LAYOUTS:
            chosen = weights[layout]
            start = time.perf_counter()
            for call in range(args.calls):
                F.linear(x, chosen[call % len(chosen)])
            samples[layout].append((time.perf_counter() - start) / args.calls * 1e6)
    return {layout: statistics.median(values) for layout, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if refuse_busy_machine(args.max_load, args.force):
        return 1
    report = report_header("linear_layout", argv)
    report.update(cpu=cpu_model(), torch_threads=torch.get_num_threads(), results=[])
    lines = [
        "# float32 linear layers on the CPU: row-major and column-major weights",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}, {report['cpu']}; torch "
        f"threads {report['torch_threads']}; 1-minute load average at start {report['load_average']:.2f}).",
        "",
        f"Median microseconds of one `F.linear` call, cycling through {args.layers} distinct weights. "
        "Speed-up: row-major time / column-major time (above 1: column-major is faster).",
        "",
        "| layer (in -> out) | rows | row-major us | column-major us | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, in_features, out_features in LAYER_SHAPES:
        for rows in args.rows:
            times = time_shape(in_features, out_features, rows, args)
            ratio = times["row-major"] / times["column-major"]
            report["results"].append(
                {"layer": name, "in": in_features, "out": out_features, "rows": rows, "us": times}
            )
            lines.append(
                f"| {name} ({in_features} -> {out_features}) | {rows} | {times['row-major']:.0f} | "
                f"{times['column-major']:.0f} | {ratio:.2f}x |"
            )
    markdown = "\n".join(lines) + "\n"
    if args.no_write:
        print(markdown)
    else:
        write_report(args.out_dir, "linear_layout", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
