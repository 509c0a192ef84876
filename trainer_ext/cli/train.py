"""``trainer-ext train``: fine-tune a causal LM to generate labels, evaluate it, write the run directory.

    accelerate launch scripts/train.py --config trainer_ext/configs/recipes/moderation_lora_all.yaml
    python scripts/train.py --config RECIPE.yaml --lora_r 4 --num_train_epochs 1

Stages: read the recipe (file, then command-line overrides); load the base model with its quantization
and training method; load and encode the data; train; evaluate (loss and generated-label metrics);
write the run directory (see `trainer_ext.saving`) with `metrics.json`, `predictions.csv` and
`confusion_matrix.png`; print the metrics.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict

from trainer_ext.config import Recipe, RecipeError, parse_recipe

logger = logging.getLogger("trainer_ext.train")

SUMMARY_KEYS = (
    "eval_accuracy",
    "eval_macro_f1",
    "eval_invalid_rate",
    "eval_loss",
    "eval_generate_accuracy",
    "eval_generate_invalid_rate",
    "trainable_params",
    "train_runtime",
    "train_samples_per_second",
    "peak_memory_mb",
)


def setup_logging(main_process: bool) -> None:
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if main_process else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity_warning()


def build(recipe: Recipe):
    """Model, task, datasets and trainer of a recipe."""
    from transformers import set_seed

    from trainer_ext.data import load_split
    from trainer_ext.loading import load_model
    from trainer_ext.tasks import LabelTask
    from trainer_ext.trainer import LabelDataset, LabelTrainer

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
    labels = list(recipe.task.labels)
    train = load_split(recipe.data, "train", labels=labels)
    evaluation = load_split(recipe.data, "eval", labels=labels)
    task = LabelTask.from_settings(recipe.task, shot_examples=train, seed=recipe.data.sample_seed)
    max_length = recipe.task.max_length
    trainer = LabelTrainer(
        model=loaded.model,
        args=recipe.training,
        task=task,
        processing_class=loaded.tokenizer,
        train_dataset=LabelDataset(train, loaded.tokenizer, task, max_length),
        eval_dataset=LabelDataset(evaluation, loaded.tokenizer, task, max_length),
    )
    return loaded, task, trainer


def run(recipe: Recipe) -> dict:
    """Train, evaluate and write the run directory; returns the flat metrics."""
    from trainer_ext import reports
    from trainer_ext.metrics import classification_metrics
    from trainer_ext.saving import save_run

    loaded, task, trainer = build(recipe)
    args = recipe.training
    metrics: dict = {"trainable_params": loaded.trainable_params, "total_params": loaded.total_params}
    if loaded.method != "none":
        result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        metrics.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    metrics.update(trainer.evaluate())
    eval_set = trainer.eval_dataset
    scores = trainer.last_label_scores[args.decodings[0]]
    metrics["peak_memory_mb"] = round(reports.peak_memory_mb(loaded.device), 1)
    if trainer.is_world_process_zero():
        gold = [ex.label for ex in eval_set.examples]
        detail = classification_metrics(gold, scores.labels, task.labels)
        info = {
            "base_model": recipe.model.model_name_or_path,
            "quantization": loaded.quantization,
            "method": loaded.method,
            "optimizer": str(args.optim),
            "trainable_params": loaded.trainable_params,
            "total_params": loaded.total_params,
            "dtype": str(loaded.dtype).replace("torch.", ""),
            "lora": asdict(recipe.lora),
            "data": asdict(recipe.data),
            "task": asdict(recipe.task),
            "training": recipe.to_dict(),
            "eval_samples": len(eval_set),
        }
        save_run(args.output_dir, trainer.model, loaded.tokenizer, task, info)
        reports.write_metrics(args.output_dir, metrics)
        reports.write_predictions(args.output_dir, eval_set.examples, scores, task.labels)
        reports.plot_confusion_matrix(args.output_dir, detail["confusion_matrix"], task.labels)
    return metrics


def print_summary(metrics: dict, output_dir: str) -> None:
    print(f"\nRun directory: {output_dir}")
    for key in SUMMARY_KEYS:
        if key in metrics:
            value = metrics[key]
            print(f"  {key:28s} {value:,.4f}" if isinstance(value, float) else f"  {key:28s} {value:,}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trainer-ext train`` and ``scripts/train.py``."""
    from trainer_ext.data import DataError
    from trainer_ext.loading import ModelLoadError
    from trainer_ext.tasks import TaskError
    from trainer_ext.tokenization import EncodingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        from trainer_ext.config import _parser

        _parser().print_help()
        return 0
    try:
        recipe = parse_recipe(argv)
        setup_logging(recipe.training.process_index == 0)
        metrics = run(recipe)
    except (RecipeError, ModelLoadError, DataError, TaskError, EncodingError) as error:
        print(f"trainer-ext train: {error}", file=sys.stderr)
        return 2
    if recipe.training.process_index == 0:
        print_summary(metrics, recipe.training.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
