"""Transfer of trained moderation runs to label sets they never saw: BBC topics and review sentiment.

    python -m benchmarks.transfer --runs runs/transfer/plain-seed42 runs/transfer/varied-seed42

For each run (and the base model zero-shot, unless ``--no_base``) and each label set, the model gets the
moderation training prompt word for word with the new labels listed (the study's ``instruction`` transfer
prompt) and is scored with constrained decoding, uncalibrated and with contextual calibration:

- `bbc`: a balanced sample of ``--bbc_samples`` BBC headlines, five topics (``../shared/data/bbc``,
  seed 42), as the study samples them;
- `reviews`: the 60 short product and service reviews of ``benchmarks/data/reviews.csv``, positive or
  negative, written for this benchmark (a second label set of another kind, so that a gain is not tuned to
  BBC alone; neither set's labels are in the training distractor pool).

Each run is scored as it was evaluated (its quantization, dtype and autocast). The run's own moderation
scores (accuracy and macro-F1 of its ``metrics.json``) are shown beside them; runs whose names differ only
by a ``-seedN`` suffix also get a row of mean ± standard deviation over their seeds. Writes
``OUT_DIR/transfer.json`` and ``transfer.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, REPO_ROOT, report_header, write_report

REVIEWS = Path(__file__).resolve().parent / "data" / "reviews.csv"
BASE_MODEL = "smollm2-135m"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run directories of moderation training")
    parser.add_argument("--no_base", action="store_true", help="leave out the base model zero-shot")
    parser.add_argument("--bbc_samples", type=int, default=250, help="balanced BBC headlines (50 per topic)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    return parser


def label_sets(bbc_samples: int) -> dict[str, list[Any]]:
    """The labelled examples of each label set (see the module docstring)."""
    from trainer_ext.data import balanced_sample, load_examples

    bbc = load_examples(DATA_DIR / "bbc" / "bbc_headlines.csv", "title", "category", decode_html=True)
    return {"bbc": balanced_sample(bbc, bbc_samples, 42), "reviews": load_examples(REVIEWS)}


def score(name: str, classifier, sets: dict[str, list[Any]], batch_size: int) -> list[dict[str, Any]]:
    """Uncalibrated and calibrated constrained scores of `classifier`'s model on every label set."""
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.study.scoring import score_classifier
    from trainer_ext.study.settings import transfer_template
    from trainer_ext.tasks import LabelTask

    rows = []
    for set_name, examples in sets.items():
        labels = sorted({example.label for example in examples})
        task = LabelTask(labels, template=transfer_template("instruction"))
        topical = Classifier(
            classifier.model, classifier.tokenizer, task, classifier.base_model, autocast=classifier.autocast
        )
        scores = score_classifier(topical, examples, ["constrained"], batch_size, f"{name}, {set_name}")
        rows.append({
            "model": name, "label_set": set_name, "samples": len(examples), "labels": labels,
            "uncalibrated": scores["constrained"], "calibrated": scores["calibrated"],
        })  # fmt: skip
    return rows


def run_scores(run: Path) -> dict[str, Any]:
    """The run's own moderation scores and its training prompt variation."""
    metrics = json.loads((run / "metrics.json").read_text())
    task = json.loads((run / "task.json").read_text())
    return {
        "eval_accuracy": metrics.get("eval_accuracy"),
        "eval_macro_f1": metrics.get("eval_macro_f1"),
        "training_variation": task.get("training_variation") or {},
    }


def seed_table(report: dict[str, Any]) -> list[str]:
    """Mean ± standard deviation of the runs that differ only by their ``-seedN`` suffix (two or more)."""
    from trainer_ext.study.scoring import mean_std

    groups: dict[str, list[str]] = {}
    for model in report["models"]:
        if model.get("moderation"):
            groups.setdefault(re.sub(r"-seed\d+$", "", model["name"]), []).append(model["name"])
    lines = []
    for group, names in groups.items():
        if len(names) < 2:
            continue
        models = [m for m in report["models"] if m["name"] in names]
        rows = [r for r in report["results"] if r["model"] in names]
        cells = [mean_std([m["moderation"]["eval_accuracy"] for m in models])]
        cells += [
            mean_std([r[kind]["accuracy"] for r in rows if r["label_set"] == label_set])
            for label_set in ("bbc", "reviews")
            for kind in ("uncalibrated", "calibrated")
        ]
        if not lines:
            lines = [
                "",
                "Over seeds (mean ± standard deviation):",
                "",
                "| runs | seeds | moderation acc. | BBC uncal. | BBC calib. | reviews uncal. "
                "| reviews calib. |",
                "|---|---:|---|---|---|---|---|",
            ]
        text = [f"{mean:.3f} ± {std:.3f}" for mean, std in cells]
        lines.append(f"| {group}-seed* | {len(names)} | " + " | ".join(text) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Transfer to unseen label sets",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}).",
        "",
        "The moderation training prompt with the new labels listed; constrained decoding; accuracy "
        "(uncalibrated / contextual calibration). Chance: 0.20 on BBC (5 topics), 0.50 on reviews.",
        "",
        "| model | moderation acc. / macro-F1 | BBC uncal. | BBC calib. | reviews uncal. | reviews calib. |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model in report["models"]:
        by_set = {row["label_set"]: row for row in report["results"] if row["model"] == model["name"]}
        own = model.get("moderation")
        moderation = f"{own['eval_accuracy']:.3f} / {own['eval_macro_f1']:.3f}" if own else "-"
        cells = [
            f"{by_set[s][kind]['accuracy']:.3f}"
            for s in ("bbc", "reviews")
            for kind in ("uncalibrated", "calibrated")
        ]
        lines.append(f"| {model['name']} | {moderation} | " + " | ".join(cells) + " |")
    lines += seed_table(report)
    lines += ["", "Training prompt variation of each run:", ""]
    lines += [f"- {m['name']}: {m['moderation']['training_variation'] or 'none'}" for m in report["models"]
              if m.get("moderation")]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.tasks import LabelTask

    args = make_parser().parse_args(argv)
    runs = [Path(run) for run in args.runs]
    missing = [str(run) for run in runs if not (run / "metrics.json").is_file()]
    if missing:
        print(f"error: not finished run directories (no metrics.json): {missing}", file=sys.stderr)
        return 2
    sets = label_sets(args.bbc_samples)
    report: dict[str, Any] = {**report_header("transfer", argv), "models": [], "results": []}
    if not args.no_base:
        base = Classifier.from_base(BASE_MODEL, LabelTask(["a", "b"]))
        report["models"].append({"name": f"{BASE_MODEL} (base, zero-shot)"})
        report["results"] += score(report["models"][-1]["name"], base, sets, args.batch_size)
        del base
    for run in runs:
        classifier = Classifier.from_pretrained(run)
        report["models"].append({"name": str(run), "moderation": run_scores(run)})
        report["results"] += score(str(run), classifier, sets, args.batch_size)
    write_report(args.out_dir, "transfer", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
