"""``trainer-ext predict``: classify texts with a trained run, or with a base model and a label set.

    trainer-ext predict --model runs/moderation-lora-all --input tweets.csv --output preds.csv
    trainer-ext predict --model runs/moderation-lora-all "have a lovely day" "shut up already"
    echo "have a lovely day" | trainer-ext predict --model runs/moderation-lora-all
    trainer-ext predict --model smollm2-135m --labels "sport, politics, tech" "Rain stops play at Lord's"

A run directory (or the Hub repo it was pushed to) gives everything: base model, adapter, labels, prompt
template, and the dtype it was evaluated in. A base model with `--labels` classifies zero-shot. Texts come
as arguments, from `--input` (CSV, TSV, JSON Lines, Parquet; `--text_column`) or one per line on stdin.

The output CSV (`--output`, else stdout) has the row, the text, the predicted label (empty when a
generated answer is not a label), whether the text was shortened to fit, and one probability column per
label (constrained decoding). Rows are written batch by batch as they are predicted; `--resume` continues
an output file that an interrupted run left.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, fields

logger = logging.getLogger("trainer_ext.predict")
#: The values a switch may take on the command line (as `HfArgumentParser` reads them).
BOOLEAN_WORDS = ("true", "false", "yes", "no", "t", "f", "y", "n", "1", "0")


@dataclass
class PredictArguments:
    """The keys of `trainer-ext predict` (texts given as arguments come after them)."""

    model: str = field(
        metadata={"help": "Run directory or Hub repo of a trained run; or a base model with --labels."}
    )
    labels: str | None = field(
        default=None,
        metadata={"help": "Labels for a base model (zero-shot), comma-separated: 'sport, politics, tech'."},
    )
    input: str | None = field(
        default=None,
        metadata={"help": "CSV, TSV, JSON Lines or Parquet file; default: the texts given, or stdin."},
    )
    text_column: str = field(default="text", metadata={"help": "Column of the texts in --input."})
    output: str | None = field(default=None, metadata={"help": "Output CSV; default: standard output."})
    resume: bool = field(
        default=False, metadata={"help": "Continue --output where an interrupted run stopped (same input)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --output file."})
    on_bad_row: str = field(
        default="skip", metadata={"help": "Empty or unreadable rows: skip (counted and logged) or error."}
    )
    decoding: str = field(
        default="constrained",
        metadata={"help": "constrained (label probabilities, never invalid) or generate (greedy answer)."},
    )
    calibrate: bool = field(
        default=False, metadata={"help": "Contextual calibration of the label probabilities (constrained)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Texts per forward pass."})
    max_length: int | None = field(
        default=None, metadata={"help": "Token budget of prompt + label; unset: the run's."}
    )
    truncation_side: str | None = field(
        default=None,
        metadata={
            "help": "What to keep of a text too long for max_length: right cuts the end, left the start, "
            "both the middle; unset: the run's."
        },
    )
    quantization: str | None = field(default=None, metadata={"help": "Override the run's quantization."})
    dtype: str | None = field(
        default=None, metadata={"help": "Override the run's dtype (auto, float32, bfloat16)."}
    )
    merge_adapter: bool = field(
        default=False,
        metadata={
            "help": "Fold the LoRA adapter into the base weights (needs --quantization none): same labels up "
            "to float rounding, faster on a CPU."
        },
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Load this base model instead of the run's (e.g. a moved directory)."}
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: CUDA when available)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit to pin."})
    allow_pickle: bool = field(
        default=False, metadata={"help": "Accept pickled .bin weights (trusted sources)."}
    )


def parse(argv: list[str]) -> tuple[PredictArguments, list[str]]:
    """The arguments and the texts given on the command line."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        PredictArguments, prog="trainer-ext predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (else --input or stdin)")
    args, extra = parser.parse_args_into_dataclasses(args=_explicit_switches(argv), look_for_args_file=False)
    if args.labels is not None:
        from trainer_ext.tasks import parse_label_list

        args.labels = parse_label_list(args.labels)
    return args, list(extra.texts)


def _explicit_switches(argv: list[str]) -> list[str]:
    """`--calibrate TEXT` means the switch and a text: a switch not followed by true/false gets `true`."""
    switches = {f"--{f.name}" for f in fields(PredictArguments) if f.type in (bool, "bool")}
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1].lower() if i + 1 < len(argv) else ""
        if arg in switches and following not in BOOLEAN_WORDS:
            out.append("true")
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trainer-ext predict`` and ``scripts/predict.py``: 0 when done, 2 on bad input."""
    from trainer_ext.cli.errors import USER_ERRORS
    from trainer_ext.cli.logs import setup_logging
    from trainer_ext.inference.batch import PredictionWriter, check_arguments, load_classifier, read_inputs

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, texts = parse(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    setup_logging(True)
    logging.getLogger().setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    try:
        check_arguments(args, texts)
        rows = read_inputs(args, texts)  # files and stdin are read and checked before the model loads
        writer = PredictionWriter(args.output, resume=args.resume, overwrite=args.overwrite)
        todo = writer.remaining(rows)
        clf = load_classifier(args)
        written = writer.write_all(clf, todo, args)
    except USER_ERRORS as error:
        print(f"trainer-ext predict: {error}", file=sys.stderr)
        return 2
    if args.output:
        logger.info("Wrote %d predictions to %s (%d rows in all).", written, args.output, writer.rows_done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
