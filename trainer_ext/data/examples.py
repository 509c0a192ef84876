"""Loading labelled messages: CSV, JSON Lines, JSON, Parquet, pandas and Hugging Face `datasets`.

Every message becomes an [`Example`] that remembers where it came from (`file:row`), so that any
later error names the row. Bad rows raise [`DataError`] naming file, row and column, or, with
`on_bad_row="skip"`, are skipped with a logged warning each (the first few) and a logged count.
Missing columns, unreadable files and non-UTF-8 files always raise.
"""

from __future__ import annotations

import html
import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_ext.data.readers import BadRow, ClassValue, DataError, open_source

logger = logging.getLogger(__name__)

_MAX_LOGGED_SKIPS = 10


class _RowError(Exception):
    """A bad row; `load_examples` raises it as a `DataError` with the location, or skips the row."""


@dataclass(frozen=True)
class Example:
    """One message and its label.

    Args:
        text (`str`): The message.
        label (`str`, *optional*): Its label; `None` for unlabelled (prediction) input.
        source (`str`): Where it came from, e.g. `train.csv:row 12 (line 15)`.
    """

    text: str
    label: str | None
    source: str = ""


def parse_mapping(value: Mapping[Any, Any] | str | None) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(
                f'label_mapping is not valid JSON ({err}); pass e.g. \'{{"0": "hate"}}\'.'
            ) from None
    if not isinstance(value, Mapping):
        raise DataError(f"label_mapping must map raw label values to labels, got {type(value).__name__}.")
    return {_key(raw): str(label) for raw, label in value.items()}


# Row checks.


def _key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _convert_label(
    value: Any, mapping: dict[str, str] | None, labels: Sequence[str] | None, column: str
) -> str:
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        raise _RowError(f"column {column!r}: missing label")
    keys = [_key(value.index), value.names[value.index]] if isinstance(value, ClassValue) else [_key(value)]
    if mapping is not None:
        mapped = next((mapping[key] for key in keys if key in mapping), None)
        if mapped is None and not (labels and keys[-1] in labels):
            raise _RowError(f"column {column!r}: value {keys[0]!r} is not a key of label_mapping {mapping}")
        label = mapped if mapped is not None else keys[-1]
    else:
        label = keys[-1]
    if labels is not None and label not in labels:
        hint = " (labels are case-sensitive)" if label.casefold() in {x.casefold() for x in labels} else ""
        raise _RowError(
            f"column {column!r}: label {label!r} is not in the label set {list(labels)}{hint}; "
            "fix the row or map the value with label_mapping"
        )
    return label


def _convert_text(value: Any, column: str, decode_html: bool) -> str:
    if _is_missing(value):
        raise _RowError(f"column {column!r}: missing text")
    if not isinstance(value, str):
        raise _RowError(f"column {column!r}: text must be a string, got {type(value).__name__} {value!r}")
    text = html.unescape(value) if decode_html else value
    if not text.strip():
        raise _RowError(f"column {column!r}: empty text")
    return text


def _convert_record(
    record: Any,
    columns: tuple[str, str | None],
    mapping: dict[str, str] | None,
    labels: Sequence[str] | None,
    decode_html: bool,
) -> tuple[str, str | None]:
    """(text, label) of one record; `columns` is (text column, label column or None when absent)."""
    if isinstance(record, BadRow):
        raise _RowError(str(record))
    text_column, label_column = columns
    text = _convert_text(record.get(text_column), text_column, decode_html)
    if label_column is None:
        return text, None
    value = record.get(label_column)
    if labels is None and (_is_missing(value) or value == ""):
        return text, None  # unlabelled rows are fine in prediction input
    return text, _convert_label(value, mapping, labels, label_column)


