"""Peak memory and speed of constrained label scoring (`score_labels`) as the label set grows.

A random GPT-2 of the test fixtures' shape (2 layers, width 64) with the full GPT-2 vocabulary (50,257 tokens,
the tokenizer of ``../shared/tokenizers/gpt2``) scores the first texts of ``seed_split/val.csv`` against 3, 15
and 60 labels of 1 to 5 tokens (plus the EOS), at batch 16 and 32, with the shared-prefix cache (the default).
The instruction template lists the labels, so prompts grow with the label set too. Methods:

- **current**: `trainer_ext.inference.scoring.score_labels`.
- **previous**: the label pass as it was before, kept here to measure against: every (prompt, label) row's
  full-vocabulary logits in one tensor, then their float32 log-softmax.

Each case runs in a fresh Python process, which builds the model, scores two prompts untimed (warm-up), then
scores all texts, once or, while the calls take under 2 s in all, up to 5 times. *Extra memory* is the peak
resident set size during those calls (``VmHWM`` of ``/proc/self/status``, reset before them) minus the
resident size before them. The processes fix glibc's ``MALLOC_MMAP_THRESHOLD_`` (128 KiB), so that a freed
tensor leaves the resident set (as in `benchmarks.memory`). *texts/s* is of the fastest call; the share of
the CPUs other processes took meanwhile is reported with it.

    python -m benchmarks.scoring_memory                       # every case, about 2 minutes on 2 cores
    python -m benchmarks.scoring_memory --methods current --batch_sizes 16

Writes ``docs/benchmarks/scoring_memory.md`` and prints it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, REPO_ROOT, TOKENIZERS_DIR, reset_peak_rss, status_kib

METHODS = ("previous", "current")
# Single GPT-2 tokens (with their leading space); label i joins 1 + i % 5 of them.
WORDS = ("red", "green", "blue", "black", "white", "dark", "light", "big", "small", "old", "new", "good")
MALLOC_MMAP_THRESHOLD = 128 * 1024
# Timed calls per case: more while they add up to under MIN_TIMED_SECONDS, at most MAX_CALLS.
MIN_TIMED_SECONDS, MAX_CALLS = 2.0, 5


def make_labels(count: int) -> list[str]:
    """`count` distinct labels of 1 to 5 words, each word one GPT-2 token (at most 60 labels)."""
    return [" ".join(WORDS[(i + 7 * k) % len(WORDS)] for k in range(1 + i % 5)) for i in range(count)]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[3, 15, 60], help="Label set sizes (<= 60).")
    parser.add_argument(
        "--batch_sizes", type=int, nargs="+", default=[16, 32], help="score_labels batch sizes."
    )
    parser.add_argument("--texts", type=int, default=32, help="Texts scored per case.")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="What to measure."
    )
    parser.add_argument(
        "--output",
        default=str(REPO_ROOT / "docs" / "benchmarks" / "scoring_memory.md"),
        help="Markdown table.",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one case, as JSON, in a fresh process
    return parser


def previous_score_labels(model, tokenizer, task, prompts, batch_size: int) -> list[str]:
    """The previous method: `score_labels` with the label pass it had before (see `_previous_score_batch`)."""
    import torch

    from trainer_ext.inference import scoring
    from trainer_ext.training.tokenization import label_token_ids

    device = next(model.parameters()).device
    completions = label_token_ids(tokenizer, task)
    grid, grid_mask = scoring._label_grid(
        [completions[lb] for lb in task.labels], tokenizer.pad_token_id, device
    )
    logp = torch.empty((len(prompts), len(task.labels)), dtype=torch.float32)
    shared = scoring.shared_prefix_length(prompts)
    prefix = (shared, scoring._prefix_cache(model, prompts[0][:shared], device)) if shared else None
    for batch in scoring._batches(prompts, batch_size):
        batch_prompts = [prompts[i] for i in batch]
        logp[batch] = _previous_score_batch(
            model, batch_prompts, grid, grid_mask, tokenizer.pad_token_id, prefix
        )
    return [task.labels[i] for i in logp.argmax(-1).tolist()]


def _previous_score_batch(model, prompts, grid, grid_mask, pad_id, prefix):
    """`(B, L)` sequence log-probabilities, every label's logits at once: `(B*L, C-1, V)` and a float copy."""
    import torch

    from trainer_ext.inference import scoring

    with torch.no_grad():
        ids, mask, positions, cache = scoring._batch_inputs(prompts, pad_id, grid.device, prefix)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        scores = out.logits[:, -1].float().log_softmax(-1)[:, grid[:, 0]]  # (B, L)
        n_prompts, n_labels = ids.shape[0], grid.shape[0]
        cache = out.past_key_values
        cache.batch_repeat_interleave(n_labels)
        feed = grid[:, :-1].repeat(n_prompts, 1)  # (B*L, C-1)
        attention = torch.cat(
            [mask.repeat_interleave(n_labels, 0), grid_mask[:, :-1].repeat(n_prompts, 1)], 1
        )
        start = positions[:, -1:].repeat_interleave(n_labels, 0) + 1
        out = model(
            input_ids=feed,
            attention_mask=attention,
            position_ids=start + torch.arange(feed.shape[1], device=feed.device),
            past_key_values=cache,
            use_cache=False,
        )
        logp = out.logits.float().log_softmax(-1)  # (B*L, C-1, V)
        targets = grid[:, 1:].repeat(n_prompts, 1)  # (B*L, C-1)
        token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B*L, C-1)
        token_logp = token_logp * grid_mask[:, 1:].repeat(n_prompts, 1)
        return scores + token_logp.sum(-1).view(n_prompts, n_labels)


