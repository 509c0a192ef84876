"""Imbalanced moderation data: which correction gets the rare class right.

    python -m benchmarks.imbalanced                          # seed 42: ~40 min a setting, 2 CPU cores
    python -m benchmarks.imbalanced --seeds 42 1 2           # three seeds
    python -m benchmarks.imbalanced --settings plain weights # some settings only

Draws a seeded natural-mix sample of the Davidson tweets (`../shared/data/davidson/labeled_data.csv`) that
leaves out every tweet of the reference study's split: 2,000 training and 1,000 test tweets, in the data
set's own class mix (about 6% hate). It writes them under `runs/imbalanced-data/` (outside the
repository's tracked files) and trains the moderation recipe `moderation_imbalanced.yaml` on them, each
setting in its own `trainer-ext train` process:

- `plain`: no class weights, no sampler (the main job's training on this data);
- `weights`: class-weighted loss (`class_weights: balanced`);
- `sampler`: class-balanced sampling with replacement (`train_sampling: balanced`);

each scored on the test tweets with and without the decision offsets fitted on the dev set, against
TF-IDF + logistic regression plain and with `class_weight="balanced"` on the same split. Writes
`docs/benchmarks/imbalanced.md` and `.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, REPO_ROOT

LABELS = ["hate", "offensive", "neutral"]
MAPPING = {"0": "hate", "1": "offensive", "2": "neutral"}
RECIPE = REPO_ROOT / "trainer_ext" / "configs" / "recipes" / "moderation_imbalanced.yaml"
SETTINGS = {
    "plain": ["--class_weights", "none"],
    "weights": ["--class_weights", "balanced"],
    "sampler": ["--class_weights", "none", "--train_sampling", "balanced"],
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="training seeds")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--train_size", type=int, default=2000)
    parser.add_argument("--test_size", type=int, default=1000)
    parser.add_argument("--sample_seed", type=int, default=7, help="seed of the natural-mix sample")
    parser.add_argument("--work_dir", default=str(REPO_ROOT / "runs" / "imbalanced"))
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score a run directory that is complete (metrics.json) instead of training it again",
    )
    return parser


def draw_sample(train_size: int, test_size: int, seed: int, out: Path) -> tuple[Path, Path]:
    """A natural-mix sample of the Davidson tweets outside the study's split, as train.csv and test.csv."""
    import random

    from trainer_ext.data import load_examples

    study = {
        example.text
        for name in ("train.csv", "val.csv")
        for example in load_examples(DATA_DIR / "seed_split" / name, decode_html=True, labels=LABELS)
    }
    every = load_examples(
        DATA_DIR / "davidson" / "labeled_data.csv", "tweet", "class", MAPPING, decode_html=True, labels=LABELS
    )
    pool = [example for example in every if example.text not in study]
    chosen = random.Random(seed).sample(pool, train_size + test_size)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "train.csv", out / "test.csv")
    for path, part in zip(paths, (chosen[:train_size], chosen[train_size:]), strict=True):
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([example.text, example.label] for example in part)
    return paths


def _scores(gold: list[str], predicted: list[str]) -> dict[str, float]:
    from trainer_ext.evaluation.metrics import classification_metrics

    m = classification_metrics(gold, predicted, LABELS)
    return {"macro_f1": m["macro_f1"], "recall_hate": m["recall_hate"], "accuracy": m["accuracy"]}


