"""Scores of the study: what a row and a transfer evaluation measured (`RowResult`, `TransferResult`), a
`Classifier` scored on labelled examples (constrained, calibrated, generate), the zero-shot transfer of a
model to a labelled set of unseen topics, and the runs of several training seeds combined."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_ext.study.settings import StudyError, StudySettings, transfer_template

logger = logging.getLogger(__name__)


@dataclass
class TransferResult:
    """Zero-shot topic classification of one model with one prompt.

    Args:
        model (`str`): ``"base"`` (the frozen model) or the trained row.
        prompt (`str`): The transfer prompt's name.
        constrained (`dict`): Scores with constrained decoding.
        calibrated (`dict`): Scores of the same label probabilities, calibrated.
        generate (`dict`, *optional*): Scores with greedy generation, when asked for.
        seed (`int`, *optional*): The training seed of the model (`None` for the base model).
    """

    model: str
    prompt: str
    constrained: dict[str, float]
    calibrated: dict[str, float]
    generate: dict[str, float] | None = None
    seed: int | None = None


@dataclass
class RowResult:
    """One row of the table, or one seed's run of a seeded row.

    A seeded row holds the mean of its seeds' runs that finished; `std` and `per_seed` hold the rest.

    Args:
        name (`str`): The row (`zero-shot`, `lora-all`, ...).
        status (`str`): ``"ok"``, ``"failed"`` or ``"skipped"``.
        trainable_params (`int`, *optional*): Parameters updated by training (0 for frozen rows).
        train_runtime (`float`, *optional*): Training seconds.
        train_samples_per_second (`float`, *optional*): Training throughput.
        peak_memory_mb (`float`, *optional*): Peak memory of the process that produced the row, MiB.
        constrained (`dict`, *optional*): `accuracy`, `macro_f1`, `invalid_rate` with constrained decoding.
        generate (`dict`, *optional*): The same with greedy generation.
        test (`dict`, *optional*): `accuracy`, `macro_f1`, `invalid_rate` on the study's test set
            (`test_file`), constrained decoding.
        epochs (`float`, *optional*): Training epochs.
        run_dir (`str`, *optional*): The run directory of a trained or frozen row.
        note (`str`): Why a row failed or was skipped, or how to read it.
        seed (`int`, *optional*): The training seed of one run.
        std (`dict`, *optional*): Standard deviation over the seeds of each score, by decoding or set
            (``{"constrained": {"accuracy": 0.01, ...}, "test": {...}}``); `None` for a single run.
        per_seed (`list[RowResult]`): Every seed's run, in the order of ``seeds`` (seeded rows only).
    """

    name: str
    status: str = "ok"
    trainable_params: int | None = None
    train_runtime: float | None = None
    train_samples_per_second: float | None = None
    peak_memory_mb: float | None = None
    constrained: dict[str, float] | None = None
    generate: dict[str, float] | None = None
    test: dict[str, float] | None = None
    epochs: float | None = None
    run_dir: str | None = None
    note: str = ""
    seed: int | None = None
    std: dict[str, dict[str, float]] | None = None
    per_seed: list[RowResult] = field(default_factory=list)

    @property
    def has_failure(self) -> bool:
        """Whether the row, or any of its seeds' runs, failed."""
        return self.status == "failed" or any(run.status == "failed" for run in self.per_seed)


def combine_seeds(name: str, runs: list[RowResult]) -> RowResult:
    """One table row from the runs of a row's seeds: mean scores and their standard deviation.

    Scores, training time and throughput are means over the runs that finished, the peak memory is
    their largest; the note holds what every run's note says, then what only some say (``seed 1: ...``); a
    row none of whose runs finished takes the first run's status and note.

    Args:
        name (`str`): The row.
        runs (`list[RowResult]`): One run per seed (``seed`` set).

    Returns:
        `RowResult`: the combined row, `per_seed` holding `runs`.
    """
    done = [run for run in runs if run.status == "ok"]
    if not done:
        return RowResult(name, status=runs[0].status, note=runs[0].note, per_seed=runs)
    constrained, constrained_std = combine_scores([run.constrained for run in done])
    generate, generate_std = combine_scores([run.generate for run in done])
    test, test_std = combine_scores([run.test for run in done])
    parts = (("constrained", constrained_std), ("generate", generate_std), ("test", test_std))
    std = {k: v for k, v in parts if v}
    parts = [list(dict.fromkeys(part for part in run.note.split("; ") if part)) for run in done]
    common = [part for part in parts[0] if all(part in other for other in parts[1:])]
    notes = common + [
        f"seed {run.seed}: {part}"
        for run, mine in zip(done, parts, strict=True)
        for part in mine
        if part not in common
    ]
    notes += [f"seed {run.seed} {run.status}: {run.note}" for run in runs if run.status != "ok"]
    return RowResult(
        name,
        trainable_params=done[0].trainable_params,
        train_runtime=_mean([run.train_runtime for run in done], 1),
        train_samples_per_second=_mean([run.train_samples_per_second for run in done], 3),
        peak_memory_mb=max((run.peak_memory_mb for run in done if run.peak_memory_mb), default=None),
        constrained=constrained,
        generate=generate,
        test=test,
        epochs=done[0].epochs,
        note="; ".join(notes),
        std=std or None,
        per_seed=runs,
    )


def _mean(values: list[float | None], digits: int) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.fmean(known), digits) if known else None


def short_scores(scores: dict[str, Any]) -> dict[str, float]:
    """Accuracy, macro-F1 and invalid rate of `classification_metrics` output, rounded."""
    keep = ("accuracy", "macro_f1", "invalid_rate")
    return {key: round(float(scores[key]), 4) for key in keep}


