"""``trainer-ext predict``: classify texts with a trained run (local directory or Hub repo).

    python scripts/predict.py --model runs/moderation-lora-all --input tweets.csv --output preds.csv
    echo "have a lovely day" | python scripts/predict.py --model runs/moderation-lora-all

The run directory alone gives everything: base model, adapter, labels and prompt template. The input is a
CSV / JSON Lines / Parquet file (``--text-column``, default ``text``) or, without ``--input``, one text per
line on standard input. The output CSV has the text, the predicted label (empty when a generated answer is
not a label) and one probability column per label (constrained decoding).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer-ext predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="Run directory or Hub repo id (user/name) of a trained run."
    )
    parser.add_argument("--revision", help="Hub branch, tag or commit to pin.")
    parser.add_argument(
        "--input", help="CSV, JSON Lines or Parquet file; default: one text per line on stdin."
    )
    parser.add_argument(
        "--text-column", default="text", help="Column of the texts in --input (default: text)."
    )
    parser.add_argument("--output", help="Output CSV; default: standard output.")
    parser.add_argument("--decoding", choices=("constrained", "generate"), default="constrained")
    parser.add_argument(
        "--calibrate", action="store_true", help="Contextual calibration of label probabilities."
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--quantization", choices=("8bit", "4bit", "none"), help="Override the run's quantization."
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available).")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="Accept pickled .bin weights (trusted sources)."
    )
    return parser


def read_texts(args: argparse.Namespace) -> list[str]:
    """Texts from --input (through `load_examples`, which names bad rows) or from stdin lines."""
    if args.input is None:
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    from trainer_ext.data import load_examples

    return [ex.text for ex in load_examples(args.input, text_column=args.text_column, labels=None)]


def write_predictions(predictions, labels: list[str], output: str | None) -> None:
    with contextlib.ExitStack() as stack:
        handle = (
            stack.enter_context(open(output, "w", newline="", encoding="utf-8")) if output else sys.stdout
        )
        writer = csv.writer(handle)
        writer.writerow(["text", "predicted", *[f"prob_{label}" for label in labels]])
        for p in predictions:
            probs = [f"{p.probs[label]:.6f}" for label in labels] if p.probs else [""] * len(labels)
            writer.writerow([p.text, p.label or "", *probs])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trainer-ext predict`` and ``scripts/predict.py``."""
    import logging

    from tqdm.auto import tqdm

    from trainer_ext.classifier import Classifier
    from trainer_ext.data import DataError
    from trainer_ext.loading import ModelLoadError
    from trainer_ext.saving import RunDirError

    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        hub_errors: tuple[type[Exception], ...] = ()
        if not Path(args.model).is_dir():
            from trainer_ext.hub import HubError

            hub_errors = (HubError,)
        texts = read_texts(args)
        clf = Classifier.from_pretrained(
            args.model,
            revision=args.revision,
            quantization=args.quantization,
            device=args.device,
            allow_pickle=args.allow_pickle,
        )
        with tqdm(total=len(texts), desc="Predicting", file=sys.stderr, disable=len(texts) < 2) as bar:
            predictions = clf.predict(
                texts,
                decoding=args.decoding,
                batch_size=args.batch_size,
                calibrate=args.calibrate,
                on_batch=bar.update,
            )
        write_predictions(predictions, clf.task.labels, args.output)
    except (DataError, ModelLoadError, RunDirError, FileNotFoundError, *hub_errors) as error:
        print(f"trainer-ext predict: {error}", file=sys.stderr)
        return 2
    if args.output:
        print(f"Wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
