"""The study: every way of turning one causal LM into a classifier, on one split, in one run.

Rows (in table order):

| row                     | what                                                                        |
|-------------------------|-----------------------------------------------------------------------------|
| `tfidf-logreg`          | TF-IDF + logistic regression (scikit-learn), the classical baseline         |
| `embedding-logreg`      | a sentence encoder's embeddings + logistic regression (scikit-learn)        |
| `zero-shot`             | the frozen model and the prompt alone                                       |
| `zero-shot-calibrated`  | the same scores with contextual calibration (Zhao et al. 2021)              |
| `few-shot`              | the frozen model, `shots` balanced examples per label in the prompt         |
| `few-shot-calibrated`   | the same scores, calibrated                                                 |
| `norms`                 | trained: only the normalisation layers (the 1-D parameters)                 |
| `lora-attention`        | trained: LoRA adapters on the attention projections                         |
| `lora-all`              | trained: LoRA adapters on every linear layer and the input embedding       |
| `full`                  | trained: every parameter, unquantized (skipped above `full_max_params`)     |
| `classification-head`   | the LM as a sequence classifier, lora-all's adapters + a new linear head    |

Each trained row is one ``trainer-ext train`` subprocess per training seed (so its peak memory is its
own), started from one training recipe with the study's overrides; `embedding-logreg` and
`classification-head` run in a fresh Python process for the same reason (the head's run directory keeps
its metrics and its label per scored tweet, `predictions.csv`). The frozen rows are scored in
this process, with one model load. Then every model (the frozen base and each trained run) classifies a
balanced sample of BBC headlines into topic labels it never saw, zero-shot, with each transfer prompt,
uncalibrated and calibrated; a trained run's scores are kept beside it, so a study finished over several
sittings with ``--reuse`` scores each model once (`trainer_ext.study.run_scores`). A seeded row's runs
are combined by `combine_seeds` (mean, standard deviation, every run kept); `compare_report` writes the
table, the JSON and the chart.
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer_ext.runs.info import RunInfo, machine
from trainer_ext.study.heldout import examples_digest, load_test_set, score_test
from trainer_ext.study.run_scores import delete_scores, score_run
from trainer_ext.study.scoring import (
    RowResult,
    TransferResult,
    combine_seeds,
    decodings,
    load_transfer,
    score_classifier,
    short_scores,
    transfer_scores,
)
from trainer_ext.study.settings import (
    CALIBRATED_ROWS,
    EMBEDDING_ROW,
    FROZEN_ROWS,
    HEAD_ROW,
    TRAINED_ROWS,
    StudySettings,
    row_argv,
    run_path,
)

logger = logging.getLogger(__name__)

COMMAND_FILE = "compare_command.json"


@dataclass
class Study:
    """Everything a study measured (what `compare_report` renders)."""

    settings: dict[str, Any]
    rows: list[RowResult] = field(default_factory=list)
    transfer: list[TransferResult] = field(default_factory=list)
    transfer_labels: list[str] = field(default_factory=list)
    transfer_samples: int = 0
    eval_samples: int = 0
    test_samples: int = 0
    train_samples: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> RowResult | None:
        """The row called `name`, if the study has it."""
        return next((r for r in self.rows if r.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


# The rows.


def run_baseline(settings: StudySettings, train, evaluation, labels, test=()) -> RowResult:
    """The TF-IDF + logistic regression row."""
    from trainer_ext.study.baselines import tfidf_logreg

    logger.info("Row tfidf-logreg: fitting on %d examples", len(train))
    result = tfidf_logreg(train, evaluation, labels, seed=settings.seed, test=test)
    return RowResult(
        "tfidf-logreg",
        trainable_params=result.trainable_params,
        train_runtime=round(result.train_runtime, 2),
        train_samples_per_second=round(result.train_samples_per_second, 2),
        peak_memory_mb=round(result.peak_memory_mb, 1),
        constrained=short_scores(result.metrics),
        test=short_scores(result.test_metrics) if result.test_metrics else None,
        note="peak memory: Python/NumPy allocations of the fit (tracemalloc), not a process's resident size",
    )


def run_embeddings(settings: StudySettings, train, evaluation, labels, test=()) -> RowResult:
    """The embedding-logreg row: embeddings once, a regression per seed, in a fresh process."""
    from trainer_ext.study.embeddings import embedding_logreg, seed_rows

    logger.info("Row %s: %s, %d training examples", EMBEDDING_ROW, settings.embedding_model, len(train))
    args = (train, evaluation, labels, settings.embedding_model, settings.seeds, settings.batch_size)
    try:
        results = in_fresh_process(embedding_logreg, *args, test=list(test))
    except Exception as error:  # any failure of the row is reported in the table, the study goes on
        logger.error("Row %s failed: %s", EMBEDDING_ROW, error)
        return RowResult(EMBEDDING_ROW, status="failed", note=_one_line(error))
    return combine_seeds(EMBEDDING_ROW, seed_rows(results, settings.seeds, settings.embedding_model))


def _frozen_rows(row: str, wanted: list[str], scores: dict, note: str, tested: dict) -> list[RowResult]:
    """The rows of one frozen scoring pass: uncalibrated and calibrated, those asked for."""
    shared = {"trainable_params": 0, "train_runtime": 0.0, "epochs": 0.0}
    rows = []
    if row in wanted:
        rows.append(
            RowResult(
                row,
                constrained=scores.get("constrained"),
                generate=scores.get("generate"),
                test=tested.get("constrained"),
                note=note,
                **shared,
            )
        )
    if f"{row}-calibrated" in wanted:
        rows.append(
            RowResult(
                f"{row}-calibrated",
                constrained=scores.get("calibrated"),
                test=tested.get("calibrated"),
                note=(
                    "the same scores with the label bias of content-free inputs divided out; constrained only"
                ),
                **shared,
            )
        )
    return rows


def run_frozen(
    settings: StudySettings, recipe, train, evaluation, study: Study, headlines, topics, test=()
) -> None:
    """Score the frozen rows (zero-/few-shot, calibrated or not) and the base model's transfer, in-process."""
    from trainer_ext.evaluation.reports import peak_memory_mb
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.tasks import LabelTask

    wanted = [r for r in settings.rows if r in FROZEN_ROWS or r in CALIBRATED_ROWS]
    if not wanted and not headlines:
        return
    task = LabelTask.from_settings(recipe.task)
    m = recipe.model
    logger.info("Loading the frozen model %s (%s)", m.model_name_or_path, m.quantization)
    base = Classifier.from_base(m.model_name_or_path, task, m.quantization, max_length=recipe.task.max_length)
    study.info["total_params"] = sum(p.numel() for p in base.model.parameters())
    modes = decodings(settings.eval_decoding)
    for row in (r for r in FROZEN_ROWS if r in wanted or f"{r}-calibrated" in wanted):
        classifier, note = base, ""
        if row == "few-shot":
            shots = task.with_shots(train, settings.shots, recipe.data.sample_seed)
            classifier = Classifier(
                base.model, base.tokenizer, shots, m.model_name_or_path, settings.few_shot_max_length
            )
            note = f"; {settings.shots} example(s) per label in the prompt"
        logger.info("Row %s: scoring %d examples (%s)", row, len(evaluation), ", ".join(modes))
        started = time.perf_counter()
        scores = score_classifier(classifier, evaluation, modes, settings.batch_size, row)
        note = f"inference only, {time.perf_counter() - started:.0f} s for {len(evaluation)} examples" + note
        tested = score_test(classifier, test, settings.batch_size, row)
        study.rows.extend(_frozen_rows(row, wanted, scores, note, tested))
    peak = round(peak_memory_mb(next(base.model.parameters()).device), 1)
    for result in study.rows:
        if result.name in FROZEN_ROWS or result.name in CALIBRATED_ROWS:
            result.peak_memory_mb = peak
    if headlines:
        study.transfer.extend(transfer_scores(base, "base", settings, headlines, topics))
    del base
    gc.collect()


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def _tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return " | ".join(line.strip() for line in text[-lines:])


