"""Class weights for the completion-only loss, and the weights of a class-balanced sampler.

`balanced` weights each sample by ``n_samples / (n_classes * n_class)``, as scikit-learn's
`compute_class_weight("balanced")` does (the weights are taken from it). Any weights are then rescaled so
that their mean over the training samples is 1: the weighted loss of an epoch has the scale of the
unweighted one, and the learning rate keeps its meaning.

>>> from trainer_ext.data import Example
>>> train = [Example("a", "x")] * 3 + [Example("b", "y")]
>>> class_weights(train, ["x", "y"], "balanced")
{'x': 0.6666666666666666, 'y': 2.0}
>>> class_weights(train, ["x", "y"], {"x": 1, "y": 3})
{'x': 0.6666666666666666, 'y': 2.0}
>>> sampler_weights(train)
[0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

CLASS_WEIGHTING = ("none", "balanced")
TRAIN_SAMPLINGS = ("default", "balanced")


class WeightsError(ValueError):
    """Class weights that cannot be used; the message says which label or value is wrong."""


def parse_class_weights(value: Any) -> str | dict[str, float]:
    """`none`, `balanced`, or a mapping label -> weight (a dict, or its JSON text from the command line)."""
    if value is None:
        return "none"
    if isinstance(value, str) and value.strip() in CLASS_WEIGHTING:
        return value.strip()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise WeightsError(
                f"class_weights {value!r} is neither none, balanced nor a JSON mapping such as "
                '\'{"hate": 5, "offensive": 1, "neutral": 2}\'.'
            ) from None
    if not isinstance(value, Mapping) or not value:
        raise WeightsError(
            f"class_weights must be none, balanced or a mapping label -> weight, got {value!r}."
        )
    weights = {}
    for label, weight in value.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise WeightsError(f"class_weights[{label!r}] must be a positive number, got {weight!r}.")
        weights[str(label)] = float(weight)
    return weights


def class_weights(
    examples: Sequence[Any], labels: Sequence[str], spec: str | Mapping[str, float]
) -> dict[str, float] | None:
    """The weight of each label for the loss, rescaled to a mean of 1 over `examples`; `None` for `none`.

    Args:
        examples (`Sequence[Example]`): The training examples (their `label`).
        labels (`Sequence[str]`): The task's labels.
        spec (`str` or `Mapping[str, float]`): ``"none"``, ``"balanced"``, or label -> weight.

    Raises:
        `WeightsError`: for a label of the mapping that is not the task's, or a task label it misses.
    """
    spec = parse_class_weights(spec)
    if spec == "none":
        return None
    counts = Counter(example.label for example in examples)
    if spec == "balanced":
        import numpy as np
        from sklearn.utils.class_weight import compute_class_weight

        present = [label for label in labels if counts.get(label)]
        values = compute_class_weight(
            "balanced", classes=np.array(present), y=np.array([example.label for example in examples])
        )
        raw = {label: float(value) for label, value in zip(present, values, strict=True)}
    else:
        unknown = sorted(set(spec) - set(labels))
        missing = [label for label in labels if label not in spec]
        if unknown or missing:
            problems = [f"{unknown} are not labels of the task"] if unknown else []
            problems += [f"{missing} have no weight"] if missing else []
            raise WeightsError(
                f"class_weights: {' and '.join(problems)}; give one weight for each of {list(labels)}."
            )
        raw = dict(spec)
    total = sum(raw.get(str(example.label), 0.0) for example in examples)
    scale = len(examples) / total if total else 1.0
    return {label: raw[label] * scale for label in labels if label in raw}


def sampler_weights(examples: Sequence[Any]) -> list[float]:
    """Per-sample weights that draw every class equally often: ``1 / n_class`` of the sample's class."""
    counts = Counter(example.label for example in examples)
    return [1.0 / counts[example.label] for example in examples]
