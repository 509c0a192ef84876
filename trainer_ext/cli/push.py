"""`trainer-ext push`: publish a training run (or, with `--space`, the Gradio demo) on the Hugging Face Hub.

    trainer-ext push OUTPUT_DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--dry-run]
    trainer-ext push space/ --repo-id USER/NAME --space [--model-repo-id USER/MODEL] [--dry-run]

The token comes from `HF_TOKEN` or `hf auth login`; it is never printed. `--dry-run` prints the card and
the files that would be uploaded, and makes no network call.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from trainer_ext.hub import HubError, PushResult, push_run, push_space


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of `trainer-ext push`."""
    parser = argparse.ArgumentParser(
        prog="trainer-ext push",
        description="Upload a training run's adapter, tokenizer, task and model card (or the demo Space) "
        "to the Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument(
        "output_dir", help="a training run's output directory (with --space: the app directory)"
    )
    parser.add_argument("--repo-id", required=True, help="target repo, USER/NAME (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to push to; created from main if it does not exist")
    parser.add_argument("--dry-run", action="store_true", help="print the card and the files; send nothing")
    parser.add_argument("--space", action="store_true", help="push the Gradio app directory to a Space repo")
    parser.add_argument("--model-repo-id", help="with --space: the model repo the app loads")
    parser.add_argument("--allow-pickle", action="store_true", help="also upload pickled (.bin/.pt) weights")
    parser.add_argument("--license", help="license id for the card (default: run.json, base model)")
    parser.add_argument("--commit-message", help="message of the commit")
    parser.add_argument(
        "--no-package", action="store_true", help="with --space: do not upload the trainer_ext package source"
    )
    return parser


def _check_combination(args: argparse.Namespace) -> str | None:
    if args.space and (args.revision or args.allow_pickle or args.license):
        return "--revision, --allow-pickle and --license apply to model repos, not to --space"
    if not args.space and (args.model_repo_id or args.no_package):
        return "--model-repo-id and --no-package only apply with --space"
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
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
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
