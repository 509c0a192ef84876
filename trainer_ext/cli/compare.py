"""``trainer-ext compare``: the whole study in one command (table, JSON and chart in the output directory).

    python scripts/compare.py --output_dir runs/compare
    python scripts/compare.py --rows zero-shot zero-shot-calibrated lora-all --transfer_samples 100
    python scripts/compare.py --model_name_or_path EleutherAI/gpt-j-6B --quantization 8bit --lora_r 2 \\
        --per_device_train_batch_size 4 --output_dir runs/compare-gptj

Study flags (below) come from the preset (default: the shipped ``compare_smollm2.yaml``); any other
``--flag value`` is a training-recipe key (see ``trainer-ext train --help``) applied to every row, such
as ``--model_name_or_path``, ``--quantization``, ``--lora_r``, ``--train_samples``. ``--set
ROW.KEY=VALUE`` changes one row only (``--set norms.learning_rate=1e-3``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from collections.abc import Sequence

from trainer_ext.study.settings import ROWS, StudySettings


def make_parser() -> argparse.ArgumentParser:
    """The parser of the study flags; unknown flags are left for the training recipe."""
    parser = argparse.ArgumentParser(
        prog="trainer-ext compare",
        description=__doc__.split("\n\n")[0],
        epilog="Other --flags are recipe keys applied to every row (see `trainer-ext train --help`).",
        allow_abbrev=False,  # an abbreviation must not swallow a recipe flag
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override the preset
    )
    parser.add_argument("--preset", help="study preset YAML (default: the shipped compare_smollm2.yaml)")
    parser.add_argument(
        "--set", action="append", dest="sets", metavar="ROW.KEY=VALUE", help="recipe override for one row"
    )
    for f in dataclasses.fields(StudySettings):
        if f.name in ("overrides", "recipe_args", "preset_dir"):
            continue
        flag, help_text = f"--{f.name}", f.metadata["help"]
        if f.name in ("rows", "transfer_prompts"):
            extra = f" ({', '.join(ROWS)})" if f.name == "rows" else ""
            parser.add_argument(flag, nargs="+", help=help_text + extra)
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.type == "int":
            parser.add_argument(flag, type=int, help=help_text)
        else:
            parser.add_argument(flag, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trainer-ext compare``: 0 when done, 1 when a row failed, 2 on bad input."""
    from trainer_ext.cli.logs import setup_logging
    from trainer_ext.data import DataError
    from trainer_ext.modeling.loading import ModelLoadError
    from trainer_ext.study.report import write_report
    from trainer_ext.study.runner import run_study
    from trainer_ext.study.settings import StudyError, build_settings
    from trainer_ext.tasks import TaskError
    from trainer_ext.training.recipe import RecipeError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    try:
        args, recipe_args = parser.parse_known_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    flags = vars(args)
    preset, sets = flags.pop("preset", None), flags.pop("sets", [])
    try:
        settings = build_settings(preset, flags, sets, recipe_args)
        setup_logging(True)
        study = run_study(settings)
    except (StudyError, RecipeError, DataError, TaskError, ModelLoadError) as error:
        print(f"trainer-ext compare: {error}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "scripts/compare.py", *argv])
    paths = write_report(study, settings.output_dir, command)
    print(f"\n{paths['markdown'].read_text(encoding='utf-8')}")
    print("Written: " + ", ".join(str(p) for p in paths.values()))
    failed = [row.name for row in study.rows if row.status == "failed"]
    if failed:
        print(f"trainer-ext compare: row(s) {', '.join(failed)} failed; see their logs.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
