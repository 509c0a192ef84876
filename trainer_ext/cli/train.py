"""``trainer-ext train``: fine-tune a causal LM to generate labels, evaluate it, write the run directory.

    trainer-ext train --config trainer_ext/configs/recipes/moderation_lora_all.yaml
    trainer-ext train --config RECIPE.yaml --lora_r 4 --num_train_epochs 1
    accelerate launch scripts/train.py --config RECIPE.yaml

The pipeline itself is `trainer_ext.training.pipeline.run`; this module parses the command line, checks
the data before any model loads, and prints one line per error.
"""

from __future__ import annotations

import sys

USAGE = (
    "usage: trainer-ext train --config RECIPE.yaml [--key value ...]\n"
    "       trainer-ext train --train_file FILE.csv --output_dir DIR [--key value ...]\n\n"
    "Fine-tune a causal LM to generate the labels of your data. A recipe is a YAML file of keys; any key "
    "can\n"
    "also be given (or overridden) on the command line. The shipped main job: `make train`, or\n"
    "  trainer-ext train --config trainer_ext/configs/recipes/moderation_lora_all.yaml\n"
    "`trainer-ext train --help` lists the keys; `--help-all` adds every TrainingArguments key."
)
SUMMARY_KEYS = (
    "eval_macro_f1",
    "rarest_class",
    "eval_rarest_class_recall",
    "dev_macro_f1",
    "eval_accuracy",
    "eval_invalid_rate",
    "eval_loss",
    "eval_generate_accuracy",
    "eval_generate_invalid_rate",
    "trainable_params",
    "train_runtime",
    "train_samples_per_second",
    "peak_memory_mb",
)


def print_help(full: bool) -> None:
    """The keys of a recipe: the project's own (fast, no torch import), or every one with `full`."""
    from transformers import HfArgumentParser

    from trainer_ext.training.recipe import LIGHT_SETTINGS, settings_classes

    if full:
        HfArgumentParser(settings_classes(), prog="trainer-ext train").print_help()
        return
    usage = USAGE.split("\n\n")[0].removeprefix("usage: ")
    parser = HfArgumentParser(LIGHT_SETTINGS, prog="trainer-ext train", usage=usage)
    parser.add_argument(
        "--config", metavar="RECIPE.yaml", help="a YAML recipe; command-line keys override it"
    )
    parser.add_argument("--help-all", action="store_true", help="also list every TrainingArguments key")
    parser.print_help()
    print(
        "\nEvery TrainingArguments key is a recipe key too (num_train_epochs, per_device_train_batch_size, "
        "bf16, seed, ...): `trainer-ext train --help-all` lists them. bf16 also takes `auto`: bf16 autocast "
        "where the machine computes bf16 well (a GPU with native bf16, a CPU with native bf16 or AVX-512), "
        "float32 elsewhere."
    )


def print_summary(metrics: dict, output_dir: str) -> None:
    """The metrics a user reads first, macro-F1 before accuracy."""
    print(f"\nRun directory: {output_dir}")
    for key in SUMMARY_KEYS:
        if key in metrics:
            value = metrics[key]
            if isinstance(value, str):
                shown = value
            elif key.endswith("_mb"):
                shown = f"{value:,.0f}"  # megabytes
            elif isinstance(value, float):
                shown = f"{value:.4f}"
            else:
                shown = f"{value:,}"
            print(f"  {key:28s} {shown}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trainer-ext train`` and ``scripts/train.py``: 0 when done, 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    if "--help-all" in argv or "-h" in argv or "--help" in argv:
        print_help(full="--help-all" in argv)
        return 0
    from trainer_ext.cli.errors import USER_ERRORS
    from trainer_ext.cli.logs import setup_logging
    from trainer_ext.training.pipeline import prepare_data, run
    from trainer_ext.training.recipe import parse_recipe

    try:
        recipe = parse_recipe(argv)
        setup_logging(recipe.training.process_index == 0)
        data = prepare_data(recipe)
        metrics = run(recipe, data)
    except USER_ERRORS as error:
        print(f"trainer-ext train: {error}", file=sys.stderr)
        return 2
    if recipe.training.process_index == 0:
        print_summary(metrics, recipe.training.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
