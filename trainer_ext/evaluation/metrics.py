"""Metrics of generated labels: accuracy, macro-F1, per-class scores, confusion matrix, invalid rate.

The metric is an `evaluate.Metric` defined here rather than fetched with ``evaluate.load("accuracy")``:
the Hub-hosted metric scripts need a network, and a training run must not. The arithmetic is
scikit-learn's, as in those scripts.

A prediction that is not one of the labels (a generated answer that parses to nothing) is *invalid*:
it counts as wrong for accuracy, lowers the recall of its gold class, and has a column of its own in
the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

INVALID = "<invalid>"


class LabelMetric(evaluate.Metric):
    """Classification metrics over label strings, with invalid predictions counted apart.

    Example:

    ```python
    >>> metric = LabelMetric()
    >>> scores = metric.compute(
    ...     predictions=["hate", "neutral", None, "neutral"],
    ...     references=["hate", "offensive", "offensive", "neutral"],
    ...     labels=["hate", "offensive", "neutral"],
    ... )
    >>> scores["accuracy"], scores["invalid_rate"]
    (0.5, 0.25)
    >>> scores["confusion_matrix"]  # rows: gold labels; columns: labels, then invalid
    [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0]]

    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, invalid rate "
            "of generated labels.",
            citation="",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self, predictions=None, references=None, labels: Sequence[str] | None = None
    ) -> dict[str, Any]:
        labels = list(labels if labels is not None else sorted(set(references)))
        predicted = [p if p in labels else INVALID for p in predictions]
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predicted, labels=labels, zero_division=0
        )
        matrix = confusion_matrix(references, predicted, labels=[*labels, INVALID])[: len(labels)]
        scores: dict[str, Any] = {
            "accuracy": float(np.mean([p == r for p, r in zip(predicted, references, strict=False)]))
            if references
            else 0.0,
            "macro_f1": float(np.mean(f1)) if labels else 0.0,
            "invalid_rate": float(np.mean([p == INVALID for p in predicted])) if predicted else 0.0,
            "confusion_matrix": matrix.tolist(),
            "labels": labels,
        }
        for i, label in enumerate(labels):
            scores[f"precision_{label}"] = float(precision[i])
            scores[f"recall_{label}"] = float(recall[i])
            scores[f"f1_{label}"] = float(f1[i])
            scores[f"support_{label}"] = int(support[i])
        return scores


def classification_metrics(
    references: Sequence[str], predictions: Sequence[str | None], labels: Sequence[str]
) -> dict[str, Any]:
    """Scores of predicted labels against gold labels.

    Args:
        references (`Sequence[str]`): Gold labels.
        predictions (`Sequence[str | None]`): Predicted labels; `None` or any string outside
            `labels` is invalid.
        labels (`Sequence[str]`): The label set, in display order.

    Returns:
        `dict`: `accuracy`, `macro_f1`, `invalid_rate`, `confusion_matrix` (rows: gold, columns: labels then
        invalid), `labels`, and `precision_<label>`, `recall_<label>`, `f1_<label>`, `support_<label>`.

    Example:

    ```python
    >>> m = classification_metrics(["a", "b", "b"], ["a", "b", "a"], labels=["a", "b"])
    >>> round(m["accuracy"], 3), round(m["macro_f1"], 3), m["invalid_rate"]
    (0.667, 0.667, 0.0)

    ```
    """
    if len(references) != len(predictions):
        raise ValueError(
            f"{len(references)} references but {len(predictions)} predictions; they must pair up."
        )
    unknown = sorted({r for r in references if r not in labels})
    if unknown:
        raise ValueError(f"Gold labels {unknown} are not in the label set {list(labels)}.")
    cleaned = [p if isinstance(p, str) else INVALID for p in predictions]
    return LabelMetric().compute(predictions=cleaned, references=list(references), labels=list(labels))


def selection_metrics(labels: Sequence[str]) -> list[str]:
    """The label metrics a model can be selected on (``metric_for_best_model``), higher is better.

    >>> selection_metrics(["a", "b"])[:4]
    ['accuracy', 'macro_f1', 'precision_a', 'recall_a']
    """
    per_class = [f"{kind}_{label}" for label in labels for kind in ("precision", "recall", "f1")]
    return ["accuracy", "macro_f1", *per_class]


def flat_metrics(scores: dict[str, Any], prefix: str = "eval_") -> dict[str, float]:
    """The scalar entries of `classification_metrics` with a prefix, for logs and `metrics.json`."""
    return {f"{prefix}{key}": value for key, value in scores.items() if isinstance(value, (int, float))}
