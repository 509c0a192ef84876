"""The study's optional second test set (`test_file`): larger than the recipe's evaluation split, so that
differences between rows can be told from sampling noise, and drawn so that no row has seen its texts.

Every row is scored on it with constrained decoding (the calibrated rows with the same pass calibrated);
the scores go to `RowResult.test`, and a seeded row gets their mean and standard deviation. "Unseen" is
with respect to the recipe's training and evaluation data: a per-row override that changes a row's data
(``--set lora-all.train_file=...``) is not checked against it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer_ext.study.settings import StudySettings

logger = logging.getLogger(__name__)


def load_test_set(settings: StudySettings, recipe, labels: Sequence[str], seen: Sequence[Any]) -> list[Any]:
    """The study's test examples: `test_file` less every text in `seen`, a balanced `test_samples` sample.

    Args:
        settings (`StudySettings`): `test_file` (relative to the recipe's `data_dir`), its columns, label
            mapping and sample size; `seed` draws the sample.
        recipe (`Recipe`): The study's recipe (its `data_dir` and `decode_html`).
        labels (`Sequence[str]`): The task's labels; every test row must map to one.
        seen (`Sequence[Example]`): The training and evaluation examples; their texts are left out (compared
            after whitespace folding and lower-casing, as the data report compares them).

    Returns:
        `list[Example]`: empty when `test_file` is unset.

    Raises:
        `DataError`: when the file is missing, a row is bad, or no row is left.
    """
    from trainer_ext.data import DataError, balanced_sample, load_examples
    from trainer_ext.data.report import drop_seen

    if not settings.test_file:
        return []
    path = Path(settings.test_file).expanduser()
    if not path.is_absolute() and recipe.data.data_dir:
        path = Path(recipe.data.data_dir).expanduser() / path
    if not path.is_file():
        where = "the recipe's data_dir" if recipe.data.data_dir else "the working directory"
        raise DataError(
            f"test_file {str(path)!r} does not exist (a relative path is read from {where}); check the "
            "path, or give --test_file '' to score no test set."
        )
    try:
        examples = load_examples(
            path,
            settings.test_text_column,
            settings.test_label_column,
            settings.test_label_mapping,
            recipe.data.decode_html,
            labels,
        )
    except DataError as error:  # its hints name the recipe's keys; the study's are test_*
        raise DataError(
            f"test set: {error} (for the study's test set the keys are test_text_column, test_label_column "
            "and test_label_mapping)"
        ) from None
    unseen = drop_seen(examples, seen)
    if not unseen:
        raise DataError(
            f"test_file {str(path)!r}: every row is also in the training or evaluation data; give another "
            "file, or --test_file '' to score no test set."
        )
    size = settings.test_samples or None
    if size and size > len(unseen):
        raise DataError(
            f"test_samples {size} is more than the {len(unseen)} rows of {str(path)!r} that are not in the "
            "training or evaluation data; ask for fewer."
        )
    test = balanced_sample(unseen, size, settings.seed)
    absent = [label for label in labels if not any(example.label == label for example in test)]
    if absent:
        logger.warning(
            "Test set %s has no example of %s: its macro-F1 counts that label as 0 for every row. Give a "
            "file with every label, or raise test_samples.",
            path,
            ", ".join(repr(label) for label in absent),
        )
    logger.info(
        "Test set: %d examples of %s (%d rows also in the training or evaluation data left out)",
        len(test),
        path,
        len(examples) - len(unseen),
    )
    return test


def examples_digest(examples: Sequence[Any]) -> str:
    """A short fingerprint of labelled examples (SHA-1 of their labels and texts, in order): a finished run
    scored on one test set is reused only for the very same one."""
    import hashlib

    lines = "\n".join(f"{example.label}\t{example.text}" for example in examples)
    return hashlib.sha1(lines.encode("utf-8")).hexdigest()[:16]


def score_test(
    classifier, examples: Sequence[Any], batch_size: int, desc: str
) -> dict[str, dict[str, float]]:
    """Constrained and calibrated scores of `classifier` on the test examples (`{}` without any)."""
    from trainer_ext.study.scoring import score_classifier

    if not examples:
        return {}
    return score_classifier(classifier, examples, ("constrained",), batch_size, f"{desc}, test set")