def _reusable(settings: StudySettings, run_dir: Path, argv: list[str]) -> bool:
    """Whether `run_dir` holds a finished run of the very same arguments (and ``reuse`` is on)."""
    stamp = run_dir / COMMAND_FILE
    return (
        settings.reuse
        and (run_dir / "metrics.json").is_file()
        and stamp.is_file()
        and json.loads(stamp.read_text(encoding="utf-8")) == argv
    )


def train_row(
    settings: StudySettings, row: str, argv: list[str], run_dir: Path, log_dir: Path, seed: int | None = None
) -> RowResult:
    """Run one trained row (one seed) as a ``trainer-ext train`` subprocess, or reuse a finished identical
    run; the log is ``log_dir/ROW-seed-SEED.log`` (``ROW.log`` without a seed)."""
    command = [sys.executable, "-m", "trainer_ext.cli.train", *argv]
    stamp = run_dir / COMMAND_FILE
    reusable = _reusable(settings, run_dir, argv)
    log = log_dir / (f"{row}-seed-{seed}.log" if seed is not None else f"{row}.log")
    if reusable:
        logger.info("Row %s: reusing the finished run in %s", row, run_dir)
    else:
        logger.info("Row %s: training (log: %s)", row, log)
        log_dir.mkdir(parents=True, exist_ok=True)
        delete_scores(run_dir)  # an earlier model's scores, and its stamp: a run that dies half-way
        stamp.unlink(missing_ok=True)  # is then never taken for a finished one
        started = time.perf_counter()
        with log.open("w", encoding="utf-8") as handle:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
        if code != 0 or not (run_dir / "metrics.json").is_file():
            logger.error("Row %s failed (exit %d); see %s", row, code, log)
            return RowResult(
                row, status="failed", seed=seed, note=f"exit {code}: {_tail(log)} (full log: {log})"
            )
        stamp.write_text(json.dumps(argv) + "\n", encoding="utf-8")
        logger.info("Row %s: done in %.0f s", row, time.perf_counter() - started)
    metrics = _read_metrics(run_dir)
    generate = None
    if "eval_generate_accuracy" in metrics:
        generate = short_scores(
            {k: metrics[f"eval_generate_{k}"] for k in ("accuracy", "macro_f1", "invalid_rate")}
        )
    info = RunInfo.load(run_dir)
    return RowResult(
        row,
        trainable_params=int(metrics["trainable_params"]),
        train_runtime=round(float(metrics.get("train_runtime", 0.0)), 1),
        train_samples_per_second=round(float(metrics.get("train_samples_per_second", 0.0)), 3),
        peak_memory_mb=metrics.get("peak_memory_mb"),
        constrained=short_scores({k: metrics[f"eval_{k}"] for k in ("accuracy", "macro_f1", "invalid_rate")}),
        generate=generate,
        epochs=float(info.training.get("num_train_epochs", 0.0)),
        run_dir=str(run_dir),
        seed=seed,
        note=f"{_weights(info.quantization)}, optimizer {info.optimizer}"
        + ("; reused a finished run (trained by an earlier study)" if reusable else ""),
    )


