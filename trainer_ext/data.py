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
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_ext.data_readers import (
    DATA_DIR_ENV,
    BadRow,
    ClassValue,
    DataError,
    load_dataset_dict,
    open_source,
)

logger = logging.getLogger(__name__)

MODERATION_MAPPING = {"0": "hate", "1": "offensive", "2": "neutral"}
#: Column layout of known Hub datasets, used when falling back to the Hub.
HUB_PRESETS: dict[str, dict[str, Any]] = {
    "tdavidson/hate_speech_offensive": {
        "text_column": "tweet",
        "label_column": "class",
        "label_mapping": MODERATION_MAPPING,
    },
}
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


def default_data_dir() -> str | None:
    """The data directory: `$TRAINER_EXT_DATA_DIR`, else an existing `../shared/data` next to the
    repository root or the working directory, else `None`."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return str(candidate)
    return None


def _parse_mapping(value: Mapping[Any, Any] | str | None) -> dict[str, str] | None:
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


@dataclass
class DataSettings:
    """Where the training and evaluation messages come from (YAML keys and command-line flags)."""

    data_dir: str | None = field(
        default_factory=default_data_dir,
        metadata={
            "help": f"Local data directory (default: ${DATA_DIR_ENV}, else ../shared/data if present)."
        },
    )
    train_file: str | None = field(
        default="seed_split/train.csv", metadata={"help": "Training file, relative to data_dir or absolute."}
    )
    eval_file: str | None = field(
        default="seed_split/val.csv",
        metadata={"help": "Evaluation file; unset: eval_samples are held out of the training data."},
    )
    hub_dataset: str | None = field(
        default="tdavidson/hate_speech_offensive",
        metadata={"help": "Hub dataset used when the local files are missing."},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the message."})
    label_column: str = field(default="label", metadata={"help": "Column holding the label."})
    label_mapping: dict[str, str] | str | None = field(
        default=None, metadata={"help": 'Raw label value -> label, dict or JSON (e.g. {"0": "hate"}).'}
    )
    decode_html: bool = field(
        default=True, metadata={"help": "Decode HTML entities (&amp;, &#8220;) in text."}
    )
    train_samples: int | None = field(default=None, metadata={"help": "Balanced training sample size (all)."})
    eval_samples: int | None = field(
        default=None, metadata={"help": "Balanced evaluation sample size (all)."}
    )
    sample_seed: int = field(default=42, metadata={"help": "Seed of the balanced samples and k-shot draws."})

    def __post_init__(self) -> None:
        self.label_mapping = _parse_mapping(self.label_mapping)
        for name in ("train_samples", "eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name} must be a positive number of examples or unset (all), got {value}.")
        if not self.train_file and not self.hub_dataset:
            raise DataError("Set train_file (a local file) or hub_dataset (a Hub dataset id).")


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
    mapping = _parse_mapping(label_mapping)
    name, columns, rows = open_source(source, label_column, split)
    short = Path(name).name if Path(name).is_file() else name
    columns_spec = (text_column, label_column if label_column in columns else None)
    missing = [c for c in (text_column, *([label_column] if labels is not None else [])) if c not in columns]
    if missing:
        raise DataError(
            f"{name}: missing column(s) {missing}; found {columns}. "
            "Set text_column / label_column to the right names."
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


# Splits of a recipe.


def _resolve(settings: DataSettings, file: str) -> Path:
    path = Path(file).expanduser()
    if not path.is_absolute() and settings.data_dir:
        path = Path(settings.data_dir) / path
    return path


def _local_pool(settings: DataSettings, file: str, labels: Sequence[str] | None) -> list[Example]:
    path = _resolve(settings, file)
    logger.info("Reading %s", path)
    return load_examples(
        path,
        settings.text_column,
        settings.label_column,
        settings.label_mapping,
        settings.decode_html,
        labels,
    )


def _hub_pool(settings: DataSettings, split: str, labels: Sequence[str] | None) -> tuple[list[Example], bool]:
    """Examples of the Hub dataset to draw `split` from; also whether the dataset has an evaluation split."""
    name = str(settings.hub_dataset)
    preset = HUB_PRESETS.get(name, {})
    loaded = load_dataset_dict(name)
    available = list(loaded) if isinstance(loaded, dict) else ["train"]  # a DatasetDict is a dict
    eval_split = next((s for s in ("validation", "test") if s in available), None)
    chosen = eval_split if split == "eval" and eval_split else "train"
    logger.info("Reading the Hub dataset %s (split %s)", name, chosen)
    examples = load_examples(
        name,
        preset.get("text_column", settings.text_column),
        preset.get("label_column", settings.label_column),
        settings.label_mapping or preset.get("label_mapping"),
        settings.decode_html,
        labels,
        split=chosen,
    )
    return examples, eval_split is not None


def _pool(settings: DataSettings, split: str, labels: Sequence[str] | None) -> tuple[list[Example], bool]:
    """The examples to draw `split` from, and whether they are the split's own (nothing to hold out)."""
    train_path = _resolve(settings, settings.train_file) if settings.train_file else None
    if train_path is not None and train_path.is_file():
        if split == "eval" and settings.eval_file:
            return _local_pool(settings, settings.eval_file, labels), True
        return _local_pool(settings, settings.train_file, labels), split == "train" and bool(
            settings.eval_file
        )
    if settings.hub_dataset:
        if train_path is not None:
            logger.warning("%s not found; using the Hub dataset %s.", train_path, settings.hub_dataset)
        return _hub_pool(settings, split, labels)
    raise DataError(
        f"Training file {train_path} not found and no hub_dataset is set; set data_dir (or ${DATA_DIR_ENV}) "
        "to the directory holding it."
    )


def _held_out(settings: DataSettings, pool: list[Example]) -> list[Example]:
    if settings.eval_samples is None:
        raise DataError(
            "No evaluation file or split: set eval_file, or eval_samples to hold a balanced sample out of "
            "the training data."
        )
    # A seed of its own, so that the held-out set does not depend on train_samples.
    return balanced_sample(pool, settings.eval_samples, settings.sample_seed + 1)


def load_split(settings: DataSettings, split: str, labels: Sequence[str] | None = None) -> list[Example]:
    """Load the training or evaluation examples of a recipe.

    Local files (`data_dir` / `train_file`, `eval_file`) are used when the training file exists;
    otherwise `hub_dataset` is loaded (known datasets such as `tdavidson/hate_speech_offensive` bring
    their own column names and label mapping). Without an evaluation file or split, `eval_samples`
    examples are held out of the training data, and the training split excludes them.

    Args:
        settings (`DataSettings`): Files, columns, mapping, sample sizes and seed.
        split (`str`): `"train"` or `"eval"`.
        labels (`Sequence[str]`, *optional*): The task's label set, checked on every row; defaults to
            the values of `label_mapping` when one is given.

    Returns:
        `list[Example]`: a balanced sample of `train_samples` / `eval_samples` examples (all when unset).
    """
    if split not in ("train", "eval"):
        raise DataError(f"split must be 'train' or 'eval', got {split!r}.")
    if labels is None and settings.label_mapping:
        labels = list(dict.fromkeys(settings.label_mapping.values()))
    size = settings.train_samples if split == "train" else settings.eval_samples
    pool, own = _pool(settings, split, labels)
    if own:
        return balanced_sample(pool, size, settings.sample_seed)
    held = _held_out(settings, pool)
    if split == "eval":
        return held
    held_sources = {example.source for example in held}
    return balanced_sample([e for e in pool if e.source not in held_sources], size, settings.sample_seed)
