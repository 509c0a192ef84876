"""``trainer-ext compare``: the whole study in one command (table, JSON and chart in the output directory).

    python scripts/compare.py --output_dir runs/compare
    python scripts/compare.py --rows zero-shot zero-shot-calibrated lora-all --transfer_samples 100
    python scripts/compare.py --rows tfidf-logreg embedding-logreg lora-all classification-head --seeds 42 1 2
    python scripts/compare.py --model_name_or_path EleutherAI/gpt-j-6B --quantization 8bit --lora_r 2 \\
        --per_device_train_batch_size 4 --output_dir runs/compare-gptj
    python scripts/compare.py --combine runs/s42/compare.json runs/s1/compare.json --output_dir runs/both

Study flags (below) come from the preset (default: the shipped ``studies/compare_smollm2.yaml``); any other
``--flag value`` is a training-recipe key (see ``trainer-ext train --help``) applied to every row, such
as ``--model_name_or_path``, ``--quantization``, ``--lora_r``, ``--train_samples``. ``--set
ROW.KEY=VALUE`` changes one row only (``--set norms.learning_rate=1e-3``). The trained rows,
``embedding-logreg`` and ``classification-head`` run once per ``--seeds`` seed; the table shows mean ±
standard deviation. ``--combine`` makes one study of the ``compare.json`` of several sittings, each run
with its own ``--seeds`` (see `trainer_ext.study.combine`); it trains and scores nothing.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence


def parse(argv: list[str]):
    """(study arguments over the preset, preset path, ``--set`` items, recipe flags for every row, the
    ``--combine`` files or `None`)."""
    from transformers import HfArgumentParser

    from trainer_ext.study.settings import DEFAULT_PRESET, StudyArguments, load_preset

    parser = HfArgumentParser(
        StudyArguments,
        prog="trainer-ext compare",
        description=__doc__.split("\n\n")[0],
        epilog="Other --flags are recipe keys applied to every row (see `trainer-ext train --help`).",
        allow_abbrev=False,  # an abbreviation must not swallow a recipe flag
    )
    parser.add_argument(
        "--preset", help="study preset YAML (default: the shipped studies/compare_smollm2.yaml)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        metavar="ROW.KEY=VALUE",
        help="recipe key for one row",
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        metavar="COMPARE_JSON",
        help="combine the compare.json of several sittings (each of its own --seeds) into one study",
    )
    preset = argv[argv.index("--preset") + 1] if "--preset" in argv[:-1] else None
    known = {f.name for f in dataclasses.fields(StudyArguments)}
    values = load_preset(preset or DEFAULT_PRESET)
    parser.set_defaults(**{key: value for key, value in values.items() if key in known})
    args, extra, recipe_args = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True, look_for_args_file=False
    )
    return args, extra.preset, extra.sets, recipe_args, extra.combine


def _done(study, paths: dict, failure: str) -> int:
    """Print the report and where it was written; 1 when a row (or a seed's run) failed, else 0."""
    print(f"\n{paths['markdown'].read_text(encoding='utf-8')}")
    print("Written: " + ", ".join(str(p) for p in paths.values()))
    failed = [row.name for row in study.rows if row.has_failure]
    if failed:
        print(f"trainer-ext compare: row(s) {', '.join(failed)} {failure}.", file=sys.stderr)
        return 1
    return 0


def combine(files: list[str], output_dir: str, argv: list[str]) -> int:
    """``--combine``: one report from the sittings' JSON files; 0 when done, 1 when a row (or a seed's run)
    failed, 2 on bad input."""
    from pathlib import Path

    from trainer_ext.study.combine import combine_studies
    from trainer_ext.study.report import JSON_FILE, write_report
    from trainer_ext.study.settings import StudyError

    others = [a for a in argv if a.startswith("--") and a.split("=")[0] not in ("--combine", "--output_dir")]
    try:
        if others:
            raise StudyError(
                f"--combine reads finished sittings and runs nothing: {', '.join(others)} do(es) not apply; "
                "give only --combine FILE ... and --output_dir."
            )
        target = (Path(output_dir) / JSON_FILE).resolve()
        if any(Path(file).resolve() == target for file in files):
            raise StudyError(
                f"--combine: --output_dir {output_dir} would overwrite the input {target}; choose another."
            )
        study = combine_studies(files)
        paths = write_report(study, output_dir, shlex.join(["trainer-ext", "compare", *argv]))
    except StudyError as error:
        print(f"trainer-ext compare: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"trainer-ext compare: cannot write the report into {output_dir}: {error}", file=sys.stderr)
        return 2
    return _done(study, paths, "failed in a sitting")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trainer-ext compare``: 0 when done, 1 when a row (or a seed's run) failed, 2 on bad
    input."""
    from trainer_ext.cli.logs import setup_logging
    from trainer_ext.data import DataError
    from trainer_ext.modeling.loading import ModelLoadError
    from trainer_ext.study.report import write_report
    from trainer_ext.study.runner import run_study
    from trainer_ext.study.settings import StudyError, build_settings
    from trainer_ext.tasks import TaskError
    from trainer_ext.training.recipe import RecipeError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, preset, sets, recipe_args, files = parse(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except StudyError as error:
        print(f"trainer-ext compare: {error}", file=sys.stderr)
        return 2
    if files:
        return combine(files, args.output_dir, argv)
    try:
        settings = build_settings(preset, dataclasses.asdict(args), sets, recipe_args)
        setup_logging(True)
        study = run_study(settings)
    except (StudyError, RecipeError, DataError, TaskError, ModelLoadError) as error:
        print(f"trainer-ext compare: {error}", file=sys.stderr)
        return 2
    command = shlex.join(["trainer-ext", "compare", *argv])  # the same as scripts/compare.py and make compare
    paths = write_report(study, settings.output_dir, command)
    return _done(study, paths, "failed; see their logs")


if __name__ == "__main__":
    sys.exit(main())