def _weights(quantization: str | None) -> str:
    return "unquantized weights" if quantization == "none" else f"{quantization} weights"


def _too_big(settings: StudySettings, study: Study) -> int | None:
    """The model's parameter count when it is above `full_max_params` (known once a model was loaded)."""
    runs = [run for row in study.rows for run in [row, *row.per_seed] if run.run_dir]
    counts = [study.info.get("total_params")] + [
        _read_metrics(Path(run.run_dir)).get("total_params") for run in runs
    ]
    known = [int(c) for c in counts if c]
    return known[0] if known and known[0] > settings.full_max_params else None


def run_trained(settings: StudySettings, study: Study, headlines, topics, test=()) -> None:
    """Train every requested method, one subprocess each, then score it on the test set and its transfer to
    the topics (or read those scores back: `score_run`)."""
    for row in (r for r in settings.rows if r in TRAINED_ROWS):
        if row == "full" and (count := _too_big(settings, study)):
            study.rows.append(
                RowResult(
                    row,
                    status="skipped",
                    note=f"{count:,} parameters is above --full_max_params "
                    f"{settings.full_max_params:,}; train a LoRA method instead",
                )
            )
            continue
        runs = []
        for seed in settings.seeds:
            run_dir = run_path(settings, row, seed)
            argv = row_argv(settings, row, run_dir, seed)
            runs.append(train_row(settings, row, argv, run_dir, settings.runs_path / "logs", seed))
            if runs[-1].status == "ok" and (headlines or test):
                scored = score_run(settings, row, seed, run_dir, argv, test, headlines, topics)
                runs[-1].test = scored[0]
                study.transfer.extend(scored[1])
        study.rows.append(combine_seeds(row, runs))


