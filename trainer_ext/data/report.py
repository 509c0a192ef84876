"""The data report of a run: rows per label in each split, labels a split lacks, duplicate texts within
and across splits, texts that will be shortened. Logged at the start of training and kept in `run.json`.

Texts are compared after case folding and collapsing whitespace, so ``"Hello  World"`` and
``"hello world"`` are duplicates.

>>> from trainer_ext.data import Example
>>> report = build_report(
...     {"train": [Example("a", "x"), Example("b", "y"), Example("A", "x")], "eval": [Example("b", "y")]},
...     ["x", "y", "z"],
... )
>>> report.counts["train"], report.missing_labels["eval"], report.duplicates_within["train"]
({'x': 2, 'y': 1, 'z': 0}, ['x', 'z'], 1)
>>> report.duplicates_across["eval"]
1
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer_ext.data.examples import Example

logger = logging.getLogger(__name__)

#: Fewer examples of a class in a split than this make its per-class scores unreliable (warned).
FEW_EXAMPLES = 20


def text_key(text: str) -> str:
    """The form texts are compared in: case folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


@dataclass
class DataReport:
    """What a run's data holds, per split (``train``, ``dev``, ``eval``).

    Args:
        counts (`dict[str, dict[str, int]]`): Rows per label.
        missing_labels (`dict[str, list[str]]`): Labels of the task with no row.
        duplicates_within (`dict[str, int]`): Rows whose text repeats an earlier row of the same split.
        duplicates_across (`dict[str, int]`): Rows of a dev or eval split whose text is also in training.
        dropped_duplicates (`int`): Eval rows dropped because their text is in training (on request).
        truncated (`dict[str, int]`): Rows whose message is shortened to fit `max_length`.
    """

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_labels: dict[str, list[str]] = field(default_factory=dict)
    duplicates_within: dict[str, int] = field(default_factory=dict)
    duplicates_across: dict[str, int] = field(default_factory=dict)
    dropped_duplicates: int = 0
    truncated: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (stored in `run.json`)."""
        return dataclasses.asdict(self)

    def log(self) -> None:
        """Log the report: one INFO line per split, a WARNING per problem found."""
        for split, counts in self.counts.items():
            logger.info("Data %s: %d rows, per label %s", split, sum(counts.values()), counts)
        for split, labels in self.missing_labels.items():
            if labels:
                logger.warning(
                    "Data %s has no row of label(s) %s: the model %s them; add rows or remove the label(s).",
                    split,
                    labels,
                    "cannot learn" if split == "train" else "is not evaluated on",
                )
        for split, count in self.duplicates_across.items():
            if count:
                logger.warning(
                    "%d %s row(s) repeat a training text: they are scored as if unseen, which flatters the "
                    "metrics; set drop_eval_duplicates to leave them out.",
                    count,
                    split,
                )
        for split, counts in self.counts.items():
            few = {label: n for label, n in counts.items() if 0 < n < FEW_EXAMPLES and split != "train"}
            if few:
                logger.warning(
                    "Data %s has fewer than %d rows of %s: their per-class scores are unreliable.",
                    split,
                    FEW_EXAMPLES,
                    few,
                )


def build_report(splits: Mapping[str, Sequence[Example]], labels: Sequence[str]) -> DataReport:
    """The report of `splits` (split name -> examples) for the task's `labels`."""
    report = DataReport()
    train_keys = {text_key(example.text) for example in splits.get("train", ())}
    for split, examples in splits.items():
        counter = Counter(str(example.label) for example in examples)
        report.counts[split] = {label: counter.get(label, 0) for label in labels}
        report.missing_labels[split] = [label for label in labels if not counter.get(label)]
        keys = [text_key(example.text) for example in examples]
        report.duplicates_within[split] = len(keys) - len(set(keys))
        if split != "train":
            report.duplicates_across[split] = sum(key in train_keys for key in keys)
    return report


def drop_seen(examples: Sequence[Example], seen: Sequence[Example]) -> list[Example]:
    """`examples` without those whose text (compared by `text_key`) is among `seen`'s."""
    keys = {text_key(example.text) for example in seen}
    return [example for example in examples if text_key(example.text) not in keys]