def train_setting(name: str, seed: int, train: Path, test: Path, work: Path, reuse: bool) -> dict[str, Any]:
    """Train one setting in its own process; score the test set with and without the decision offsets."""
    import torch

    from trainer_ext.inference.decision import apply_decision_bias

    run_dir = work / f"{name}-seed{seed}"
    command = [
        sys.executable, "-m", "trainer_ext.cli.train", "--config", str(RECIPE),
        "--train_file", str(train), "--eval_file", str(test),
        "--text_column", "text", "--label_column", "label",
        "--label_mapping", "{}", "--output_dir", str(run_dir), "--seed", str(seed), "--report_to", "none",
        "--disable_tqdm", "true", *SETTINGS[name],
    ]  # fmt: skip
    started = time.perf_counter()
    code = 0
    trained = not (reuse and (run_dir / "metrics.json").is_file())
    if trained:
        with (work / f"{name}-seed{seed}.log").open("w", encoding="utf-8") as log:
            code = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, check=False
            ).returncode
    if code != 0:
        raise RuntimeError(f"{name} seed {seed} failed (exit {code}); see {work / f'{name}-seed{seed}.log'}")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    bias = json.loads((run_dir / "task.json").read_text(encoding="utf-8")).get("decision_bias") or {}
    # The run's own evaluation of the test file (predictions.csv) has the offsets applied; removing them
    # (the opposite offsets, then renormalising) gives the scores without them.
    with (run_dir / "predictions.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    gold = [row["gold"] for row in rows]
    probs = torch.tensor([[float(row[f"prob_{label}"]) for label in LABELS] for row in rows])  # (N, 3)
    tuned = apply_decision_bias(probs, LABELS, {}).argmax(-1).tolist()
    untuned = apply_decision_bias(probs, LABELS, {k: -v for k, v in bias.items()}).argmax(-1).tolist()
    return {
        "setting": name,
        "seed": seed,
        "train_runtime_s": metrics.get("train_runtime"),
        "wall_s": round(time.perf_counter() - started, 1) if trained else None,  # None: scored a kept run
        "best_checkpoint": json.loads((run_dir / "run.json").read_text())["notes"].get("best_checkpoint"),
        "decision_bias": bias,
        "untuned": _scores(gold, [LABELS[i] for i in untuned]),
        "tuned": _scores(gold, [LABELS[i] for i in tuned]),
    }


def baselines(train: Path, test: Path) -> list[dict[str, Any]]:
    from trainer_ext.data import load_examples
    from trainer_ext.study.baselines import tfidf_logreg

    train_examples = load_examples(train, labels=LABELS)
    test_examples = load_examples(test, labels=LABELS)
    out = []
    for name, weighting in (("tfidf-logreg", None), ("tfidf-logreg balanced", "balanced")):
        result = tfidf_logreg(train_examples, test_examples, LABELS, class_weight=weighting)
        gold = [example.label for example in test_examples]
        out.append({"setting": name, "untuned": _scores(gold, result.predictions)})
    return out


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Imbalanced moderation data",
        "",
        f"Rerun: `{report['command']}` ({report['date']}, {report['machine']}).",
        "",
        "Natural-mix sample of the Davidson tweets outside the study's split: "
        f"{report['train_size']:,} training (of which a tenth is the dev set) and "
        f"{report['test_size']:,} test tweets; test classes "
        f"{report['test_counts']}. Seeds: {report['seeds']}. Scores on the test tweets.",
        "",
        "| setting | decision offsets | macro-F1 | hate recall | accuracy |",
        "|---|---|---:|---:|---:|",
    ]
    for row in report["baselines"]:
        s = row["untuned"]
        lines.append(
            f"| {row['setting']} | - | {s['macro_f1']:.3f} | {s['recall_hate']:.3f} | {s['accuracy']:.3f} |"
        )
    for name in report["settings"]:
        runs = [r for r in report["runs"] if r["setting"] == name]
        if not runs:
            continue
        for key, title in (("untuned", "no"), ("tuned", "fitted on dev")):
            cells = [_mean_std([r[key][m] for r in runs]) for m in ("macro_f1", "recall_hate", "accuracy")]
            lines.append(f"| {name} (SmolLM2-135M, 8-bit, lora-all) | {title} | {' | '.join(cells)} |")
    lines += ["", "Training time per run (s): " + ", ".join(
        f"{r['setting']} seed {r['seed']}: {r['train_runtime_s']:.0f}" for r in report["runs"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import platform
    from collections import Counter

    args = make_parser().parse_args(argv)
    work = Path(args.work_dir)
    train, test = draw_sample(args.train_size, args.test_size, args.sample_seed, work / "data")
    report: dict[str, Any] = {
        "command": "python -m benchmarks.imbalanced " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        "train_size": args.train_size,
        "test_size": args.test_size,
        "seeds": args.seeds,
        "settings": args.settings,
        "test_counts": dict(Counter(row["label"] for row in csv.DictReader(test.open(encoding="utf-8")))),
        "baselines": baselines(train, test),
        "runs": [],
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.settings:
            report["runs"].append(train_setting(name, seed, train, test, work, args.reuse))
            (out / "imbalanced.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            (out / "imbalanced.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