def head_run(settings: StudySettings, seed: int, test=()) -> RowResult:
    """One seed of the classification-head row, in a fresh process (or a finished identical run reused:
    same arguments and same test set)."""
    from trainer_ext.evaluation.reports import write_metrics
    from trainer_ext.study.head import PREDICTIONS_FILE, seed_row, train_head, write_head_predictions

    run_dir = run_path(settings, HEAD_ROW, seed)
    argv = row_argv(settings, HEAD_ROW, run_dir, seed)
    stamp = argv + ([f"test set {examples_digest(test)}"] if test else [])  # its test scores are kept
    # a run of a version that saved no labels is trained again, so that it can be paired tweet by tweet
    reused = _reusable(settings, run_dir, stamp) and (run_dir / PREDICTIONS_FILE).is_file()
    if not reused:
        logger.info("Row %s, seed %d: training", HEAD_ROW, seed)
        try:
            metrics = in_fresh_process(train_head, argv, test=list(test))
        except Exception as error:  # any failure of the row is reported in the table, the study goes on
            logger.error("Row %s, seed %d failed: %s", HEAD_ROW, seed, error)
            return RowResult(HEAD_ROW, status="failed", seed=seed, note=_one_line(error))
        run_dir.mkdir(parents=True, exist_ok=True)
        write_head_predictions(run_dir, metrics.pop("predictions"))
        write_metrics(run_dir, metrics)
        (run_dir / COMMAND_FILE).write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    return seed_row(_read_metrics(run_dir), str(run_dir), seed, reused)


def in_fresh_process(function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)`` in a new Python process (spawned, logging at this process's level), so
    that its peak memory is its own; its exception, if any, is raised here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    with ProcessPoolExecutor(1, mp_context=context, initializer=_child_logging, initargs=(level,)) as pool:
        return pool.submit(function, *args, **kwargs).result()


def _child_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _one_line(error: BaseException) -> str:
    """An error as one line: its message (the type first, unless it is a user error)."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    return message if isinstance(error, ValueError) and message else f"{type(error).__name__}: {message}"


def run_study(settings: StudySettings) -> Study:
    """Run every row of the study and return what it measured (nothing is written; see `compare_report`).

    Args:
        settings (`StudySettings`): The study (rows, recipe, overrides, transfer, seeds).

    Returns:
        `Study`: the rows in table order and the transfer results.
    """
    from trainer_ext.data import load_split
    from trainer_ext.training.recipe import parse_recipe

    started = time.perf_counter()
    recipe = parse_recipe(row_argv(settings, "zero-shot", settings.runs_path / "zero-shot"))
    for row in (r for r in settings.rows if r in (*TRAINED_ROWS, HEAD_ROW)):  # recipe errors before any work
        parse_recipe(row_argv(settings, row, run_path(settings, row, settings.seeds[0])))
    labels = list(recipe.task.labels)
    train = load_split(recipe.data, "train", labels=labels)
    evaluation = load_split(recipe.data, "eval", labels=labels)
    test = load_test_set(settings, recipe, labels, [*train, *evaluation])
    headlines, topics = load_transfer(settings, recipe)
    study = Study(
        settings=settings.to_dict(),
        transfer_labels=topics,
        transfer_samples=len(headlines),
        eval_samples=len(evaluation),
        test_samples=len(test),
        train_samples=len(train),
        info={
            "model": recipe.model.model_name_or_path,
            "quantization": recipe.model.quantization,
            "labels": labels,
            "recipe": settings.recipe_path.as_posix(),
        },
    )
    if "tfidf-logreg" in settings.rows:
        study.rows.append(run_baseline(settings, train, evaluation, labels, test))
    if EMBEDDING_ROW in settings.rows:
        study.rows.append(run_embeddings(settings, train, evaluation, labels, test))
    run_frozen(settings, recipe, train, evaluation, study, headlines, topics, test)
    run_trained(settings, study, headlines, topics, test)
    if HEAD_ROW in settings.rows:
        heads = [head_run(settings, seed, test) for seed in settings.seeds]
        study.rows.append(combine_seeds(HEAD_ROW, heads))
    order = {name: i for i, name in enumerate(settings.rows)}
    study.rows.sort(key=lambda r: order[r.name])
    study.info.update(machine(), wall_seconds=round(time.perf_counter() - started, 1))
    return study
