"""`trainer-ext push`: publish a training run (or, with `--space`, the Gradio demo) on the Hugging Face Hub.

    trainer-ext push OUTPUT_DIR --repo_id USER/NAME [--private] [--revision BRANCH] [--dry_run]
    trainer-ext push space/ --repo_id USER/NAME --space [--model_repo_id USER/MODEL] [--dry_run]

The token comes from `HF_TOKEN` or `hf auth login`; it is never printed. `--dry_run` prints the card and
the files that would be uploaded, and makes no network call.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from trainer_ext.hub import HubError, PushResult, push_run, push_space


@dataclass
class PushArguments:
    """The keys of `trainer-ext push` (the run directory is the one positional argument)."""

    repo_id: str = field(metadata={"help": "Target repo, USER/NAME (created if missing)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private."})
    revision: str | None = field(
        default=None, metadata={"help": "Branch to push to; created from main if it does not exist."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the card and the files; send nothing."})
    space: bool = field(default=False, metadata={"help": "Push the Gradio app directory to a Space repo."})
    model_repo_id: str | None = field(
        default=None, metadata={"help": "With --space: the model repo the app loads."}
    )
    allow_pickle: bool = field(default=False, metadata={"help": "Also upload pickled (.bin/.pt) weights."})
    license: str | None = field(
        default=None, metadata={"help": "License id for the card (default: run.json, then the base model's)."}
    )
    commit_message: str | None = field(default=None, metadata={"help": "Message of the commit."})
    no_package: bool = field(
        default=False, metadata={"help": "With --space: do not upload the trainer_ext package source."}
    )


def make_parser():
    """The argument parser of `trainer-ext push` (`HfArgumentParser` over `PushArguments`)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        PushArguments,
        prog="trainer-ext push",
        description="Upload a training run's adapter, tokenizer, task and model card (or the demo Space) "
        "to the Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument(
        "output_dir", help="a training run's output directory (with --space: the app directory)"
    )
    return parser


def _check_combination(args: PushArguments) -> str | None:
    if args.space and (args.revision or args.allow_pickle or args.license):
        return "--revision, --allow_pickle and --license apply to model repos, not to --space"
    if not args.space and (args.model_repo_id or args.no_package):
        return "--model_repo_id and --no_package only apply with --space"
    return None


def _report(result: PushResult) -> None:
    where = f"{result.repo_type} repo {result.repo_id} (branch {result.revision})"
    if result.dry_run:
        print(str(result.card))
        print(f"\nDry run: nothing sent. Files that would be uploaded to {where}:")
        for path in result.files:
            source = result.uploads[path]
            size = len(source) if isinstance(source, bytes) else None
            print(f"  {path}" + ("" if size is None else f"  (generated, {size:,} bytes)"))
        for key, value in result.space_variables.items():
            print(f"Space variable that would be set: {key}={value}")
        return
    print(f"Pushed {len(result.files)} files to {where}: {result.commit_url}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `trainer-ext push`; returns the exit status (2 for a user error)."""
    parser = make_parser()
    try:
        args, extra = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    args.output_dir = extra.output_dir
    problem = _check_combination(args)
    if problem:
        print(f"trainer-ext push: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.space:
            result = push_space(
                args.output_dir,
                args.repo_id,
                model_repo_id=args.model_repo_id,
                private=args.private,
                dry_run=args.dry_run,
                include_package=not args.no_package,
                commit_message=args.commit_message,
            )
        else:
            result = push_run(
                args.output_dir,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                dry_run=args.dry_run,
                allow_pickle=args.allow_pickle,
                license=args.license,
                commit_message=args.commit_message,
            )
    except HubError as err:
        print(f"trainer-ext push: error: {err}", file=sys.stderr)
        return 2
    _report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