def _texts(count: int) -> list[str]:
    with (DATA_DIR / "seed_split" / "val.csv").open(encoding="utf-8", newline="") as handle:
        return [row["text"] for row in itertools.islice(csv.DictReader(handle), count)]


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one case in this process: the extra peak RSS and the speed of scoring all texts."""
    import gc

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from benchmarks.training import cpu_snapshot, others_cpu_share
    from trainer_ext.inference.scoring import score_labels
    from trainer_ext.modeling.loading import load_tokenizer
    from trainer_ext.tasks import LabelTask
    from trainer_ext.training.tokenization import encode_prompt, label_token_ids

    tokenizer = load_tokenizer(str(TOKENIZERS_DIR / "gpt2"))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=64, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(config).eval()
    task = LabelTask(make_labels(spec["labels"]))
    prompts = [encode_prompt(tokenizer, task, text, max_length=1024) for text in _texts(spec["texts"])]
    score = score_labels if spec["method"] == "current" else previous_score_labels
    score(model, tokenizer, task, prompts[:2], spec["batch_size"])  # warm-up
    gc.collect()
    reset_peak_rss()
    before = status_kib("VmRSS")
    seconds, first = [], cpu_snapshot()
    while not seconds or (sum(seconds) < MIN_TIMED_SECONDS and len(seconds) < MAX_CALLS):
        start = cpu_snapshot()
        score(model, tokenizer, task, prompts, spec["batch_size"])
        seconds.append(cpu_snapshot()[0] - start[0])
    return {
        **spec,
        "extra_mb": (status_kib("VmHWM") - before) * 1024 / 1e6,
        "texts_per_second": len(prompts) / min(seconds),
        "others_cpu_share": others_cpu_share(first, cpu_snapshot()),
        "label_tokens": max(len(ids) for ids in label_token_ids(tokenizer, task).values()) - 1,
        "prompt_tokens": max(len(p) for p in prompts),
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scoring_memory", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec}: worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(results: dict, key: tuple, field: str, digits: int) -> str:
    return f"{results[key][field]:.{digits}f}" if key in results else "-"


def markdown(results: dict[tuple, dict], args, command: str, load: float) -> str:
    """The report: a table of one row per (labels, batch size), the methods side by side."""
    rows = [
        "| labels | label tokens | prompt tokens | batch | extra MB, previous | extra MB, current "
        "| current / 3 labels | texts/s, previous | texts/s, current | others' CPU share |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch_sizes:
        for count in args.labels:
            case = {m: results.get((m, count, batch)) for m in args.methods}
            first = next(r for r in case.values() if r)
            base = results.get(("current", min(args.labels), batch))
            current = case.get("current")
            ratio = f"{current['extra_mb'] / base['extra_mb']:.1f}x" if current and base else "-"
            share = max(r["others_cpu_share"] or 0 for r in case.values() if r)
            rows.append(
                f"| {count} | {first['label_tokens']} + EOS | {first['prompt_tokens']} | {batch} "
                f"| {_cell(results, ('previous', count, batch), 'extra_mb', 0)} "
                f"| {_cell(results, ('current', count, batch), 'extra_mb', 0)} | {ratio} "
                f"| {_cell(results, ('previous', count, batch), 'texts_per_second', 1)} "
                f"| {_cell(results, ('current', count, batch), 'texts_per_second', 1)} | {share:.2f} |"
            )
    versions = ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers"))
    return "\n".join(
        [
            "# Constrained scoring: memory as the label set grows",
            "",
            f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs, "
            f"1-minute load average {load:.2f} at the start; {versions}. Random GPT-2 (2 layers, width 64, "
            f"vocabulary 50,257), {args.texts} texts of `seed_split/val.csv`, shared-prefix cache on. "
            "*Extra MB*: peak RSS of `score_labels` calls minus the RSS before them (10^6 bytes), each "
            "case in a fresh process; *previous*: every label's full-vocabulary logits at once; *current*: "
            "the chunked label pass. "
            "*label tokens*: the longest label; *prompt tokens*: the longest prompt (the template lists "
            "the labels). *texts/s*: the fastest call. *others' CPU share*: the machine's CPU time other "
            "processes took during the calls (the load average lags behind it).",
            "",
            *rows,
            "",
            "Rerun:",
            "",
            "```",
            command,
            "```",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if max(args.labels) > 60:
        raise SystemExit(f"--labels: at most 60 labels, got {max(args.labels)}.")
    load = os.getloadavg()[0]
    results = {}
    for batch in args.batch_sizes:
        for count in args.labels:
            for method in args.methods:
                spec = {"method": method, "labels": count, "batch_size": batch, "texts": args.texts}
                results[(method, count, batch)] = measure(spec)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.scoring_memory", *given])
    report = markdown(results, args, command, load)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
