"""Prediction over many texts, as `trainer-ext predict` runs it: inputs read and checked before the model
loads, rows written batch by batch as they are predicted, and an interrupted output file resumed.

Row numbers in the output are those of the input (the file's rows, the arguments' or stdin's lines,
counting from 1), so skipped rows leave gaps a user can find.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_ext.vocabulary import DECODINGS, DTYPE_NAMES, QUANTIZATIONS, TRUNCATION_SIDES, choice_error

logger = logging.getLogger(__name__)

FIXED_COLUMNS = ("row", "text", "predicted", "truncated")
MAX_LISTED_ROWS = 20


class PredictError(ValueError):
    """An argument, input or output file that `predict` cannot use; the message says what to do."""


@dataclass(frozen=True)
class InputRow:
    """One text to classify and where it came from (`row`: its number in the input, from 1)."""

    row: str
    text: str


def check_arguments(args: Any, texts: Sequence[str]) -> None:
    """Refuse option combinations that cannot work, before anything is read or loaded.

    Raises:
        `PredictError`: naming the option and what to do.
    """
    for option, allowed in (
        ("decoding", DECODINGS),
        ("on_bad_row", ("skip", "error")),
        ("truncation_side", (None, *TRUNCATION_SIDES)),
        ("quantization", (None, *QUANTIZATIONS)),
        ("dtype", (None, *DTYPE_NAMES)),
    ):
        error = choice_error(f"--{option}", getattr(args, option), allowed)
        if error:
            raise PredictError(error)
    if args.batch_size < 1:
        raise PredictError(f"--batch_size must be at least 1, got {args.batch_size}.")
    if args.max_length is not None and args.max_length < 8:
        raise PredictError(f"--max_length must be at least 8 tokens, got {args.max_length}.")
    if args.calibrate and args.decoding != "constrained":
        raise PredictError(
            "--calibrate needs --decoding constrained: generated answers have no label probabilities to "
            "calibrate."
        )
    if args.merge_adapter and args.quantization != "none":
        raise PredictError(
            "--merge_adapter folds the adapter into unquantized base weights: add --quantization none "
            "(for the fastest single messages on a CPU, also --dtype float32, or auto)."
        )
    if texts and args.input:
        raise PredictError("Give texts as arguments or --input, not both.")
    if args.resume and args.overwrite:
        raise PredictError("--resume continues --output and --overwrite replaces it: choose one.")
    if (args.resume or args.overwrite) and not args.output:
        raise PredictError("--resume and --overwrite need --output (a file).")
    _check_device(args.device)


def _check_device(device: str | None) -> None:
    if not device or not device.startswith("cuda"):
        return
    import torch

    if torch.version.cuda is None:
        raise PredictError(
            f"--device {device}: this torch build has no CUDA support (torch {torch.__version__}); use "
            "--device "
            "cpu, or install a CUDA build of torch."
        )
    if not torch.cuda.is_available():
        raise PredictError(f"--device {device}: no CUDA device is visible; use --device cpu.")


def _listed(rows: list[str]) -> str:
    shown = ", ".join(rows[:MAX_LISTED_ROWS])
    return shown + (f" and {len(rows) - MAX_LISTED_ROWS} more" if len(rows) > MAX_LISTED_ROWS else "")


def _lines(lines: list[str], where: str, on_bad_row: str) -> list[InputRow]:
    rows, blank = [], []
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            if on_bad_row == "error":
                raise PredictError(f"{where}: line {number} is empty; remove it, or pass --on_bad_row skip.")
            blank.append(str(number))
            continue
        rows.append(InputRow(str(number), text))
    if blank:
        logger.warning("Skipped %d empty line(s) of %s: line(s) %s.", len(blank), where, _listed(blank))
    return rows


def _stdin_lines() -> list[str]:
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise PredictError(
            f"standard input, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); convert it "
            "first, e.g. "
            "`iconv -f latin1 -t utf-8`, or save it as a UTF-8 file and pass --input."
        ) from None
    return text.splitlines()


def read_inputs(args: Any, texts: Sequence[str]) -> list[InputRow]:
    """The texts to classify (see `_read_inputs`); none at all is an error."""
    rows = _read_inputs(args, texts)
    if not rows:
        where = args.input or ("the texts given" if texts else "standard input")
        raise PredictError(f"{where}: no texts to classify (only a header, or empty lines?).")
    return rows


def _read_inputs(args: Any, texts: Sequence[str]) -> list[InputRow]:
    """The texts to classify, with their input row numbers: the arguments, `--input`, or stdin.

    Raises:
        `PredictError` or `DataError`: for unreadable input, or a bad row with ``--on_bad_row error``.
    """
    if texts:
        return _lines(list(texts), "the texts given", args.on_bad_row)
    if args.input is None:
        if sys.stdin.isatty():
            raise PredictError("No texts: give them as arguments, with --input FILE, or on standard input.")
        return _lines(_stdin_lines(), "standard input", args.on_bad_row)
    from trainer_ext.data import load_examples

    examples = load_examples(
        args.input,
        text_column=args.text_column,
        labels=None,
        on_bad_row="raise" if args.on_bad_row == "error" else "skip",
    )
    return [
        # A source is `file:row 12 (line 15)` (or `record 3`, `line 7`): the row's number is its first number.
        InputRow(re.search(r"\d+", example.source.rpartition(":")[2]).group(), example.text)
        for example in examples
    ]


def check_model(model: str, is_run: bool, has_labels: bool) -> None:
    """Refuse a `--model` that cannot work, before it loads: a missing path, a base model without labels.

    Raises:
        `PredictError`: saying which and what to do.
    """
    from trainer_ext.modeling.embedded import EMBEDDED_MODELS
    from trainer_ext.vocabulary import is_local_path

    path = Path(model).expanduser()
    if is_local_path(model) and not path.exists():
        raise PredictError(
            f"--model {model!r}: no such directory; give a training run's output directory, a Hub repo id "
            "(user/name), or a base model with --labels."
        )
    base = model in EMBEDDED_MODELS or (path.is_dir() and (path / "config.json").is_file())
    if base and not is_run and not has_labels:
        raise PredictError(
            f"--model {model!r} is a base model, not a trained run: give the labels to choose from, e.g. "
            "--labels 'sport, politics, tech'."
        )


def load_classifier(args: Any):
    """The classifier `args` name: a run (with its labels, or `--labels`), or a base model with `--labels`."""
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.runs.info import ADAPTER_CONFIG, RUN_FILE
    from trainer_ext.tasks import LabelTask

    path = Path(args.model)
    is_run = path.is_dir() and ((path / RUN_FILE).is_file() or (path / ADAPTER_CONFIG).is_file())
    check_model(args.model, is_run, bool(args.labels))
    if args.labels and not is_run:
        if args.merge_adapter:
            logger.warning(
                "--merge_adapter: %s is a base model, not a run; there is no adapter to merge.", args.model
            )
        clf = Classifier.from_base(
            args.model,
            LabelTask(list(args.labels)),
            quantization=args.quantization or "8bit",
            device=args.device,
        )
    else:
        clf = Classifier.from_pretrained(
            args.model,
            revision=args.revision,
            quantization=args.quantization,
            device=args.device,
            allow_pickle=args.allow_pickle,
            dtype=args.dtype,
            base_model=args.base_model,
            merge_adapter=args.merge_adapter,
        )
        if args.labels:
            clf = clf.with_labels(list(args.labels))
    if args.max_length is not None:
        clf.max_length = args.max_length
    if args.truncation_side is not None:
        clf.truncation_side = args.truncation_side
    return clf


class PredictionWriter:
    """Writes prediction rows to a CSV file (or stdout) as they come, and resumes a file a run left.

    Args:
        output (`str`, *optional*): The CSV file; `None` for standard output.
        resume (`bool`, *optional*, defaults to `False`): Continue an existing file.
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing file.

    Raises:
        `PredictError`: when the file exists and neither `resume` nor `overwrite` is set.
    """

    def __init__(self, output: str | None, resume: bool = False, overwrite: bool = False) -> None:
        self.output = Path(output) if output else None
        self.resume = resume
        self.done: list[list[str]] = []
        self.header: list[str] | None = None
        self.rows_done = 0
        if self.output is not None and self.output.is_dir():
            raise PredictError(
                f"--output {str(self.output)!r} is a directory; give a file name, e.g. preds.csv."
            )
        if self.output is not None and not self.output.parent.is_dir():
            raise PredictError(
                f"--output {str(self.output)!r}: the directory {str(self.output.parent)!r} does not exist; "
                "create it first."
            )
        if self.output is not None and self.output.exists() and not (resume or overwrite):
            raise PredictError(
                f"--output {str(self.output)!r} exists; pass --resume to continue it (an interrupted run "
                "on the "
                "same input) or --overwrite to replace it."
            )
        if self.output is not None and resume and self.output.exists():
            with self.output.open(newline="", encoding="utf-8") as handle:
                table = list(csv.reader(handle))
            self.header, self.done = (table[0], table[1:]) if table else (None, [])

    def remaining(self, rows: list[InputRow]) -> list[InputRow]:
        """The input rows not yet in the output; checks that those already there are this input's."""
        for position, (written, row) in enumerate(zip(self.done, rows, strict=False), start=2):
            if written[:2] != [row.row, row.text]:
                raise PredictError(
                    f"--resume: line {position} of {self.output} is row {written[0]!r}, but the input's "
                    "next row "
                    f"is {row.row!r} ({row.text[:40]!r}); it was written from another input. Use "
                    "--overwrite, or "
                    "another --output."
                )
        if len(self.done) > len(rows):
            raise PredictError(
                f"--resume: {self.output} has more rows ({len(self.done)}) than the input ({len(rows)})."
            )
        self.rows_done = len(self.done)
        if self.done:
            logger.info(
                "Resuming %s after %d rows; %d to go.",
                self.output,
                len(self.done),
                len(rows) - len(self.done),
            )
        return rows[len(self.done) :]

    def _open(self, header: list[str]):
        if self.output is None:
            handle = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=True)
        elif self.header is not None:
            if self.header != header:
                raise PredictError(
                    f"--resume: the columns of {self.output} ({', '.join(self.header)}) are not those of "
                    "this "
                    f"model ({', '.join(header)}); use --overwrite, or another --output."
                )
            return self.output.open("a", newline="", encoding="utf-8"), False
        else:
            handle = self.output.open("w", newline="", encoding="utf-8")
        return handle, True

    def write_all(self, clf: Any, rows: list[InputRow], args: Any) -> int:
        """Predict `rows` in batches of `args.batch_size` and write each batch at once; returns rows
        written."""
        from tqdm.auto import tqdm

        labels = list(clf.task.labels)
        if rows:  # a template, labels or k-shot examples too long for max_length fail every row: say so
            clf.encode([rows[0].text])  # before the output file is opened or a header written
        header = [*FIXED_COLUMNS, *[f"prob_{label}" for label in labels]]
        handle, new = self._open(header)
        writer = csv.writer(handle)
        if new:
            writer.writerow(header)
        written, truncated = 0, []
        try:
            with tqdm(total=len(rows), desc="Predicting", file=sys.stderr, disable=len(rows) < 2) as bar:
                for start in range(0, len(rows), args.batch_size):
                    chunk = rows[start : start + args.batch_size]
                    predictions = clf.predict(
                        [row.text for row in chunk],
                        decoding=args.decoding,
                        batch_size=args.batch_size,
                        calibrate=args.calibrate,
                    )
                    for row, p in zip(chunk, predictions, strict=True):
                        probs = (
                            [f"{p.probs[label]:.6f}" for label in labels] if p.probs else [""] * len(labels)
                        )
                        writer.writerow([row.row, row.text, p.label or "", int(p.truncated), *probs])
                        if p.truncated:
                            truncated.append(row.row)
                    handle.flush()
                    written += len(chunk)
                    self.rows_done += len(chunk)
                    bar.update(len(chunk))
        finally:
            if self.output is not None:
                handle.close()
            else:
                handle.detach()
        if truncated:
            logger.warning(
                "%d text(s) were longer than max_length=%d tokens and were shortened (%s kept): row(s) "
                "%s. Their "
                "`truncated` column is 1; raise --max_length or choose --truncation_side.",
                len(truncated),
                clf.max_length,
                {"right": "the start", "left": "the end", "both": "start and end"}[clf.truncation_side],
                _listed(truncated),
            )
        return written
