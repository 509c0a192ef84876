"""The training pipeline of a recipe, as library functions: `prepare_data` -> `build` -> `run`.

`trainer-ext train` is a thin command line over `run`; scripts and notebooks can call the same steps.
Data (files, columns, labels) is read and checked before any model loads, so a bad row or a missing
file is reported in a second, not after minutes of loading a large model.

With ``validation_split`` a stratified dev set is carved out of the training data: evaluation during
training, the best checkpoint, early stopping and decision tuning use it, and the eval file stays a test
set that no choice was made on (``dev_*`` and ``eval_*`` in `metrics.json`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_ext.data import DataError, Example, load_split
from trainer_ext.data.report import DataReport, build_report, drop_seen
from trainer_ext.data.splits import split_dev
from trainer_ext.runs.info import DataSource, RunInfo
from trainer_ext.tasks import LabelTask
from trainer_ext.training.recipe import Recipe
from trainer_ext.training.weights import class_weights

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The splits of a recipe and the task built on them (no model needed).

    Args:
        train (`list[Example]`): Training examples.
        eval (`list[Example]`): Evaluation (test) examples.
        task (`LabelTask`): The task, its labels given by the recipe or found in the training data.
        dev (`list[Example]`, *optional*): The dev set carved out of the training data (`validation_split`).
        report (`DataReport`, *optional*): Counts, missing labels and duplicates of the splits.
        class_weights (`dict[str, float]`, *optional*): The loss weight of each label (`class_weights`).
    """

    train: list[Example]
    eval: list[Example]
    task: LabelTask
    dev: list[Example] | None = None
    report: DataReport | None = None
    class_weights: dict[str, float] | None = None

    def splits(self) -> dict[str, list[Example]]:
        """The splits by name: ``train``, ``dev`` (when there is one), ``eval``."""
        return {"train": self.train, **({"dev": self.dev} if self.dev is not None else {}), "eval": self.eval}


def _labels_of(examples: list[Example]) -> list[str]:
    return sorted({str(example.label) for example in examples})


def _warn_numeric(labels: list[str]) -> None:
    if all(label.strip().lstrip("-").isdigit() for label in labels):
        logger.warning(
            "The labels %s are numbers: the model learns to write them, and a number tells it nothing about "
            'the class. Map them to words with label_mapping (e.g. {"0": "negative", "1": "positive"}) and '
            "set labels to those words.",
            labels,
        )


def prepare_data(recipe: Recipe) -> PreparedData:
    """Read and check the recipe's data, carve the dev set, build the task and the data report.

    Without `labels` in the recipe, the task's labels are the distinct labels of the training data,
    sorted (logged).

    Raises:
        `DataError` or `TaskError`: naming the file, row and column, or the setting, that is wrong.
    """
    settings = recipe.data
    labels = list(recipe.task.labels) if recipe.task.labels else None
    train = load_split(settings, "train", labels=labels)
    if labels is None:
        labels = _labels_of(train)
        logger.info("labels not set: using the %d labels found in the training data: %s", len(labels), labels)
    _warn_numeric(labels)
    if len(labels) < 2:
        raise DataError(
            f"The task has one label ({labels}): a classifier needs at least two; add rows of the other "
            "classes, or set labels."
        )
    try:
        evaluation = load_split(settings, "eval", labels=labels)
    except DataError as error:
        if recipe.task.labels:
            raise
        raise DataError(
            f"{error} The labels were taken from the training rows ({labels}); a class with a single row "
            "can end up only in the held-out evaluation rows: give every class 2 rows or more, or set labels."
        ) from None
    _check_options(recipe, labels)
    dev = None
    if settings.validation_split:
        train, dev = split_dev(train, settings.validation_split, settings.sample_seed)
    task = LabelTask.from_settings(
        dataclasses.replace(recipe.task, labels=labels), shot_examples=train, seed=settings.sample_seed
    )
    data = PreparedData(train, evaluation, task, dev)
    data.class_weights = class_weights(train, labels, recipe.training.class_weights)  # checked now
    data.report = build_report(data.splits(), labels)
    if settings.drop_eval_duplicates:
        before = len(data.eval) + len(data.dev or [])
        data.eval = drop_seen(data.eval, train)
        data.dev = drop_seen(data.dev, train) if data.dev is not None else None
        data.report.dropped_duplicates = before - len(data.eval) - len(data.dev or [])
        if not data.eval:
            raise DataError("Every evaluation row repeats a training text; nothing is left to evaluate.")
    data.report.log()
    return data


