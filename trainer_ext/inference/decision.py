"""Decision tuning for the class prior: one additive offset per label on the log-probabilities of
constrained scoring, fitted on a labelled dev set to maximise a label metric (macro-F1 by default).

On imbalanced data the argmax of the label probabilities under-predicts rare classes: training saw them
rarely, so their probabilities are low even when they are the best answer. Shifting each label's
log-probability by a constant moves the decision boundaries without retraining. This is the
threshold-moving / prior-correction idea for classifiers (e.g. Saerens, Latinne & Decaestecker 2002,
"Adjusting the outputs of a classifier to new a priori probabilities"); here the offsets are chosen
directly for the metric by coordinate ascent on a grid.

It relates to contextual calibration (`trainer_ext.inference.scoring.contextual_calibration`, Zhao et al.
2021), which divides the probabilities by those of content-free inputs: that is also an additive offset
on the log-probabilities, ``-log p(label | "N/A")``, estimated without labels. The two combine:
calibration first, then the fitted offsets.

>>> import torch
>>> probs = torch.tensor([[0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
>>> apply_decision_bias(probs, ["a", "b"], {"b": 0.5}).argmax(-1).tolist()
[1, 1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Offsets tried for each label, in log-probability units (natural log).
GRID = tuple(x / 4 for x in range(-24, 25))
ROUNDS = 3


def apply_decision_bias(probs: torch.Tensor, labels: Sequence[str], bias: dict[str, float]) -> torch.Tensor:
    """Probabilities with each label's log-probability shifted by `bias[label]`, renormalised.

    Args:
        probs (`torch.Tensor`): `(N, L)` label probabilities, columns in the order of `labels`.
        labels (`Sequence[str]`): The labels of the columns.
        bias (`dict[str, float]`): Offset per label (missing labels: 0).

    Returns:
        `torch.Tensor`: `(N, L)` probabilities; `probs` itself when `bias` is empty.
    """
    if not bias:
        return probs
    offsets = torch.tensor([float(bias.get(label, 0.0)) for label in labels], dtype=torch.float64)
    logits = probs.double().clamp_min(1e-30).log() + offsets  # (N, L)
    return torch.softmax(logits, dim=-1).to(probs.dtype)


def _score(log_probs: torch.Tensor, offsets: torch.Tensor, gold: torch.Tensor, labels, metric: str) -> float:
    """`metric` of the argmax of `log_probs + offsets` against `gold` (label indices)."""
    from sklearn.metrics import precision_recall_fscore_support

    predicted = (log_probs + offsets).argmax(-1).numpy()
    truth = gold.numpy()
    name = metric.removeprefix("eval_").removeprefix("dev_")
    if name == "accuracy":
        return float((predicted == truth).mean())
    ids = list(range(len(labels)))
    precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, labels=ids, zero_division=0)
    if name == "macro_f1":
        return float(f1.mean())
    kind, _, label = name.partition("_")
    per_class = {"precision": precision, "recall": recall, "f1": f1}
    if kind in per_class and label in labels:
        return float(per_class[kind][labels.index(label)])
    raise ValueError(f"Unknown label metric {metric!r}; use macro_f1, accuracy, or e.g. recall_<label>.")


def fit_decision_bias(
    probs: torch.Tensor, gold: Sequence[str], labels: Sequence[str], metric: str = "macro_f1"
) -> dict[str, float]:
    """Offsets per label that maximise `metric` on a labelled set (coordinate ascent over `GRID`).

    The first label's offset stays 0 (only differences between offsets matter). Ties keep the smaller
    offset change, so with no gain the result is all zeros.

    Args:
        probs (`torch.Tensor`): `(N, L)` label probabilities of the dev set (after calibration, if used).
        gold (`Sequence[str]`): The `N` gold labels.
        labels (`Sequence[str]`): The `L` labels, in column order.
        metric (`str`, *optional*, defaults to `"macro_f1"`): ``macro_f1``, ``accuracy`` or ``recall_LABEL`` /
            ``f1_LABEL`` / ``precision_LABEL``.

    Returns:
        `dict[str, float]`: label -> offset (natural log units).

    Raises:
        `ValueError`: for an empty set, a gold label not in `labels`, or an unknown metric.
    """
    if len(gold) == 0 or probs.shape[0] != len(gold):
        raise ValueError(
            f"Decision tuning needs one gold label per row of probs; got {len(gold)} for "
            f"{tuple(probs.shape)}."
        )
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for label in gold if label not in index})
    if unknown:
        raise ValueError(f"Gold labels {unknown} are not among {list(labels)}.")
    log_probs = probs.double().clamp_min(1e-30).log()  # (N, L)
    gold_ids = torch.tensor([index[label] for label in gold])
    offsets = torch.zeros(len(labels), dtype=torch.float64)
    best = _score(log_probs, offsets, gold_ids, list(labels), metric)
    for _ in range(ROUNDS):
        improved = False
        for j in range(1, len(labels)):
            for value in sorted(GRID, key=lambda v: abs(v - offsets[j].item())):
                trial = offsets.clone()
                trial[j] = value
                score = _score(log_probs, trial, gold_ids, list(labels), metric)
                if score > best + 1e-12:
                    best, offsets, improved = score, trial, True
        if not improved:
            break
    return {label: float(offsets[i]) for i, label in enumerate(labels)}
