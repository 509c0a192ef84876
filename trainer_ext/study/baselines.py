"""The classical baseline of the study: TF-IDF features and a logistic regression (scikit-learn).

It answers "how far does a bag of words get on this split?", the bar the language-model rows must clear.

>>> from trainer_ext.data import Example
>>> train = [Example("you are lovely", "neutral"), Example("you idiot", "offensive")] * 4
>>> result = tfidf_logreg(train, [Example("lovely day", "neutral")], labels=["offensive", "neutral"])
>>> result.predictions, result.metrics["accuracy"]
(['neutral'], 1.0)
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer_ext.evaluation.metrics import classification_metrics


@dataclass
class BaselineResult:
    """What a baseline (`tfidf_logreg`, `embedding_logreg`) measured.

    Args:
        metrics (`dict`): `classification_metrics` of the evaluation split.
        predictions (`list[str]`): The predicted label of each evaluation example, in order.
        trainable_params (`int`): Coefficients and intercepts of the logistic regression.
        train_runtime (`float`): Seconds to build the features and fit the model.
        train_samples_per_second (`float`): Training examples over `train_runtime`.
        peak_memory_mb (`float`): MiB. `tfidf_logreg`: peak of the Python and NumPy allocations of a fit
            (tracemalloc), not comparable to a process's resident size; `embedding_logreg`: the process's
            peak.
        test_metrics (`dict`, *optional*): `classification_metrics` of the test examples, when given.
        test_predictions (`list[str]`, *optional*): The predicted label of each test example.
    """

    metrics: dict[str, Any]
    predictions: list[str]
    trainable_params: int
    train_runtime: float
    train_samples_per_second: float
    peak_memory_mb: float
    test_metrics: dict[str, Any] | None = None
    test_predictions: list[str] | None = None


def tfidf_logreg(
    train: Sequence[Any],
    evaluation: Sequence[Any],
    labels: Sequence[str],
    seed: int = 42,
    max_features: int = 50_000,
    C: float = 1.0,
    class_weight: str | None = None,
    test: Sequence[Any] = (),
) -> BaselineResult:
    """Fit TF-IDF (word 1-2-grams and character 2-5-grams) + logistic regression and score it.

    Args:
        train (`Sequence[Example]`): Labelled training examples (`.text`, `.label`).
        evaluation (`Sequence[Example]`): Labelled evaluation examples.
        labels (`Sequence[str]`): The label set, in display order.
        seed (`int`, *optional*, defaults to 42): Seed of the solver.
        max_features (`int`, *optional*, defaults to 50000): Vocabulary size of each TF-IDF part.
        C (`float`, *optional*, defaults to 1.0): Inverse regularisation strength (scikit-learn's default).
        class_weight (`str`, *optional*): ``"balanced"`` weights classes by their inverse frequency
            (scikit-learn's option), for imbalanced data.
        test (`Sequence[Example]`, *optional*): A second labelled set scored by the same fit.

    Returns:
        `BaselineResult`.
    """
    import sklearn.base
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    if not train or not evaluation:
        raise ValueError(
            f"The baseline needs training and evaluation examples; got {len(train)} and {len(evaluation)}."
        )
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=max_features),
        TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, max_features=max_features
        ),
    )
    regression = LogisticRegression(C=C, max_iter=2000, random_state=seed, class_weight=class_weight)
    model = make_pipeline(features, regression)
    texts, gold = [ex.text for ex in train], [ex.label for ex in train]
    # Timed without tracing (tracemalloc slows allocation-heavy code), then fitted again under tracing.
    start = time.perf_counter()
    model.fit(texts, gold)
    runtime = time.perf_counter() - start
    peak = _traced_peak(lambda: sklearn.base.clone(model).fit(texts, gold))
    predictions = [str(p) for p in model.predict([ex.text for ex in evaluation])]
    regression = model[-1]
    tested = {}
    if test:
        test_predictions = [str(p) for p in model.predict([ex.text for ex in test])]
        tested = {
            "test_metrics": classification_metrics([ex.label for ex in test], test_predictions, labels),
            "test_predictions": test_predictions,
        }
    return BaselineResult(
        metrics=classification_metrics([ex.label for ex in evaluation], predictions, labels),
        predictions=predictions,
        trainable_params=int(regression.coef_.size + regression.intercept_.size),
        train_runtime=runtime,
        train_samples_per_second=len(train) / runtime if runtime > 0 else float("inf"),
        peak_memory_mb=peak / 2**20,
        **tested,
    )


def _traced_peak(work) -> int:
    """Peak bytes of the Python and NumPy allocations made by `work()`."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
