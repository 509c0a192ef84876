"""A finished trained run of the study scored on the test set and the transfer headlines (`score_run`), and
those scores kept beside it, so that a study resumed with ``--reuse`` does not score the same model again.

With the shipped preset a trained run is followed by about five minutes of scoring on a 2-core CPU (900 test
tweets, then every transfer prompt on the headlines), and a study of 4 trained rows over 3 seeds is too
long for one sitting: it is run a seed at a time (``--seeds 42``, then ``--seeds 1``, ...) and finished
by one run over every seed with ``--reuse``. That last run reads each finished run's scores from
``compare_scores.json`` in its run directory instead of scoring it again, when the file was written for
the very same run arguments, test set, headlines, topic labels and transfer prompts (their text, not
only their names) and decoding. Anything else is scored again, and the file rewritten. Training a run
again deletes the file first, so scores never outlive the model they were measured on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainer_ext.study.heldout import examples_digest, score_test
from trainer_ext.study.scoring import TransferResult, transfer_scores
from trainer_ext.study.settings import StudySettings, transfer_template

logger = logging.getLogger(__name__)

SCORES_FILE = "compare_scores.json"


def scores_key(
    argv: Sequence[str], settings: StudySettings, test: Sequence[Any], headlines: Sequence[Any], topics
) -> dict[str, Any]:
    """What a run's scores depend on besides its weights: the run's arguments and what it is scored on.

    Args:
        argv (`Sequence[str]`): The run's ``trainer-ext train`` arguments (as stamped in its directory).
        settings (`StudySettings`): The study (transfer prompts and decoding).
        test (`Sequence[Example]`): The study's test set (may be empty).
        headlines (`Sequence[Example]`): The transfer sample (may be empty).
        topics (`Sequence[str]`): The transfer labels.

    Returns:
        `dict`: JSON-ready; two keys are equal exactly when the scores can be reused.
    """
    prompts = list(settings.transfer_prompts) if headlines else []
    return {
        "argv": list(argv),
        "test": examples_digest(test) if test else None,
        "headlines": examples_digest(headlines) if headlines else None,
        "topics": list(topics) if headlines else [],
        "prompts": {prompt: transfer_template(prompt) for prompt in prompts},
        "transfer_decoding": settings.transfer_decoding if headlines else None,
    }


def load_scores(run_dir: Path, key: dict[str, Any]) -> tuple[dict | None, list[TransferResult]] | None:
    """The kept test scores and transfer results of the run in `run_dir`, if kept for the same `key`.

    Returns:
        `(test, transfer)`, or `None` when there is no file, it was written for another key, or it cannot
        be read (then it is logged and the run is scored again; nothing is raised).
    """
    path = Path(run_dir) / SCORES_FILE
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("key") != key:
            logger.info("%s was written for other settings; scoring the run again", path)
            return None
        transfer = [TransferResult(**result) for result in kept["transfer"]]
        return kept["test"], transfer
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Cannot read %s (%s); scoring the run again", path, error)
        return None


def save_scores(
    run_dir: Path, key: dict[str, Any], test: dict | None, transfer: list[TransferResult]
) -> None:
    """Keep a run's test scores and transfer results beside it (`SCORES_FILE`), for `load_scores`."""
    record = {"key": key, "test": test, "transfer": [asdict(result) for result in transfer]}
    path = Path(run_dir) / SCORES_FILE
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def forget_scores(run_dir: Path) -> None:
    """Delete a run's kept scores (before it is trained again)."""
    (Path(run_dir) / SCORES_FILE).unlink(missing_ok=True)


def score_run(
    settings: StudySettings,
    row: str,
    seed: int | None,
    run_dir: Path,
    argv: Sequence[str],
    test: Sequence[Any],
    headlines: Sequence[Any],
    topics: Sequence[str],
) -> tuple[dict | None, list[TransferResult]]:
    """A finished run's constrained scores on the test set and its transfer results, read back from its
    directory when kept for the same `scores_key`, else measured (one model load) and kept.

    Args:
        settings (`StudySettings`): The study.
        row (`str`): The trained row.
        seed (`int`, *optional*): The run's training seed.
        run_dir (`Path`): The run directory (loadable by `Classifier.from_pretrained`).
        argv (`Sequence[str]`): The run's ``trainer-ext train`` arguments.
        test (`Sequence[Example]`): The study's test set (may be empty).
        headlines (`Sequence[Example]`): The transfer sample (may be empty).
        topics (`Sequence[str]`): The transfer labels.

    Returns:
        `(test, transfer)`: `short_scores` on the test set (`None` without one) and one `TransferResult`
        per transfer prompt.
    """
    import gc

    from trainer_ext.inference.classifier import Classifier

    key = scores_key(argv, settings, test, headlines, topics)
    kept = load_scores(run_dir, key)
    if kept:
        logger.info("Row %s, seed %s: scores read back from %s", row, seed, Path(run_dir) / SCORES_FILE)
        return kept
    classifier = Classifier.from_pretrained(run_dir)
    tested = score_test(classifier, test, settings.batch_size, row).get("constrained")
    moved = transfer_scores(classifier, row, settings, headlines, topics, seed) if headlines else []
    del classifier
    gc.collect()
    save_scores(run_dir, key, tested, moved)
    return tested, moved