def load_examples(
    source: Any,
    text_column: str = "text",
    label_column: str = "label",
    label_mapping: Mapping[Any, Any] | str | None = None,
    decode_html: bool = False,
    labels: Sequence[str] | None = None,
    split: str = "train",
    on_bad_row: str = "raise",
) -> list[Example]:
    """Load labelled (or unlabelled) messages.

    Args:
        source (`str | Path | pandas.DataFrame | datasets.Dataset`):
            A file (`.csv`, `.tsv`, `.jsonl`, `.json`, `.parquet`), a DataFrame, a Dataset, or a Hub
            dataset id / local dataset directory (loaded with `datasets`).
        text_column (`str`, *optional*, defaults to `"text"`): Column of the message.
        label_column (`str`, *optional*, defaults to `"label"`): Column of the label.
        label_mapping (`dict`, *optional*): Raw label value -> label (keys compared as text, so
            `{0: "hate"}` matches `"0"` in a CSV); for a `ClassLabel` column the id or the name.
        decode_html (`bool`, *optional*, defaults to `False`): Decode HTML entities in the text.
        labels (`Sequence[str]`, *optional*): The label set. Every row must carry one of them. `None`:
            the label column is optional (prediction input) and labels are not checked.
        split (`str`, *optional*, defaults to `"train"`): Split of a Hub or local dataset.
        on_bad_row (`str`, *optional*, defaults to `"raise"`): `"raise"` a [`DataError`] at the first bad
            row (malformed, missing or non-string or empty text, missing or unknown label), or `"skip"`
            it with a logged warning.

    Returns:
        `list[Example]`: in file order, each with its `source` (`file:row`).
    """
    if on_bad_row not in ("raise", "skip"):
        raise DataError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}.")
    if labels is not None and len(set(labels)) != len(labels):
        raise DataError(f"Duplicate labels in the label set {list(labels)}.")
    mapping = parse_mapping(label_mapping)
    name, columns, rows = open_source(source, label_column, split, text_column)
    short = Path(name).name if Path(name).is_file() else name
    columns_spec = (text_column, label_column if label_column in columns else None)
    missing = [c for c in (text_column, *([label_column] if labels is not None else [])) if c not in columns]
    if missing:
        raise DataError(
            f"{name}: missing column(s) {missing}; found {columns}. Set text_column / label_column to the "
            "right names (a CSV file's delimiter is detected among comma, semicolon, tab and pipe; quote "
            "texts that contain it)."
        )
    examples: list[Example] = []
    skipped = 0
    for location, record in rows:
        try:
            text, label = _convert_record(record, columns_spec, mapping, labels, decode_html)
        except _RowError as err:
            if on_bad_row == "raise":
                raise DataError(f"{name}, {location}, {err}.") from None
            skipped += 1
            if skipped <= _MAX_LOGGED_SKIPS:
                logger.warning("Skipping %s, %s, %s.", name, location, err)
            continue
        examples.append(Example(text, label, f"{short}:{location}"))
    if skipped:
        logger.warning("Skipped %d bad row(s) of %s; kept %d.", skipped, name, len(examples))
    return examples


def _quotas(groups: dict[str, list[Example]], n: int, rng: random.Random) -> dict[str, int]:
    order = list(groups)
    rng.shuffle(order)  # which labels get the remainder
    quotas = {label: n // len(order) + (i < n % len(order)) for i, label in enumerate(order)}
    short = {
        label: quotas[label] - len(groups[label]) for label in order if quotas[label] > len(groups[label])
    }
    if short:
        logger.warning(
            "Balanced sample of %d: labels %s have too few examples; taking more of the others.",
            n,
            {label: len(groups[label]) for label in short},
        )
        for label in short:
            quotas[label] = len(groups[label])
        missing = sum(short.values())
        while missing:
            spare = [label for label in order if quotas[label] < len(groups[label])]
            for label in spare[:missing]:
                quotas[label] += 1
                missing -= 1
    return quotas


def balanced_sample(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """Draw `n` examples with the labels as equally represented as the data allows.

    Args:
        examples (`Sequence[Example]`): Labelled examples.
        n (`int`, *optional*): Sample size; `None` returns all examples unchanged.
        seed (`int`): Seed of the draw and of the shuffled order.

    Returns:
        `list[Example]`: `n` examples in shuffled order; labels differ in count by at most one unless a
        label has too few examples (then all of it is taken, logged).
    """
    if n is None:
        return list(examples)
    if n < 1 or n > len(examples):
        raise DataError(f"Cannot draw a balanced sample of {n} from {len(examples)} examples.")
    groups: dict[str, list[Example]] = {}
    for example in examples:
        if example.label is None:
            raise DataError(f"{example.source}: balanced sampling needs a label on every example.")
        groups.setdefault(example.label, []).append(example)
    rng = random.Random(seed)
    quotas = _quotas(groups, n, rng)
    chosen = [example for label, group in groups.items() for example in rng.sample(group, quotas[label])]
    rng.shuffle(chosen)
    return chosen
