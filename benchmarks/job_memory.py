"""The whole main job's memory over time: ``trainer-ext train`` as a user runs it, sampled from outside.

    python -m benchmarks.job_memory                                   # the main job, 250 steps (~30 min)
    python -m benchmarks.job_memory --seed 3 --output_dir runs/transfer/plain-seed3
    python -m benchmarks.job_memory -- --max_steps 3 --eval_samples 30  # recipe flags after `--`

`benchmarks.training_memory` profiles a few steps inside one process; this one runs the real command (the
main recipe, `moderation_lora_all.yaml`; extra recipe flags after ``--``) in a child process, reads its
resident set size (VmRSS) every ``--interval`` seconds, and files each sample under the phase the job's
log says it is in: start-up and data, model loading, each 10-step logging window of training,
evaluation, and writing the run directory (adapter, predictions, report, card, plot). The job's true
peak is the kernel's (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, what ``/usr/bin/time -v`` reports), so a
spike between two samples still counts. Writes ``OUT_DIR/job_memory.json`` and ``.md``; memory in MB
(10^6 bytes).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, REPO_ROOT, report_header, status_kib, write_report

RECIPE = REPO_ROOT / "trainer_ext" / "configs" / "recipes" / "moderation_lora_all.yaml"
# (phase entered, a regular expression of the log line that starts it), in the order the job runs.
PHASES = [
    ("model loading", re.compile(r"Using embedded model|Loading weights|Loading the model")),
    ("training", re.compile(r"trainer_ext\.modeling\.loading: Loaded ")),
    ("evaluation", re.compile(r"'train_runtime'")),
    ("writing the run directory", re.compile(r"'eval_accuracy'")),
]
STEP_LOG = re.compile(r"^\{'loss'")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=42, help="training seed of the job")
    parser.add_argument("--output_dir", help="the job's run directory (default: a directory under runs/)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    parser.add_argument("recipe_flags", nargs="*", help="recipe flags for the job, after `--`")
    return parser


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB, `None` once it is gone (or has exited and not been reaped yet: its status
    then has no VmRSS)."""
    try:
        return status_kib("VmRSS", pid) * 1024 / 1e6
    except (FileNotFoundError, ProcessLookupError, RuntimeError):
        return None


class Phases:
    """The phase the job is in, moved on by its log lines; the samples of each phase."""

    def __init__(self) -> None:
        self.name = "start-up and data"
        self.steps = 0
        self.samples: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def on_line(self, line: str) -> None:
        with self.lock:
            names = [name for name, _ in PHASES]
            now = names.index(self.name) if self.name in names else -1
            for name, pattern in PHASES[now + 1 :]:  # phases only move forward
                if pattern.search(line):
                    self.name = name
                    break
            if self.name == "training" and STEP_LOG.search(line):
                self.steps += 1

    def label(self) -> str:
        if self.name != "training":
            return self.name
        return f"training, logging window {self.steps + 1}"

    def add(self, value: float) -> None:
        with self.lock:
            self.samples.setdefault(self.label(), []).append(value)


def run_job(command: list[str], interval: float, log_path: Path) -> dict[str, Any]:
    """Run `command`, sampling its memory; the samples by phase and the kernel's peak."""
    phases = Phases()
    started = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        child = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each log line as it is written, not at exit
        )

        def read() -> None:
            for raw in child.stdout:  # tqdm rewrites its line with \r; each piece is a line here
                for line in raw.split("\r"):
                    log.write(line if line.endswith("\n") else line + "\n")
                    log.flush()
                    phases.on_line(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while child.poll() is None:
            value = rss_mb(child.pid)
            if value is not None:
                phases.add(value)
            time.sleep(interval)
        reader.join()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6  # KiB on Linux
    return {
        "exit_code": child.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_mb": round(peak, 1),
        "phases": [
            {
                "phase": name,
                "samples": len(values),
                "first_mb": round(values[0], 1),
                "last_mb": round(values[-1], 1),
                "max_mb": round(max(values), 1),
            }
            for name, values in phases.samples.items()
        ],  # fmt: skip
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Memory of the whole main job, over time",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}, load average "
        f"{report['load_average']:.2f} at the start).",
        "",
        f"Job: `{' '.join(report['job'])}`; exit code {report['exit_code']}, {report['seconds']:.0f} s.",
        "",
        f"**Peak resident memory of the job: {report['peak_mb']:,.0f} MB** (the kernel's maximum resident "
        "set size of the process, as `/usr/bin/time -v` reports it). Sampled every "
        f"{report['interval']} s, by phase (a training logging window is 10 optimizer steps):",
        "",
        "| phase | samples | RSS at start MB | RSS at end MB | max sampled MB |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['phase']} | {p['samples']} | {p['first_mb']:,.0f} | {p['last_mb']:,.0f} | {p['max_mb']:,.0f} |"
        for p in report["phases"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    output_dir = args.output_dir or str(REPO_ROOT / "runs" / f"job-memory-seed{args.seed}")
    job = [sys.executable, "-m", "trainer_ext.cli.train", "--config", str(RECIPE),
           "--data_dir", str(DATA_DIR), "--output_dir", output_dir, "--seed", str(args.seed),
           "--disable_tqdm", "true", *args.recipe_flags]  # fmt: skip
    header = report_header("job_memory", argv)
    log = Path(output_dir).with_suffix(".log")
    result = run_job(job, args.interval, log)
    if result["exit_code"] != 0:
        print(f"error: the job failed (exit {result['exit_code']}); see {log}", file=sys.stderr)
        return 1
    shown = [Path(job[0]).name, *job[1:]]
    report = {**header, "job": shown, "interval": args.interval, **result}
    write_report(args.out_dir, "job_memory", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
