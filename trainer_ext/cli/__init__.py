"""``trainer-ext <command> [args]``: one entry point for every command.

Each command lives in ``trainer_ext.cli.<command>`` with a ``main(argv) -> int``; it is imported only when
run, so ``trainer-ext --help`` answers at once. Each command is also a console script
(``trainer-ext-<command>``) and a wrapper in ``scripts/``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, str] = {
    "train": "fine-tune a causal LM to generate labels, evaluate it and write the run directory",
    "predict": "classify texts (arguments, a file or stdin) with a trained run or a base model",
    "compare": "compare methods, quantizations or models on one task and tabulate their metrics",
    "estimate": "estimate the memory a training configuration needs, from a model config (offline)",
    "push": "publish a training run (or the demo Space) on the Hugging Face Hub",
}


def usage() -> str:
    """The help text: the commands with one line each."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: trainer-ext <command> [args]",
        "",
        "commands:",
        *(f"  {name:<{width}}  {description}" for name, description in COMMANDS.items()),
        "",
        "Run `trainer-ext <command> --help` for the options of a command.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trainer-ext <command> [args]``.

    Args:
        argv (`Sequence[str]`, *optional*): The arguments after the program name (``sys.argv[1:]``).

    Returns:
        `int`: The command's exit status; 2 for a missing or unknown command.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"trainer-ext: unknown command {command!r}; choose one of {', '.join(COMMANDS)} "
            "(`trainer-ext --help` describes them).",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(f"{__name__}.{command}")
    return module.main(rest)