def score_classifier(
    classifier, examples: Sequence[Any], decodings: Sequence[str], batch_size: int, desc: str = "Scoring"
) -> dict:
    """Scores of a `Classifier` on labelled examples: constrained, calibrated (same pass) and generate.

    Args:
        classifier (`Classifier`): The model and task.
        examples (`Sequence[Example]`): Labelled examples whose labels are the classifier's labels.
        decodings (`Sequence[str]`): ``"constrained"`` and/or ``"generate"``.
        batch_size (`int`): Prompts per forward pass.
        desc (`str`, *optional*, defaults to `"Scoring"`): Label of the progress bar.

    Returns:
        `dict`: ``"constrained"``, ``"calibrated"`` (when constrained) and ``"generate"`` scores.
    """
    import torch
    from tqdm.auto import tqdm

    from trainer_ext.evaluation.metrics import classification_metrics
    from trainer_ext.inference.scoring import contextual_calibration

    labels = classifier.task.labels
    texts, gold = [ex.text for ex in examples], [ex.label for ex in examples]
    scores: dict[str, dict[str, float]] = {}
    bar = tqdm(total=len(texts) * len(decodings), desc=desc, leave=False)
    if "constrained" in decodings:
        predictions = classifier.predict(texts, "constrained", batch_size, on_batch=bar.update)
        probs = torch.tensor([[p.probs[label] for label in labels] for p in predictions])  # (N, L)
        calibrated = contextual_calibration(probs, classifier.content_free_probs())
        for name, table in (("constrained", probs), ("calibrated", calibrated)):
            predicted = [labels[i] for i in table.argmax(-1).tolist()]
            scores[name] = short_scores(classification_metrics(gold, predicted, labels))
    if "generate" in decodings:
        predictions = classifier.predict(texts, "generate", batch_size, on_batch=bar.update)
        scores["generate"] = short_scores(
            classification_metrics(gold, [p.label for p in predictions], labels)
        )
    bar.close()
    return scores


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator; `None` for a single value).

    >>> mean_std([0.80, 0.82, 0.84])
    (0.82, 0.02)
    >>> mean_std([0.5])
    (0.5, None)
    """
    if not values:
        raise ValueError("mean_std needs at least one value.")
    mean = round(statistics.fmean(values), 4)
    return mean, (round(statistics.stdev(values), 4) if len(values) > 1 else None)


def combine_scores(
    per_seed: Sequence[dict[str, float] | None],
) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """Per-metric mean and standard deviation of the scores of several seeds (those that have scores).

    Args:
        per_seed (`Sequence[dict]`): `short_scores` of each seed, `None` where a seed has none.

    Returns:
        `(mean, std)`: dicts of the same keys; `std` is `None` with fewer than two seeds, both are `None`
        when no seed has scores.

    >>> combine_scores([{"accuracy": 0.7}, {"accuracy": 0.9}, None])
    ({'accuracy': 0.8}, {'accuracy': 0.1414})
    """
    present = [scores for scores in per_seed if scores]
    if not present:
        return None, None
    pairs = {key: mean_std([scores[key] for scores in present]) for key in present[0]}
    mean = {key: m for key, (m, _) in pairs.items()}
    std = {key: s for key, (_, s) in pairs.items()} if len(present) > 1 else None
    return mean, std


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on `n` examples: ``sqrt(p (1 - p) / n)``.

    >>> round(standard_error(0.8, 200), 4)
    0.0283
    """
    return math.sqrt(accuracy * (1 - accuracy) / n) if n > 0 else float("nan")


def decodings(value: str) -> tuple[str, ...]:
    return ("constrained", "generate") if value == "both" else (value,)


def transfer_scores(
    classifier, model: str, settings: StudySettings, headlines, labels, seed: int | None = None
) -> list[TransferResult]:
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.tasks import LabelTask

    results = []
    for prompt in settings.transfer_prompts:
        task = LabelTask(list(labels), template=transfer_template(prompt))
        topical = Classifier(classifier.model, classifier.tokenizer, task, classifier.base_model)
        logger.info("Transfer: %s, prompt %s, %d headlines", model, prompt, len(headlines))
        modes = decodings(settings.transfer_decoding)
        scores = score_classifier(topical, headlines, modes, settings.batch_size, f"{model}, {prompt}")
        results.append(
            TransferResult(
                model, prompt, scores["constrained"], scores["calibrated"], scores.get("generate"), seed
            )
        )
    return results


def load_transfer(settings: StudySettings, recipe) -> tuple[list[Any], list[str]]:
    """The balanced sample of labelled headlines (empty when transfer is off) and their sorted labels."""
    from trainer_ext.data import balanced_sample, load_examples

    if not settings.transfer_samples or not settings.transfer_file:
        return [], []
    path = Path(settings.transfer_file).expanduser()
    if not path.is_absolute() and recipe.data.data_dir:
        path = Path(recipe.data.data_dir) / path
    examples = load_examples(
        path,
        settings.transfer_text_column,
        settings.transfer_label_column,
        decode_html=recipe.data.decode_html,
    )
    labels = sorted({ex.label for ex in examples if ex.label is not None})
    if settings.transfer_samples > len(examples):
        raise StudyError(
            f"--transfer_samples {settings.transfer_samples} is more than the {len(examples)} rows of "
            f"{path}; ask for fewer."
        )
    return balanced_sample(examples, settings.transfer_samples, settings.seed), labels
