"""The training pipeline of a recipe, as library functions: `prepare_data` -> `build` -> `run`.

`trainer-ext train` is a thin command line over `run`; scripts and notebooks can call the same steps.
Data (files, columns, labels) is read and checked before any model loads, so a bad row or a missing
file is reported in a second, not after minutes of loading a large model.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from trainer_ext.data import DataError, Example, load_split
from trainer_ext.runs.info import DataSource, RunInfo
from trainer_ext.tasks import LabelTask
from trainer_ext.training.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The splits of a recipe and the task built on them (no model needed).

    Args:
        train (`list[Example]`): Training examples.
        eval (`list[Example]`): Evaluation examples.
        task (`LabelTask`): The task, its labels given by the recipe or found in the training data.
    """

    train: list[Example]
    eval: list[Example]
    task: LabelTask


def _labels_of(examples: list[Example], where: str) -> list[str]:
    unlabelled = next((example for example in examples if example.label is None), None)
    if unlabelled is not None:
        raise DataError(f"{unlabelled.source}: the {where} row has no label; every training row needs one.")
    return sorted({str(example.label) for example in examples})


def prepare_data(recipe: Recipe) -> PreparedData:
    """Read and check the recipe's data and build its task, before any model is loaded.

    Args:
        recipe (`Recipe`): The run's settings.

    Returns:
        `PreparedData`: the splits and the task. Without `labels` in the recipe, the task's labels are the
        distinct labels of the training data, sorted (logged).

    Raises:
        `DataError` or `TaskError`: naming the file, row and column, or the setting, that is wrong.
    """
    labels = list(recipe.task.labels) if recipe.task.labels else None
    train = load_split(recipe.data, "train", labels=labels)
    if not train:
        raise DataError("The training data has no rows; add labelled rows below the header.")
    if labels is None:
        labels = _labels_of(train, "training")
        logger.info("labels not set: using the %d labels found in the training data: %s", len(labels), labels)
    if all(label.strip().lstrip("-").isdigit() for label in labels):
        logger.warning(
            "The labels %s are numbers: the model learns to write them, and a number tells it nothing about "
            'the class. Map them to words with label_mapping (e.g. {"0": "negative", "1": "positive"}) '
            "and set labels to those words.",
            labels,
        )
    evaluation = load_split(recipe.data, "eval", labels=labels)
    settings = dataclasses.replace(recipe.task, labels=labels)
    task = LabelTask.from_settings(settings, shot_examples=train, seed=recipe.data.sample_seed)
    return PreparedData(train, evaluation, task)


def build(recipe: Recipe, data: PreparedData | None = None):
    """Model, task and `LabelTrainer` of a recipe.

    Args:
        recipe (`Recipe`): The run's settings.
        data (`PreparedData`, *optional*): Data already read by `prepare_data`; read here when not given.

    Returns:
        `(LoadedModel, LabelTask, LabelTrainer)`.
    """
    from transformers import set_seed

    from trainer_ext.modeling.loading import load_model
    from trainer_ext.training.trainer import LabelDataset, LabelTrainer

    data = data or prepare_data(recipe)
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
    trainer = LabelTrainer(
        model=loaded.model,
        args=recipe.training,
        task=data.task,
        processing_class=loaded.tokenizer,
        train_dataset=LabelDataset(data.train, loaded.tokenizer, data.task, *length),
        eval_dataset=LabelDataset(data.eval, loaded.tokenizer, data.task, *length),
    )
    return loaded, data.task, trainer


def _sources(recipe: Recipe, data: PreparedData) -> list[DataSource]:
    settings = recipe.data
    if settings.hub_dataset:
        return [
            DataSource("train", len(data.train), hub_dataset=settings.hub_dataset),
            DataSource("eval", len(data.eval), hub_dataset=settings.hub_dataset),
        ]
    train_path = str(settings.resolve(settings.train_file))
    eval_path = str(settings.resolve(settings.eval_file)) if settings.eval_file else train_path
    return [
        DataSource("train", len(data.train), path=train_path),
        DataSource("eval", len(data.eval), path=eval_path, held_out=not settings.eval_file),
    ]


def run_info(recipe: Recipe, loaded, data: PreparedData) -> RunInfo:
    """The record of a run (`run.json`): what was loaded, trained and read."""
    settings = dataclasses.asdict(recipe.data)
    settings.update(recipe.data.sources())
    optim = recipe.training.optim
    return RunInfo(
        base_model=recipe.model.model_name_or_path,
        quantization=loaded.quantization,
        method=loaded.method,
        dtype=str(loaded.dtype).removeprefix("torch."),
        autocast="bfloat16" if recipe.training.bf16 else "float16" if recipe.training.fp16 else None,
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
    )


def run(recipe: Recipe, data: PreparedData | None = None) -> dict[str, Any]:
    """Train, evaluate and write the run directory.

    Args:
        recipe (`Recipe`): The run's settings.
        data (`PreparedData`, *optional*): Data already read by `prepare_data`.

    Returns:
        `dict`: the flat metrics (also written to `metrics.json`).
    """
    from trainer_ext.evaluation import reports
    from trainer_ext.evaluation.metrics import classification_metrics
    from trainer_ext.runs.directory import save_run

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
    metrics.update(trainer.evaluate())
    eval_set = trainer.eval_dataset
    scores = trainer.last_label_scores[args.decodings[0]]
    metrics["peak_memory_mb"] = round(reports.peak_memory_mb(loaded.device), 1)
    if trainer.is_world_process_zero():
        gold = [example.label for example in eval_set.examples]
        detail = classification_metrics(gold, scores.labels, task.labels)
        save_run(args.output_dir, trainer.model, loaded.tokenizer, task, run_info(recipe, loaded, data))
        reports.write_metrics(args.output_dir, metrics)
        reports.write_predictions(args.output_dir, eval_set.examples, scores, task.labels)
        reports.plot_confusion_matrix(args.output_dir, detail["confusion_matrix"], task.labels)
    return metrics