def _check_options(recipe: Recipe, labels: list[str]) -> None:
    """Refuse option combinations that would fail after training, and warn about a reused run directory."""
    from pathlib import Path

    from trainer_ext.evaluation.metrics import selection_metrics

    args = recipe.training
    if args.tune_decision_bias and not recipe.data.validation_split:
        raise DataError("tune_decision_bias needs a dev set: set validation_split (e.g. 0.1).")
    metric = args.metric_for_best_model
    known = selection_metrics(labels)
    if metric and metric.removeprefix("eval_") not in ("loss", *known):
        raise DataError(
            f"metric_for_best_model {metric!r} is not a metric of this task; choose loss or one of "
            f"{', '.join(known)}."
        )
    output = Path(args.output_dir)
    if (output / "run.json").is_file() and not args.resume_from_checkpoint:
        logger.warning(
            "output_dir %s already holds a run: its weights, task, metrics and predictions will be replaced "
            "when this run ends.",
            output,
        )


def _early_stopping(recipe: Recipe) -> list:
    args = recipe.training
    if args.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    if not (args.load_best_model_at_end and args.metric_for_best_model):
        raise DataError(
            "early_stopping_patience needs load_best_model_at_end: true and metric_for_best_model (e.g. "
            "macro_f1), with eval_strategy and save_strategy both epoch or both steps."
        )
    return [EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)]


def build(recipe: Recipe, data: PreparedData | None = None):
    """Model, task and `LabelTrainer` of a recipe (the dev set, when there is one, is its eval set).

    Returns:
        `(LoadedModel, LabelTask, LabelTrainer)`.
    """
    from transformers import set_seed

    from trainer_ext.modeling.loading import load_model
    from trainer_ext.training.host_memory import fix_mmap_threshold
    from trainer_ext.training.trainer import LabelDataset, LabelTrainer

    data = data or prepare_data(recipe)
    if recipe.training.release_host_memory and recipe.training.device.type == "cpu":
        fix_mmap_threshold()  # before loading, so that its temporary copies are given back too
    set_seed(recipe.training.seed)
    m = recipe.model
    loaded = load_model(
        m.model_name_or_path,
        quantization=m.quantization,
        lora=recipe.lora,
        dtype=m.dtype,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
        gradient_checkpointing=recipe.training.gradient_checkpointing,
    )
    length = (recipe.task.max_length, recipe.task.truncation_side)
    weights = data.class_weights
    if weights is None:
        weights = class_weights(data.train, data.task.labels, recipe.training.class_weights)
    if weights:
        logger.info("Class weights of the loss (mean 1 over the training rows): %s", weights)
    if data.task.training_variation.active:
        logger.info("Training prompts vary per sample: %s", data.task.training_variation.to_dict())
    _hint_cpu_precision(recipe, loaded.dtype)
    train = LabelDataset(
        data.train,
        loaded.tokenizer,
        data.task,
        *length,
        class_weights=weights,
        variation_seed=recipe.training.seed,
    )
    evaluation = LabelDataset(data.dev or data.eval, loaded.tokenizer, data.task, *length)
    trainer = LabelTrainer(
        model=loaded.model,
        args=recipe.training,
        task=data.task,
        processing_class=loaded.tokenizer,
        train_dataset=train,
        eval_dataset=evaluation,
        callbacks=_early_stopping(recipe),
    )
    data.report.truncated = {"train": train.truncated, "eval": evaluation.truncated}
    return loaded, data.task, trainer


