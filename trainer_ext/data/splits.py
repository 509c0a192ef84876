"""The training, dev and evaluation splits of a recipe: where they come from and how they are drawn.

Data comes from what the recipe names and nothing else: local files (`train_file`, `eval_file`, relative
to `data_dir` when given) or a Hub dataset (`hub_dataset`). A file that is named but missing is an error
that names it. Without an evaluation file or split, a seeded, balanced sample is held out of the training
data (`eval_samples` examples, else a tenth of them).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer_ext.data.examples import Example, balanced_sample, load_examples, parse_mapping
from trainer_ext.data.readers import DataError, load_dataset_dict

logger = logging.getLogger(__name__)

#: Share of the training data held out for evaluation when neither `eval_file` nor `eval_samples` is set.
DEFAULT_HELD_OUT_SHARE = 0.1


@dataclass
class DataSettings:
    """Where the training and evaluation messages come from (YAML keys and command-line flags)."""

    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory that relative train_file / eval_file paths are read from (default: cwd)."
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training file (.csv, .tsv, .jsonl, .json, .parquet), relative to data_dir or absolute."
        },
    )
    eval_file: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation file; unset: eval_samples (default a tenth) are held out of the training "
            "data."
        },
    )
    hub_dataset: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id (or a local `datasets` directory) to read instead of train_file."},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the message."})
    label_column: str = field(default="label", metadata={"help": "Column holding the label."})
    label_mapping: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": 'Raw label value -> label, dict or JSON (e.g. {"0": "negative", "1": "positive"}).'
        },
    )
    decode_html: bool = field(
        default=False, metadata={"help": "Decode HTML entities (&amp;, &#8220;) in text (tweets need it)."}
    )
    train_samples: int | None = field(default=None, metadata={"help": "Balanced training sample size (all)."})
    eval_samples: int | None = field(
        default=None,
        metadata={"help": "Balanced evaluation sample size (default: all; held out: a stratified tenth)."},
    )
    sample_seed: int = field(default=42, metadata={"help": "Seed of the balanced samples and k-shot draws."})
    validation_split: float | None = field(
        default=None,
        metadata={
            "help": "Share of the training data held out, stratified and seeded, as a dev set for model "
            "selection, early stopping and decision tuning (the eval file stays untouched)."
        },
    )
    drop_eval_duplicates: bool = field(
        default=False,
        metadata={"help": "Leave out dev and eval rows whose text is also in the training data."},
    )

    def __post_init__(self) -> None:
        self.label_mapping = parse_mapping(self.label_mapping)
        for name in ("train_samples", "eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name} must be a positive number of examples or unset (all), got {value}.")
        if self.validation_split is not None and not 0 < self.validation_split < 1:
            raise DataError(
                f"validation_split must be between 0 and 1 (a share), got {self.validation_split}."
            )
        if self.train_file and self.hub_dataset:
            raise DataError(
                f"Both train_file ({self.train_file!r}) and hub_dataset ({self.hub_dataset!r}) are set; "
                "set one of them."
            )

    def resolve(self, file: str) -> Path:
        """`file` as a path: absolute as given, else relative to `data_dir` (or the working directory)."""
        path = Path(file).expanduser()
        if not path.is_absolute() and self.data_dir:
            path = Path(self.data_dir).expanduser() / path
        return path.resolve()

    def sources(self) -> dict[str, str]:
        """What a run reads, as recorded in `run.json`: absolute file paths or the Hub dataset id."""
        if self.hub_dataset:
            return {"hub_dataset": self.hub_dataset}
        out = {"train_file": str(self.resolve(self.train_file))} if self.train_file else {}
        if self.eval_file:
            out["eval_file"] = str(self.resolve(self.eval_file))
        return out


def _existing(settings: DataSettings, key: str) -> Path:
    path = settings.resolve(getattr(settings, key))
    if not path.is_file():
        where = (
            f" (data_dir {settings.data_dir!r})"
            if settings.data_dir
            else " (relative to the working directory)"
        )
        raise DataError(
            f"{key} {str(path)!r} does not exist{where}; check the path, or set data_dir to the directory "
            "holding it."
        )
    return path


def _read(
    settings: DataSettings, source, labels: Sequence[str] | None, split: str = "train"
) -> list[Example]:
    logger.info("Reading %s", source)
    examples = load_examples(
        source,
        settings.text_column,
        settings.label_column,
        settings.label_mapping,
        settings.decode_html,
        labels,
        split=split,
    )
    if not examples:
        raise DataError(f"{source}: no data rows (only a header?); add labelled rows below the header.")
    if all(example.label is None for example in examples):
        raise DataError(
            f"{source}: no row has a label in column {settings.label_column!r} (is that the name of the "
            "label column?); set label_column to the column that holds the labels."
        )
    unlabelled = next((example for example in examples if example.label is None), None)
    if unlabelled is not None:
        raise DataError(
            f"{unlabelled.source}: no label in column {settings.label_column!r}; every training and "
            "evaluation row needs one (set label_column to the column that holds the labels)."
        )
    return examples


def _hub_pool(settings: DataSettings, split: str, labels: Sequence[str] | None) -> tuple[list[Example], bool]:
    """Examples of the Hub dataset to draw `split` from; also whether the dataset has an evaluation split."""
    name = str(settings.hub_dataset)
    loaded = load_dataset_dict(name)
    available = list(loaded) if isinstance(loaded, dict) else ["train"]  # a DatasetDict is a dict
    eval_split = next((s for s in ("validation", "test") if s in available), None)
    chosen = eval_split if split == "eval" and eval_split else "train"
    return _read(settings, name, labels, split=chosen), eval_split is not None


def _pool(settings: DataSettings, split: str, labels: Sequence[str] | None) -> tuple[list[Example], bool]:
    """The examples to draw `split` from, and whether they are the split's own (nothing to hold out)."""
    if settings.hub_dataset:
        return _hub_pool(settings, split, labels)
    if not settings.train_file:
        raise DataError("No training data: set train_file (a local file) or hub_dataset (a Hub dataset id).")
    train_path = _existing(settings, "train_file")
    if settings.eval_file:
        eval_path = _existing(settings, "eval_file")
        return _read(settings, eval_path if split == "eval" else train_path, labels), True
    return _read(settings, train_path, labels), False


