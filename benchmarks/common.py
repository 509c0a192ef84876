"""Helpers every benchmark shares: where the shared data is, and how process memory is read."""

from __future__ import annotations

import os
from pathlib import Path

# a /proc/<pid>/status field in KiB; the library's peak_memory_mb reads the same
from trainer_ext.training.host_memory import status_kib as status_kib

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shared data and tokenizers sit beside the repository; TRAINER_EXT_DATA_DIR moves both.
DATA_DIR = Path(os.environ.get("TRAINER_EXT_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
TOKENIZERS_DIR = DATA_DIR.parent / "tokenizers"


def eval_split_examples() -> list:
    """The examples of the study's eval split (``seed_split/val.csv``), HTML entities decoded as the main
    job reads them: the tweets the latency benchmarks time."""
    from trainer_ext.data import load_examples

    return load_examples(DATA_DIR / "seed_split" / "val.csv", decode_html=True)


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` (the peak resident set size) to the current resident set size."""
    Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")


def storage_bytes(model) -> int:
    """Bytes of a model's parameters and buffers (each storage once)."""
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def refuse_busy_machine(max_load: float, force: bool) -> bool:
    """Print why and return True when the 1-minute load average is over `max_load` (timings would be
    skewed by other processes), unless `force`."""
    import sys

    load = os.getloadavg()[0]
    if load > max_load and not force:
        print(f"error: load average {load:.2f} > --max_load {max_load}; timings would be skewed "
              "(wait for a quiet machine, or --force).", file=sys.stderr)  # fmt: skip
        return True
    return False


def refuse_missing_run(run: str | Path) -> bool:
    """Print why and return True when `run` is not a run directory (no ``task.json``)."""
    import sys

    if (Path(run) / "task.json").is_file():
        return False
    print(f"error: {run} is not a run directory (no task.json); train one with `make train`, "
          "or point --run at one.", file=sys.stderr)  # fmt: skip
    return True


def write_report(out_dir: str | Path, stem: str, report: dict, markdown: str) -> None:
    """Write `report` as `OUT_DIR/stem.json` and `markdown` as `OUT_DIR/stem.md`, and print the Markdown."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown, encoding="utf-8")
    print(markdown)


def report_header(module: str, argv: list[str] | None) -> dict:
    """What every benchmark report starts with: its rerun command, the date, the machine and its load."""
    import sys
    import time

    from trainer_ext.runs.info import cpu_model

    return {
        "command": f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPU(s)",
        "load_average": os.getloadavg()[0],
    }


def count_type(minimum: int, what: str = "tweets"):
    """An argparse ``type`` for a whole number of at least `minimum`, whose error names `what`."""
    import argparse

    def parse(value: str) -> int:
        if not value.isdigit() or int(value) < minimum:
            raise argparse.ArgumentTypeError(f"expected a number of {what}, {minimum} or more; got {value!r}")
        return int(value)

    return parse