def _hint_cpu_precision(recipe: Recipe, dtype: Any) -> None:
    """Say what ``bf16: auto`` chose, and when the model computes in bf16 or fp16 (autocast, or weights of
    that `dtype`) on a CPU that only emulates it: slowly without AVX-512 (bf16) or on any CPU (fp16), at
    1/1.4 of float32's speed with AVX-512 (bf16)."""
    import torch

    from trainer_ext.modeling.loading import cpu_bf16_is_slow, cpu_supports_bf16

    training = recipe.training
    if training.device.type != "cpu":
        return
    bf16 = [
        name
        for name, on in (("bf16 autocast", training.bf16), ("--dtype bfloat16", dtype is torch.bfloat16))
        if on
    ]
    fp16 = [
        name
        for name, on in (("fp16 autocast", training.fp16), ("--dtype float16", dtype is torch.float16))
        if on
    ]
    if recipe.bf16_auto and not training.bf16:
        computes = (
            f"but {' and '.join(bf16 + fp16)} computes in half precision"
            if bf16 + fp16
            else "computes in float32"
        )
        logger.info(
            "bf16: auto -> false: this CPU has neither native bf16 nor AVX-512, so bf16 matmuls would run "
            f"in a slow fallback; training {computes} (README, 'Precision on CPUs without AVX-512')."
        )
    slow = fp16 + (bf16 if cpu_bf16_is_slow() else [])
    if slow:
        logger.warning(
            f"Training computes in half precision ({' and '.join(slow)}) on a CPU where its matmuls run in a "
            "slow fallback: a step of the main job took 9x as long in bf16 as in float32 on a CPU without "
            "native bf16 or AVX-512, and an 8-bit LoRA step 10-20x as long in fp16 as in bf16. Use "
            "--bf16 auto --fp16 false --dtype auto (README, 'Precision on CPUs without AVX-512')."
        )
    elif training.bf16 and not cpu_supports_bf16():
        logger.info(
            "This CPU has no native bf16 (AVX-512 BF16 or AMX), so bf16 autocast is converted in software: "
            "--bf16 false --dtype float32 trained the main job 1.4x faster on such a CPU, at a peak of "
            "1.9 GB instead of 1.45 GB (README, 'Speed and memory')."
        )


def _sources(recipe: Recipe, data: PreparedData) -> list[DataSource]:
    settings = recipe.data
    dev = len(data.dev) if data.dev is not None else 0
    if settings.hub_dataset:
        hub = settings.hub_dataset
        sources = [DataSource("train", len(data.train), hub_dataset=hub)]
        sources += [DataSource("dev", dev, hub_dataset=hub, held_out=True)] if dev else []
        return [*sources, DataSource("eval", len(data.eval), hub_dataset=hub)]
    train_path = str(settings.resolve(settings.train_file))
    eval_path = str(settings.resolve(settings.eval_file)) if settings.eval_file else train_path
    sources = [DataSource("train", len(data.train), path=train_path)]
    sources += [DataSource("dev", dev, path=train_path, held_out=True)] if dev else []
    return [*sources, DataSource("eval", len(data.eval), path=eval_path, held_out=not settings.eval_file)]


def run_info(recipe: Recipe, loaded, data: PreparedData, notes: dict[str, Any] | None = None) -> RunInfo:
    """The record of a run (`run.json`): what was loaded, trained and read."""
    settings = dataclasses.asdict(recipe.data)
    settings.update(recipe.data.sources())
    training = recipe.training
    optim = training.optim
    return RunInfo(
        base_model=recipe.model.model_name_or_path,
        quantization=loaded.quantization,
        method=loaded.method,
        dtype=str(loaded.dtype).removeprefix("torch."),
        autocast="bfloat16" if training.bf16 else "float16" if training.fp16 else None,
        base_model_hub_id=recipe.model.base_model_id,
        optimizer=str(getattr(optim, "value", optim)),
        trainable_params=loaded.trainable_params,
        total_params=loaded.total_params,
        lora=dataclasses.asdict(recipe.lora),
        task={**dataclasses.asdict(recipe.task), "labels": list(data.task.labels)},
        data=settings,
        sources=_sources(recipe, data),
        training=recipe.to_dict(),
        eval_samples=len(data.eval),
        notes={"data_report": data.report.to_dict() if data.report else None, **(notes or {})},
    )


def _best_checkpoint(trainer, on_dev: bool) -> dict[str, Any] | None:
    state, args = trainer.state, trainer.args
    if not (args.load_best_model_at_end and state.best_model_checkpoint):
        return None
    step = int(state.best_model_checkpoint.rstrip("/").rsplit("-", 1)[-1])
    return {
        "step": step,
        "checkpoint": state.best_model_checkpoint,
        "why": f"best {args.metric_for_best_model} on the {'dev' if on_dev else 'eval'} set "
        f"({state.best_metric:.4f}, {'higher' if args.greater_is_better else 'lower'} is better)",
        "stopped_early": state.global_step < state.max_steps,
    }


