"""Reading an uploaded CSV file of messages and writing its predictions back as CSV.

The checks run before any model work and each failure says what is wrong with which file, row or
column and what to do: a file that is not a CSV, too big, without a header or rows, without the
chosen column, or with empty or over-long messages.
"""

from __future__ import annotations

import html
import io
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from space.errors import InputError
from trainer_ext.data.readers import DELIMITER_NAMES, DataError, decode_text, detect_delimiter

MAX_FILE_BYTES = 1_000_000
MAX_ROWS = 500
PREVIEW_ROWS = 20
TEXT_COLUMN_HINTS = ("text", "message", "tweet", "comment", "content", "headline", "title", "body")


def _name(path: str | Path) -> str:
    return html.escape(Path(path).name, quote=False)


def _quoted(value: object) -> str:
    """`repr(value)`, safe inside an error message that the page renders as HTML."""
    return html.escape(repr(value), quote=False)


def _rows(indices: list[int]) -> str:
    """`[0, 4, 9, ...]` -> `"rows 1, 5, 10"` (1-based, header not counted), at most five shown."""
    shown = ", ".join(str(index + 1) for index in indices[:5])
    more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


def _parser_message(err: Exception, delimiter: str = "comma") -> str:
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
    if match:
        expected, line, seen = match.groups()
        return (
            f"line {line} has {seen} fields where the header has {expected} (read with the {delimiter} "
            f"delimiter); put double quotes around texts that contain a {delimiter}"
        )
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


def read_table(path: str | Path, max_bytes: int = MAX_FILE_BYTES, max_rows: int = MAX_ROWS) -> pd.DataFrame:
    """Read an uploaded CSV file (header row; comma, semicolon, tab or pipe; UTF-8, else cp1252 / cp1251)
    with every cell as text.

    Args:
        path (`str` or `Path`): The uploaded file.
        max_bytes (`int`, *optional*): Largest accepted file size.
        max_rows (`int`, *optional*): Largest accepted number of data rows.

    Returns:
        `pd.DataFrame`: The table; empty cells are empty strings.

    Raises:
        `InputError`: naming the file and what is wrong with it.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise InputError(
            f"{_name(path)} is not a CSV file (its name does not end in .csv). Save the table as CSV "
            "(comma-separated, UTF-8) and upload that file."
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(
            f"{_name(path)} is {size / 1e6:.1f} MB; this demo accepts files of up to "
            f"{max_bytes / 1e6:.1f} MB. Split it into smaller files."
        )
    try:
        text = decode_text(path)
        delimiter = detect_delimiter(text, path)
    except DataError as err:
        raise InputError(html.escape(str(err).replace(str(path), path.name), quote=False)) from None
    try:
        table = pd.read_csv(
            io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, nrows=max_rows + 1
        )
    except pd.errors.EmptyDataError:
        raise InputError(
            f"{_name(path)} is empty: it needs a header row and at least one row of data."
        ) from None
    except (pd.errors.ParserError, ValueError) as err:
        message = _parser_message(err, DELIMITER_NAMES[delimiter])
        readable = html.escape(message, quote=False)
        raise InputError(f"{_name(path)} is not a readable CSV file: {readable}.") from None
    if table.empty:
        raise InputError(f"{_name(path)} has a header but no rows; add at least one message.")
    if len(table) > max_rows:
        raise InputError(
            f"{_name(path)} has more than {max_rows} rows; this demo classifies up to {max_rows} messages "
            "per file. Split it into smaller files."
        )
    return table


def guess_text_column(table: pd.DataFrame) -> str:
    """The column most likely to hold the messages: a well-known name, else the longest texts on average."""
    for hint in TEXT_COLUMN_HINTS:
        for column in table.columns:
            if str(column).strip().lower() == hint:
                return str(column)
    lengths = {str(column): table[column].str.len().mean() for column in table.columns}
    return max(lengths, key=lambda column: lengths[column])


def texts_of(table: pd.DataFrame, column: str | None, path: str | Path, max_chars: int) -> list[str]:
    """The messages in `column`, checked: the column exists, no cell is empty or longer than `max_chars`.

    Raises:
        `InputError`: naming the file, the column and the offending rows.
    """
    columns = [str(name) for name in table.columns]
    if not column or column not in columns:
        listed = ", ".join(_quoted(name) for name in columns)
        raise InputError(
            f"{_name(path)} has no column {_quoted(column or '')}; its columns are {listed}. "
            "Choose the column that holds the messages."
        )
    texts = [text.strip() for text in table[column].tolist()]
    empty = [index for index, text in enumerate(texts) if not text]
    if empty:
        raise InputError(
            f"{_name(path)}, column {_quoted(column)}: {_rows(empty)} (header not counted) "
            "are empty. Fill them in or delete those rows."
        )
    too_long = [index for index, text in enumerate(texts) if len(text) > max_chars]
    if too_long:
        raise InputError(
            f"{_name(path)}, column {_quoted(column)}: {_rows(too_long)} (header not counted) are "
            f"longer than {max_chars} characters. Shorten them."
        )
    return texts


def _free_name(columns: list[str], name: str) -> str:
    while name in columns:
        name = f"{name}_"
    return name


def predictions_table(table: pd.DataFrame, predictions: list[Any], labels: list[str]) -> pd.DataFrame:
    """`table` with the predicted label and one probability column per label appended."""
    out = table.copy()
    out[_free_name(list(out.columns), "predicted_label")] = [prediction.label for prediction in predictions]
    for label in labels:
        column = _free_name(list(out.columns), f"prob_{label}")
        out[column] = [round(float(prediction.probs[label]), 4) for prediction in predictions]
    return out


def write_predictions(table: pd.DataFrame, source: str | Path) -> Path:
    """Write `table` to `<name>_predictions.csv` in a new temporary directory (one per request)."""
    out_dir = Path(tempfile.mkdtemp(prefix="trainer_ext_space_"))
    path = out_dir / f"{Path(source).stem}_predictions.csv"
    table.to_csv(path, index=False)
    return path


def summary(predictions: list[Any], labels: list[str]) -> str:
    """A one-line Markdown count of the predicted labels."""
    counts = Counter(prediction.label for prediction in predictions)
    parts = ", ".join(f"**{label}** {counts.get(label, 0)}" for label in labels)
    return f"Classified {len(predictions)} messages: {parts}."