def _held_out(settings: DataSettings, pool: list[Example]) -> list[Example]:
    """The evaluation examples held out of the training file: `eval_samples` drawn balanced, else a
    stratified tenth (the data's own class mix, so that metrics on imbalanced data keep their meaning)."""
    size = settings.eval_samples
    if size is None:
        counts = Counter(example.label for example in pool)
        size = max(len(counts), round(DEFAULT_HELD_OUT_SHARE * len(pool)))
        if len(pool) - size >= len(counts) and min(counts.values()) >= 2:
            # A seed of its own, so that the held-out set does not depend on train_samples.
            return split_dev(pool, size, settings.sample_seed + 1)[1]
    if size >= len(pool):
        raise DataError(
            f"Cannot hold {size} evaluation examples out of {len(pool)} training examples; set eval_file, "
            "or a smaller eval_samples."
        )
    return balanced_sample(pool, size, settings.sample_seed + 1)


def load_split(settings: DataSettings, split: str, labels: Sequence[str] | None = None) -> list[Example]:
    """Load the training or evaluation examples of a recipe.

    Args:
        settings (`DataSettings`): Files or Hub dataset, columns, mapping, sample sizes and seed.
        split (`str`): `"train"` or `"eval"`.
        labels (`Sequence[str]`, *optional*): The task's label set, checked on every row; defaults to
            the values of `label_mapping` when one is given.

    Returns:
        `list[Example]`: a balanced sample of `train_samples` / `eval_samples` examples (all when unset).
        Without an evaluation file or split the evaluation examples are held out of the training data,
        and the training split excludes them.

    Raises:
        `DataError`: when no training data is named, a named file is missing, or a row is bad.
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


def split_dev(
    examples: Sequence[Example], share: float | int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Carve a stratified, seeded dev set out of training examples (scikit-learn's `train_test_split`).

    Args:
        examples (`Sequence[Example]`): Labelled examples.
        share (`float` or `int`): The dev set's share of the examples (a float in (0, 1)) or its size.
        seed (`int`): Seed of the split.

    Returns:
        `(train, dev)`: disjoint, every class in both (each class needs at least two examples).

    Raises:
        `DataError`: when a class has too few examples to be in both sets.
    """
    from sklearn.model_selection import train_test_split

    labels = [example.label for example in examples]
    try:
        train, dev = train_test_split(list(examples), test_size=share, random_state=seed, stratify=labels)
    except ValueError as err:
        raise DataError(
            f"Cannot carve a stratified set of {share} out of {len(examples)} training rows "
            f"({err}); add rows of the rare classes or change validation_split."
        ) from None
    return train, dev
