"""Scoring for the study: a `Classifier` on labelled examples (constrained, calibrated, generate), and the
zero-shot transfer of a model to a labelled set of unseen topics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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
    """

    model: str
    prompt: str
    constrained: dict[str, float]
    calibrated: dict[str, float]
    generate: dict[str, float] | None = None


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


def decodings(value: str) -> tuple[str, ...]:
    return ("constrained", "generate") if value == "both" else (value,)


def transfer_scores(
    classifier, model: str, settings: StudySettings, headlines, labels
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
            TransferResult(model, prompt, scores["constrained"], scores["calibrated"], scores.get("generate"))
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
