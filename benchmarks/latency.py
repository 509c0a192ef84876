"""Prediction latency of a trained run: one message per call (as the Space calls it) and batches.

    python -m benchmarks.latency                                   # runs/moderation-lora-all, every setting
    python -m benchmarks.latency --run runs/imbalanced/plain-seed42 --messages 60

For each weight setting (`8bit`: the run's 8-bit base weights as it was evaluated, with bf16 autocast where
it trained with it; `8bit-fp32`, `8bit-bf16`: the same int8 weights computing in fp32 or bf16; `bf16`,
`fp32`: the unquantized model in that dtype; `fp32-merged`, `bf16-merged`: the same with the LoRA adapter
merged into the base weights (bf16 is the faster of the two on a CPU with native bf16: AVX-512 BF16 or AMX);
`fp32-merged-dynamic-int8` and `-per-channel`: that model through PyTorch's dynamic int8 quantization, not a
library option) it times, on the same tweets of the study's eval split:

- `forward`: one bare forward pass of each message's whole prompt through the same PEFT model (no cache,
  last position's logits only): the anchor, what "one forward pass" costs;
- `predict, no kept cache`: `Classifier.predict(text)` with the scorer's kept state cleared before every
  call, so the template's KV cache and the label ids are recomputed each time (what every call cost before
  the scorer kept them);
- `predict`: `Classifier.predict(text)` as users call it, the template's KV cache kept across calls;
- `batch`: `Classifier.predict(texts, batch_size=16)` over all messages at once, in texts/s, the share
  of its labels equal to those of the first setting measured (a dtype changes the probabilities a little),
  and their accuracy against the tweets' gold labels.

With `--profile`, each setting also runs `predict` one message at a time and in batches under
`torch.profiler` and splits their operator time into matrix products (`aten::mm`, `addmm`, `bmm`, with the
rate they reach in GFLOP/s from the profiler's FLOP counts), attention and everything else, per text; and
the report gives this machine's float32 matrix-product rate at the model's MLP shape as the roofline. The
profiler adds a few microseconds per operator, so these times are a little above the unprofiled ones.

Latencies are per call, in milliseconds, after two untimed warm-up calls. Timings are only worth something
on a quiet machine: the run is refused above a 1-minute load average of ``--max_load`` unless ``--force``.
Writes `OUT_DIR/latency.json` and `latency.md`. The Space's latency through its HTTP API is measured by
`python -m benchmarks.space --clients 1`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    count_type,
    eval_split_examples,
    refuse_busy_machine,
    refuse_missing_run,
    report_header,
    write_report,
)

SETTINGS = {
    "8bit": {},  # as the run was evaluated: int8 base weights, its dtype and autocast
    "8bit-fp32": {"dtype": "float32"},  # int8 base weights, fp32 compute
    "8bit-bf16": {"dtype": "bfloat16"},  # int8 base weights, bf16 compute (dtype auto's choice with AVX-512)
    "bf16": {"quantization": "none", "dtype": "bfloat16"},
    "fp32": {"quantization": "none", "dtype": "float32"},
    "fp32-merged": {"quantization": "none", "dtype": "float32", "merge_adapter": True},
    "bf16-merged": {"quantization": "none", "dtype": "bfloat16", "merge_adapter": True},
}
# Not library options: measured to show what PyTorch's dynamic int8 quantization of the merged float32 model
# would give (`torch.ao.quantization.quantize_dynamic`, fbgemm kernels: int8 weights, activations quantized
# per tensor at every call; deprecated in torch 2.13 in favour of torchao). Weights per tensor or per output
# channel.
DYNAMIC_INT8 = {
    "fp32-merged-dynamic-int8": "per-tensor",
    "fp32-merged-dynamic-int8-per-channel": "per-channel",
}
for _name in DYNAMIC_INT8:
    SETTINGS[_name] = SETTINGS["fp32-merged"]


def quantize_dynamic_int8(model, weights: str) -> None:
    """Swaps every `nn.Linear` of `model` for PyTorch's dynamically quantized int8 linear layer, in place."""
    import warnings

    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if weights == "per-channel" else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notices
        quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(REPO_ROOT / "runs" / "moderation-lora-all"), help="a run dir")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--messages", type=count_type(3), default=60, help="tweets timed one per call, 3-200")
    parser.add_argument("--batch_texts", type=count_type(3), default=200, help="tweets of the batch timing")
    parser.add_argument(
        "--profile", action="store_true", help="split operator time: matrix products, attention, the rest"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--max_load", type=float, default=1.5)
    parser.add_argument("--force", action="store_true", help="run on a busy machine anyway")
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    return parser


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int8pack_mm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",)


def operator_split(call, items, texts: int) -> dict[str, float]:
    """Profiled operator time of `call(item)` over `items`, in ms per text, split into matrix products,
    attention and the rest, with the matrix products' rate in GFLOP/s (`texts`: all items' texts)."""
    from torch.profiler import ProfilerActivity, profile

    call(items[0])  # warm-up
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for item in items:
            call(item)
    events = prof.key_averages()
    matmul_us = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    attention_us = sum(e.self_cpu_time_total for e in events if e.key in ATTENTION_OPS)
    total_us = sum(e.self_cpu_time_total for e in events)
    flops = sum(e.flops for e in events if e.key in MATMUL_OPS)
    return {
        "matmul_ms": matmul_us / 1000 / texts,
        "attention_ms": attention_us / 1000 / texts,
        "other_ms": (total_us - matmul_us - attention_us) / 1000 / texts,
        "matmul_gflop_per_text": flops / 1e9 / texts,
        "matmul_gflops": flops / (matmul_us * 1e3) if matmul_us else None,
    }


def gemm_rate(rows: int = 512, inner: int = 576, cols: int = 1536, repeats: int = 50) -> float:
    """This machine's float32 matrix-product rate in GFLOP/s at one shape (default: an MLP projection of
    SmolLM2-135M over a batch's 512 token rows), the best of `repeats` timed products."""
    import torch

    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return round(2 * rows * inner * cols / best / 1e9, 1)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def _timed(call, items) -> list[float]:
    for item in items[:2]:  # warm-up
        call(item)
    seconds = []
    for item in items:
        started = time.perf_counter()
        call(item)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(
    run: str,
    setting: str,
    texts: list[str],
    batch_texts: list[str],
    reference=None,
    batch_gold=None,
    profile: bool = False,
) -> dict[str, Any]:
    """Latencies and batch throughput of one weight setting (see the module docstring)."""
    import torch

    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.modeling.positions import last_position

    clf = Classifier.from_pretrained(run, **SETTINGS[setting])
    if setting in DYNAMIC_INT8:
        quantize_dynamic_int8(clf.model, DYNAMIC_INT8[setting])
    prompts = clf.prompts(texts)

    @torch.no_grad()
    def forward(ids: list[int]) -> None:
        with clf._compute():
            ids = torch.tensor([ids])  # (1, S)
            clf.model(input_ids=ids, logits_to_keep=last_position(ids))

    def uncached(text: str) -> None:
        clf.scorer().clear()
        clf.predict(text)

    result: dict[str, Any] = {
        "setting": setting,
        "autocast": clf.autocast,
        "dtype": str(next(clf.model.parameters()).dtype).removeprefix("torch."),
        "prompt_tokens_mean": round(statistics.fmean(len(p) for p in prompts), 1),
        "template_prefix_tokens": len(clf.scorer().prefix_ids),
        "forward": _percentiles(_timed(forward, prompts)),
        "predict, no kept cache": _percentiles(_timed(uncached, texts)),
        "predict": _percentiles(_timed(clf.predict, texts)),
    }
    cached = [clf.predict(text)[0].probs for text in texts[:5]]
    clf.scorer().clear()
    fresh = [clf.predict(text)[0].probs for text in texts[:5]]
    result["cached_equals_uncached"] = cached == fresh
    clf.predict(batch_texts[:16], batch_size=16)  # warm-up
    started = time.perf_counter()
    labels = [p.label for p in clf.predict(batch_texts, batch_size=16)]
    result["batch_texts_per_s"] = round(len(batch_texts) / (time.perf_counter() - started), 1)
    result["labels"] = labels
    if batch_gold:
        result["batch_accuracy"] = round(
            sum(a == b for a, b in zip(labels, batch_gold, strict=True)) / len(labels), 3
        )
    if profile:
        batch_of_16 = lambda many: clf.predict(many, batch_size=16)  # noqa: E731
        result["profile"] = {  # the batch call as timed above: batches of similar length, less padding
            "predict": operator_split(clf.predict, texts, len(texts)),
            "batch": operator_split(batch_of_16, [batch_texts], len(batch_texts)),
        }
    reference = reference or labels
    result["label_agreement"] = round(
        sum(a == b for a, b in zip(labels, reference, strict=True)) / len(labels), 3
    )
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Prediction latency",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}; torch threads "
        f"{report['threads']}; 1-minute load average at start {report['load_average']:.2f}).",
        "",
        f"Run `{report['run']}`; {report['messages']} tweets of the study's eval split, one per call "
        f"(latency in ms), and {report['batch_texts']} at once with batch size 16.",
        "",
        "| weights | prompt tokens (template prefix) | forward p50 | predict, no kept cache p50 | "
        "predict p50 | predict p90 | batch texts/s | kept cache = fresh | labels as the first row | "
        "batch accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['setting']} | {r['prompt_tokens_mean']} ({r['template_prefix_tokens']}) | "
            f"{r['forward']['p50_ms']} | {r['predict, no kept cache']['p50_ms']} | "
            f"{r['predict']['p50_ms']} | "
            f"{r['predict']['p90_ms']} | {r['batch_texts_per_s']} | {r['cached_equals_uncached']} | "
            f"{r['label_agreement']:.3f} | {r.get('batch_accuracy', '')} |"
        )
    profiled = [r for r in report["results"] if "profile" in r]
    if profiled:
        lines += [
            "",
            f"Operator time under `torch.profiler`, ms per text; this machine's float32 matrix-product rate "
            f"at 512 x 576 x 1536: {report['gemm_gflops']} GFLOP/s.",
            "",
            "| weights | call | matrix products | their GFLOP per text | their GFLOP/s | attention | other |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in profiled:
            for call in ("predict", "batch"):
                p, name = r["profile"][call], "predict" if call == "predict" else "batch of 16"
                lines.append(
                    f"| {r['setting']} | {name} | {p['matmul_ms']:.1f} | "
                    f"{p['matmul_gflop_per_text']:.2f} | {p['matmul_gflops'] or 0:.1f} | "
                    f"{p['attention_ms']:.1f} | {p['other_ms']:.1f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import torch

    args = make_parser().parse_args(argv)
    if refuse_busy_machine(args.max_load, args.force):
        return 2
    if refuse_missing_run(args.run):
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = eval_split_examples()
    texts = [example.text for example in examples]
    if args.messages > len(texts):
        print(f"error: --messages {args.messages}: the eval split has only {len(texts)} tweets.",
              file=sys.stderr)  # fmt: skip
        return 2
    batch = (texts * (args.batch_texts // len(texts) + 1))[: args.batch_texts]
    gold = [example.label for example in examples]
    batch_gold = (gold * (args.batch_texts // len(gold) + 1))[: args.batch_texts]
    report: dict[str, Any] = {
        **report_header("latency", argv),
        "threads": torch.get_num_threads(),
        "run": args.run,
        "messages": args.messages,
        "batch_texts": len(batch),
        "results": [],
    }
    if args.profile:
        report["gemm_gflops"] = gemm_rate()
    for setting in args.settings:
        first = report["results"][0]["labels"] if report["results"] else None
        report["results"].append(
            measure(args.run, setting, texts[: args.messages], batch, first, batch_gold, args.profile)
        )
    write_report(args.out_dir, "latency", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
