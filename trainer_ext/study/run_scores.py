"""A finished trained run of the study scored on the test set and the transfer headlines (`score_run`), and
those scores kept beside it, so that a study resumed with ``--reuse`` does not score the same model again.

With the shipped preset a trained run is followed by 2 to 3 minutes of scoring on a 2-core CPU (900 test
tweets, then every transfer prompt on the headlines), and a study of 4 trained rows over 3 seeds is too
long for one sitting: it is run a seed at a time (``--seeds 42``, then ``--seeds 1``, ...) and finished
by one run over every seed with ``--reuse``. That last run reads each finished run's scores from
``compare_scores.json`` in its run directory instead of scoring it again, when the file was written for
the same trained files (`run_fingerprint`: their names, sizes and modification times, and the content of
``metrics.json``), run arguments, test set, headlines, topic labels, transfer prompts (their text, not only
their names), decoding and batch size. Anything else is scored again, and the file rewritten. A run
trained again by the study loses the file before training starts.
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


def run_fingerprint(run_dir: Path) -> str:
    """A short fingerprint of a finished run's trained files: the SHA-1 of ``metrics.json`` (which holds the
    run's training time, so it differs between two trainings) and of the name, size and modification time
    of every weight file (``*.safetensors``, ``*.bin``). Copying a run changes it (scored again, never
    wrongly reused)."""
    import hashlib

    run_dir = Path(run_dir)
    digest = hashlib.sha1()
    metrics = run_dir / "metrics.json"
    digest.update(metrics.read_bytes() if metrics.is_file() else b"no metrics")
    for path in sorted([*run_dir.glob("*.safetensors"), *run_dir.glob("*.bin")]):
        stat = path.stat()
        digest.update(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def scores_key(
    run_dir: Path,
    argv: Sequence[str],
    settings: StudySettings,
    test: Sequence[Any],
    headlines: Sequence[Any],
    topics: Sequence[str],
) -> dict[str, Any]:
    """What a run's scores depend on: its trained files, its arguments and what it is scored on, and how.

    Args:
        run_dir (`Path`): The finished run (`run_fingerprint`).
        argv (`Sequence[str]`): The run's ``trainer-ext train`` arguments (as stamped in its directory).
        settings (`StudySettings`): The study (transfer prompts, decoding and batch size).
        test (`Sequence[Example]`): The study's test set (may be empty).
        headlines (`Sequence[Example]`): The transfer sample (may be empty).
        topics (`Sequence[str]`): The transfer labels.

    Returns:
        `dict`: JSON-ready; scores kept under one key are reused only for an equal key.
    """
    prompts = list(settings.transfer_prompts) if headlines else []
    return {
        "run": run_fingerprint(run_dir),
        "argv": list(argv),
        "test": examples_digest(test) if test else None,
        "headlines": examples_digest(headlines) if headlines else None,
        "topics": list(topics) if headlines else [],
        "prompts": {prompt: transfer_template(prompt) for prompt in prompts},
        "transfer_decoding": settings.transfer_decoding if headlines else None,
        "batch_size": settings.batch_size,  # padding, and 8-bit outlier columns, can move a close call
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
        if not isinstance(kept, dict):
            raise ValueError("not a JSON object")
        if kept.get("key") != key:
            logger.info("%s was written for other settings; scoring the run again", path)
            return None
        transfer = [TransferResult(**result) for result in kept["transfer"]]
        return kept["test"], transfer
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Cannot read %s (%s: %s); scoring the run again", path, type(error).__name__, error)
        return None


def save_scores(
    run_dir: Path, key: dict[str, Any], test: dict | None, transfer: list[TransferResult]
) -> None:
    """Keep a run's test scores and transfer results beside it (`SCORES_FILE`), for `load_scores`.

    The file is written whole or not at all (a temporary file renamed over it). A file that cannot be
    written is logged, not raised: the scores are in the study's report anyway, and the next study scores
    the run again.
    """
    import os

    record = {"key": key, "test": test, "transfer": [asdict(result) for result in transfer]}
    path = Path(run_dir) / SCORES_FILE
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        logger.warning("Cannot keep the scores in %s (%s); the next study scores the run again", path, error)


def delete_scores(run_dir: Path) -> None:
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

    key = scores_key(run_dir, argv, settings, test, headlines, topics)
    kept = load_scores(run_dir, key)
    if kept:
        logger.info("Row %s, seed %s: scores read back from %s", row, seed, Path(run_dir) / SCORES_FILE)
        return kept
    classifier = Classifier.from_pretrained(run_dir)
    tested = score_test(classifier, test, settings.batch_size, row).get("constrained")
    transferred = transfer_scores(classifier, row, settings, headlines, topics, seed) if headlines else []
    del classifier
    gc.collect()
    save_scores(run_dir, key, tested, transferred)
    return tested, transferred
