"""Label decoding on label sets of several tokens: constrained scoring against greedy generation.

    python -m benchmarks.label_sets                           # the base model, zero-shot, 100 headlines a set
    python -m benchmarks.label_sets --run runs/moderation-lora-all --samples 60

With one-token labels both decodings cost one prompt pass. Here every label set has labels of several
tokens, where generation needs one step per token and constrained scoring one extra pass over the label
tokens. On the same BBC headlines (`../shared/data/bbc/bbc_headlines.csv`, a seeded sample, the same for
every mode) and the same model with the instruction prompt that names the labels:

- `bbc`: the five BBC categories as they are (business, entertainment, politics, sport, tech);
- `bbc-described`: the same five as longer names ("business and economy", "science and technology", ...);
- `ag-news-style`: the four AG News topic names (World, Sports, Business, Sci/Tech) on the BBC headlines
  of the four categories that match them (politics counted as World; entertainment left out).

Modes: `constrained` (`Classifier.predict`, label probabilities), `generate` (batched greedy generation
parsed to a label, `Classifier.predict(decoding="generate")`) and the plain one-prompt-at-a-time
`model.generate` loop a user writes first. Texts/s is over the wall time of each mode after a warm-up;
accuracy counts an answer that is not a label as wrong. Writes `OUT_DIR/label_sets.json` and `.md`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from benchmarks.common import DATA_DIR, REPO_ROOT, refuse_busy_machine, report_header, write_report

LABEL_SETS: dict[str, dict[str, str]] = {  # category -> label
    "bbc": {c: c for c in ("business", "entertainment", "politics", "sport", "tech")},
    "bbc-described": {
        "business": "business and economy",
        "entertainment": "arts and entertainment",
        "politics": "politics and government",
        "sport": "sport",
        "tech": "science and technology",
    },
    "ag-news-style": {"politics": "World", "sport": "Sports", "business": "Business", "tech": "Sci/Tech"},
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a trained run directory (default: the base model, zero-shot)")
    parser.add_argument("--base_model", default="smollm2-135m")
    parser.add_argument("--quantization", default="8bit")
    parser.add_argument("--sets", nargs="+", default=list(LABEL_SETS), choices=list(LABEL_SETS))
    parser.add_argument("--samples", type=int, default=100, help="headlines per label set")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_load", type=float, default=1.5)
    parser.add_argument("--force", action="store_true", help="run on a busy machine anyway")
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    return parser


def headlines(mapping: dict[str, str], samples: int, seed: int) -> list[tuple[str, str]]:
    """A seeded sample of `(headline, label)` over the categories of `mapping`, about as many of each."""
    import csv

    with (DATA_DIR / "bbc" / "bbc_headlines.csv").open(encoding="utf-8", newline="") as handle:
        rows = [(row["title"], mapping[row["category"]]) for row in csv.DictReader(handle)
                if row["category"] in mapping]  # fmt: skip
    rng = random.Random(seed)
    per_label = -(-samples // len(mapping))
    chosen = []
    for label in mapping.values():
        mine = [row for row in rows if row[1] == label]
        chosen += rng.sample(mine, min(per_label, len(mine)))
    rng.shuffle(chosen)
    return chosen[:samples]


def _timed(decode, texts: list[str]) -> tuple[list[str | None], float]:
    decode(texts[:4])  # warm-up
    started = time.perf_counter()
    labels = decode(texts)
    return labels, time.perf_counter() - started


def measure(clf, name: str, samples: int, batch_size: int, seed: int) -> dict[str, Any]:
    """Texts/s and accuracy of each decoding mode on one label set."""
    from benchmarks.decoding import plain_generate_labels
    from trainer_ext.training.tokenization import label_token_ids

    mapping = LABEL_SETS[name]
    labels = list(dict.fromkeys(mapping.values()))
    task_clf = clf.with_labels(labels)
    rows = headlines(mapping, samples, seed)
    texts, gold = [text for text, _ in rows], [label for _, label in rows]
    lengths = {label: len(ids) for label, ids in label_token_ids(task_clf.tokenizer, task_clf.task).items()}
    modes = {
        "constrained": lambda t: [p.label for p in task_clf.predict(t, batch_size=batch_size)],
        "generate": lambda t: [p.label for p in task_clf.predict(t, "generate", batch_size=batch_size)],
        "plain_generate_loop": lambda t: plain_generate_labels(
            task_clf.model, task_clf.tokenizer, task_clf.task, t, max(lengths.values())
        ),
    }
    result: dict[str, Any] = {"label_set": name, "labels": labels, "tokens_with_eos": lengths,
                              "samples": len(texts), "modes": {}}  # fmt: skip
    with task_clf._compute():
        for mode, decode in modes.items():
            predicted, seconds = _timed(decode, texts)
            result["modes"][mode] = {
                "texts_per_s": round(len(texts) / seconds, 2),
                "accuracy": round(sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold), 3),
                "invalid": sum(p is None for p in predicted),
            }
    modes_out = result["modes"]
    result["constrained_over_generate"] = round(
        modes_out["constrained"]["texts_per_s"] / modes_out["generate"]["texts_per_s"], 2
    )
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Label decoding on label sets of several tokens",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}; 1-minute load average "
        f"at start {report['load_average']:.2f})."
        f" Model: {report['model']}; batch size {report['batch_size']}.",
        "",
        "| label set | tokens per label (with EOS) | mode | texts/s | accuracy | invalid |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        tokens = ", ".join(f"{label} {n}" for label, n in r["tokens_with_eos"].items())
        for mode, m in r["modes"].items():
            lines.append(
                f"| {r['label_set']} ({r['samples']} headlines) | {tokens} | {mode} | {m['texts_per_s']} | "
                f"{m['accuracy']:.3f} | {m['invalid']} |"
            )
    lines += ["", "Constrained scoring's texts/s over batched generation's: " + ", ".join(
        f"{r['label_set']} {r['constrained_over_generate']}x" for r in report["results"]) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.tasks import LabelTask

    args = make_parser().parse_args(argv)
    if refuse_busy_machine(args.max_load, args.force):
        return 2
    header = report_header("label_sets", argv)  # the load before this benchmark loads anything
    if args.run:
        clf, model = Classifier.from_pretrained(args.run), f"trained run {args.run}"
    else:
        clf = Classifier.from_base(args.base_model, LabelTask(["a", "b"]), quantization=args.quantization)
        model = f"{args.base_model} ({args.quantization}), zero-shot"
    report: dict[str, Any] = {
        **header,
        "model": model,
        "batch_size": args.batch_size,
        "results": [measure(clf, name, args.samples, args.batch_size, args.seed) for name in args.sets],
    }
    write_report(args.out_dir, "label_sets", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
