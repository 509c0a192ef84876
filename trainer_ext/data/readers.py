"""Readers of the supported data sources: each returns (name, columns, rows of (location, record)).

Locations name the row within the source (`row 12 (line 15)`, `record 3`, `line 7`), so that
every later error can point at the row. A CSV file's delimiter (comma, semicolon, tab, pipe) and its
encoding (UTF-8 with or without BOM, else Windows cp1252 / cp1251) are detected. Unreadable, empty and
undecodable files raise [`DataError`] here; a malformed CSV row is returned as a [`BadRow`] so that the
caller decides whether to raise
or to skip it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Rows = Iterator[tuple[str, Any]]


class DataError(ValueError):
    """Input data that cannot be used; the message names file, row and column and what to do."""


class BadRow(str):
    """A row that could not be parsed; its text says why."""


@dataclass(frozen=True)
class ClassValue:
    """A `datasets.ClassLabel` value: its id and its name."""

    index: int
    names: Sequence[str]


#: Delimiters a CSV file may use: comma, semicolon (European spreadsheet exports), tab, pipe.
CSV_DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
#: Legacy encodings tried, in this order, for a file that is not UTF-8 (Windows Western and Cyrillic).
LEGACY_ENCODINGS = ("cp1252", "cp1251")


def decode_text(path: Path) -> str:
    """The text of `path`: UTF-8 (a byte-order mark is dropped), else the legacy encoding
    `charset_normalizer` finds most likely among `LEGACY_ENCODINGS` (logged).

    Raises:
        `DataError`: for an unreadable file, or one that is neither UTF-8 nor a known legacy encoding.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(
            f"Cannot read {path}: {err.strerror or err}; check the path and its permissions."
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        where = f"byte 0x{data[err.start]:02x} at line {line}, byte offset {err.start}"
    from charset_normalizer import from_bytes

    best = from_bytes(data, cp_isolation=list(LEGACY_ENCODINGS)).best()
    if best is None:
        raise DataError(
            f"{path}: not UTF-8 ({where}) nor {' / '.join(LEGACY_ENCODINGS)}; re-save the file as UTF-8, "
            "e.g. "
            "`iconv -f latin1 -t utf-8`."
        )
    logger.warning("%s is not UTF-8 (%s); read it as %s.", path, where, best.encoding)
    return str(best)


def _header(text: str, delimiter: str) -> list[str]:
    first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    return [column.strip() for column in first]


def detect_delimiter(text: str, path: Path, wanted: Sequence[str] = ()) -> str:
    """The delimiter of CSV `text`: the one whose header holds the `wanted` columns, else the one
    `csv.Sniffer` finds among `CSV_DELIMITERS`, else the one that splits the header into the most columns.

    Raises:
        `DataError`: when the header read with the chosen delimiter is one column whose name holds another
            delimiter: the file was not read as it was written.
    """
    if path.suffix.lower() == ".tsv":
        return "\t"
    matching = [d for d in CSV_DELIMITERS if wanted and set(wanted) <= set(_header(text, d))]
    if matching:
        return matching[0]
    try:
        delimiter = csv.Sniffer().sniff(text[:65536], delimiters="".join(CSV_DELIMITERS)).delimiter
    except csv.Error:  # rows of uneven width: the delimiter that splits the header the most
        delimiter = max(CSV_DELIMITERS, key=lambda d: len(_header(text, d)))
    header = _header(text, delimiter)
    others = [d for d in CSV_DELIMITERS if d != delimiter and len(header) == 1 and d in header[0]]
    if others:
        raise DataError(
            f"{path}: read with the {DELIMITER_NAMES[delimiter]} delimiter, the header is the single column "
            f"{header[0]!r}, which holds a {DELIMITER_NAMES[others[0]]}: the file's columns could not be "
            f"separated. Save it with one delimiter ({', '.join(DELIMITER_NAMES.values())}) used only "
            "between columns, and quote texts that contain it."
        )
    return delimiter


def _read_csv(path: Path, wanted: Sequence[str]) -> tuple[list[str], Rows]:
    text = decode_text(path)
    delimiter = detect_delimiter(text, path, wanted)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: the file is empty; it needs a header row naming the columns.") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed header row: {err}.") from None
    header = [column.strip() for column in header]
    duplicates = sorted({column for column in header if header.count(column) > 1})
    if duplicates:
        raise DataError(f"{path}: the header names column(s) {duplicates} more than once; rename them.")
    name = DELIMITER_NAMES[delimiter]

    def rows() -> Iterator[tuple[str, Any]]:
        row_number, start_line, blank_lines = 0, reader.line_num + 1, 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                if blank_lines:  # said, so that no line goes unaccounted for
                    logger.info("%s: %d blank line(s) skipped; they are not records.", path, blank_lines)
                return
            except csv.Error as err:
                raise DataError(
                    f"{path}: malformed CSV at line {reader.line_num}: {err}; check its quotes."
                ) from None
            location = f"row {row_number + 1} (line {start_line})"
            start_line = reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip() and len(header) > 1):
                blank_lines += 1  # a blank line (or one of spaces only) is not a record
                continue
            row_number += 1
            if len(row) != len(header):
                yield (
                    location,
                    BadRow(
                        f"expected {len(header)} fields separated by the {name} delimiter, found {len(row)}; "
                        f"quote fields that contain a {name} ('{delimiter}')"
                    ),
                )
            else:
                yield location, dict(zip(header, row, strict=True))

    return header, rows()