def _tune_decision_bias(recipe: Recipe, trainer, dev_set) -> dict[str, float]:
    from trainer_ext.inference.decision import fit_decision_bias

    if dev_set is None:
        raise DataError("tune_decision_bias needs a dev set: set validation_split (e.g. 0.1).")
    metric = recipe.training.metric_for_best_model or "macro_f1"
    metric = "macro_f1" if metric.endswith("loss") else metric
    scores = trainer.predict_labels(dev_set, "constrained")
    gold = [example.label for example in dev_set.examples]
    bias = fit_decision_bias(scores.probs, gold, trainer.task.labels, metric)
    logger.info("Decision offsets fitted on the dev set for %s: %s", metric, bias)
    return bias


def _rarest(metrics: dict[str, Any], data: PreparedData) -> None:
    counts = data.report.counts["train"] if data.report else {}
    present = {label: n for label, n in counts.items() if n}
    # Meaningless on (nearly) balanced data: only when the rarest class has under 80% of the largest's rows.
    if present and min(present.values()) < 0.8 * max(present.values()):
        rarest = min(present, key=present.get)
        metrics["rarest_class"] = rarest
        for prefix in ("dev", "eval"):
            if f"{prefix}_recall_{rarest}" in metrics:
                metrics[f"{prefix}_rarest_class_recall"] = metrics[f"{prefix}_recall_{rarest}"]


def run(recipe: Recipe, data: PreparedData | None = None) -> dict[str, Any]:
    """Train, select, tune, evaluate (dev and eval) and write the run directory.

    Returns:
        `dict`: the flat metrics (also written to `metrics.json`).
    """
    from trainer_ext.evaluation import reports
    from trainer_ext.evaluation.metrics import classification_metrics
    from trainer_ext.runs.directory import save_run
    from trainer_ext.training.trainer import LabelDataset

    data = data or prepare_data(recipe)
    loaded, task, trainer = build(recipe, data)
    args = recipe.training
    metrics: dict[str, Any] = {
        "trainable_params": loaded.trainable_params,
        "total_params": loaded.total_params,
    }
    if loaded.method != "none":
        result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        metrics.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    notes: dict[str, Any] = {"best_checkpoint": _best_checkpoint(trainer, data.dev is not None)}
    dev_set = trainer.eval_dataset if data.dev is not None else None
    if args.tune_decision_bias:
        task.decision_bias = notes["decision_bias"] = _tune_decision_bias(recipe, trainer, dev_set)
    if dev_set is not None:
        metrics.update(trainer.evaluate(dev_set, metric_key_prefix="dev"))
    # Without a dev set the trainer's eval set is the eval file already encoded; with one, encode the file.
    eval_set = (
        LabelDataset(data.eval, loaded.tokenizer, task, recipe.task.max_length, recipe.task.truncation_side)
        if dev_set is not None
        else trainer.eval_dataset
    )
    metrics.update(trainer.evaluate(eval_set, metric_key_prefix="eval"))
    _rarest(metrics, data)
    scores = trainer.last_label_scores[args.decodings[0]]
    metrics["peak_memory_mb"] = round(reports.peak_memory_mb(loaded.device), 1)
    if trainer.is_world_process_zero():
        gold = [example.label for example in eval_set.examples]
        detail = classification_metrics(gold, scores.labels, task.labels)
        info = run_info(recipe, loaded, data, notes)
        info.notes["class_weights"] = trainer.train_dataset.class_weights
        save_run(args.output_dir, trainer.model, loaded.tokenizer, task, info)
        reports.write_metrics(args.output_dir, metrics)
        reports.write_predictions(args.output_dir, eval_set.examples, scores, task.labels)
        reports.plot_confusion_matrix(args.output_dir, detail["confusion_matrix"], task.labels)
        _write_card(args.output_dir)
    return metrics


def _write_card(output_dir: str) -> None:
    """The run's model card as its README.md, in place of the generic template PEFT saves with an adapter."""
    from trainer_ext.hub.cards import CardError, render_model_card

    try:
        card = render_model_card(output_dir)
    except CardError as error:  # the run itself is complete; only its card is missing
        logger.warning("No model card written in %s: %s", output_dir, error)
        return
    card.save(str(Path(output_dir) / "README.md"))