def _read_json_records(path: Path) -> tuple[list[str], Rows]:
    text = decode_text(path)
    records: list[tuple[str, Any]] = []
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # not one JSON document: read it as JSON Lines
    if isinstance(whole, list):
        records = [(f"record {i + 1}", record) for i, record in enumerate(whole)]
    elif isinstance(whole, dict) and all(isinstance(v, list) for v in whole.values()):
        keys, columns = list(whole), list(whole.values())
        if len({len(column) for column in columns}) > 1:
            sizes = {key: len(column) for key, column in whole.items()}
            raise DataError(f"{path}: the columns have different lengths {sizes}; make them equal.")
        records = [
            (f"record {i + 1}", dict(zip(keys, vals, strict=True)))
            for i, vals in enumerate(zip(*columns, strict=False))
        ]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:line {number}: invalid JSON ({err.msg} at column {err.colno})."
                ) from None
    for location, record in records:
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: {location} is a {type(record).__name__}, expected an object of columns."
            )
    columns = list(dict.fromkeys(key for _, record in records for key in record))
    return columns, iter(records)


def _frame_rows(frame: Any, name: str) -> tuple[list[str], Rows]:
    columns = [str(column) for column in frame.columns]
    records = frame.to_dict("records")
    return columns, ((f"row {index}", record) for index, record in zip(frame.index, records, strict=True))


def _dataset_rows(dataset: Any, name: str, label_column: str) -> tuple[list[str], Rows]:
    feature = dataset.features.get(label_column) if dataset.features else None
    names = getattr(feature, "names", None)  # a ClassLabel: its ids become names unless mapped

    def rows() -> Iterator[tuple[str, Any]]:
        for index, record in enumerate(dataset):
            if names is not None and isinstance(record.get(label_column), int):
                record = {**record, label_column: ClassValue(record[label_column], names)}
            yield f"row {index}", record

    return list(dataset.column_names), rows()


def load_dataset_dict(source: str) -> Any:
    """Load a Hub dataset id or a local dataset directory with `datasets` (a `DatasetDict` or `Dataset`)."""
    import datasets

    try:
        if Path(source, "dataset_dict.json").is_file() or Path(source, "state.json").is_file():
            return datasets.load_from_disk(source)
        return datasets.load_dataset(source)
    except (OSError, ValueError, ImportError, RuntimeError) as err:  # offline, not found, bad files
        raise DataError(
            f"Could not load the dataset {source!r}: {type(err).__name__}: {err}. Without internet, point to "
            "local files instead (data_dir / train_file)."
        ) from None


def pick_split(loaded: Any, source: str, split: str) -> Any:
    """The `split` of a loaded `DatasetDict` (a plain `Dataset` is returned as is)."""
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"Dataset {source!r} has no split {split!r}; its splits are {list(loaded)}.")
        return loaded[split]
    return loaded


def _in_memory_source(source: Any, label_column: str, split: str) -> tuple[str, list[str], Rows] | None:
    """(name, columns, rows) of a DataFrame, Dataset or DatasetDict; None for anything else."""
    if hasattr(source, "to_dict") and hasattr(source, "columns") and hasattr(source, "index"):
        return "DataFrame", *_frame_rows(source, "DataFrame")
    if not type(source).__module__.startswith("datasets"):
        return None
    import datasets

    name = "dataset"
    if isinstance(source, datasets.DatasetDict):
        source, name = pick_split(source, name, split), f"dataset[{split!r}]"
    if not isinstance(source, datasets.Dataset):
        raise DataError(f"Unsupported dataset type {type(source).__name__}; pass a Dataset or a DatasetDict.")
    return name, *_dataset_rows(source, name, label_column)


def open_source(
    source: Any, label_column: str, split: str, text_column: str = "text"
) -> tuple[str, list[str], Rows]:
    """Return (name, columns, rows) for any supported source; a CSV file's delimiter is the one whose header
    holds `text_column` (and `label_column`), else the one `csv.Sniffer` finds."""
    in_memory = _in_memory_source(source, label_column, split)
    if in_memory is not None:
        return in_memory
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"Unsupported data source of type {type(source).__name__}; pass a path, a DataFrame or a Dataset."
        )
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix in (".csv", ".tsv"):
            return str(path), *_read_csv(path, [text_column, label_column])
        if suffix in (".jsonl", ".json"):
            return str(path), *_read_json_records(path)
        if suffix == ".parquet":
            import pandas

            try:
                frame = pandas.read_parquet(path)
            except (OSError, ValueError, ImportError) as err:  # ArrowInvalid is a ValueError
                raise DataError(f"{path}: cannot read as Parquet ({err}).") from None
            return str(path), *_frame_rows(frame, path.name)
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl, .json or .parquet."
        )
    if suffix in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
        if path.exists():
            raise DataError(f"{path}: not a regular file (a directory?); pass the data file itself.")
        raise DataError(f"{path}: no such file; check the path (relative paths are read from {Path.cwd()}).")
    dataset = pick_split(load_dataset_dict(str(source)), str(source), split)
    name = f"{source}[{split}]"
    return name, *_dataset_rows(dataset, name, label_column)
