"""One message's `predict` latency by which threads run the model, each way in a fresh process.

    python -m benchmarks.threads --run runs/moderation-lora-all --out_dir docs/benchmarks/threads_epyc

The model is the Space's on a CPU: the run's adapter merged into unquantized weights of the fastest dtype
(`Classifier.from_pretrained(run, quantization="none", dtype="auto", merge_adapter=True)`). Ways:

- `main`: the main thread loads the model and predicts.
- `worker`: one worker thread loads the model and predicts; the main thread never runs torch.
- `worker after main`: the main thread loads the model and predicts, then a worker thread predicts, as a
  server's thread pool does after start-up work on the main thread.
- `main beside an idle app`: the demo is launched in the process and left idle; the main thread predicts.

Every thread that runs torch operators gets an OpenMP thread team of its own, which lasts as long as the
thread; hence a fresh process for each way. Each way times `--messages` tweets of the study's eval split,
one per call, after 5 warm-up calls, and reports the p50 in ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.common import (
    count_type,
    eval_split_examples,
    refuse_busy_machine,
    refuse_missing_run,
    report_header,
    write_report,
)

WAYS = ("main", "worker", "worker after main", "main beside an idle app")


def _p50_ms(classifier: Any, messages: list[str]) -> float:
    for message in messages[:5]:
        classifier.predict([message])
    seconds = []
    for message in messages:
        start = time.perf_counter()
        classifier.predict([message])
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def measure_way(way: str, run: str, n_messages: int) -> float:
    """The p50 in ms of one message's `predict` in this process, the model run as `way` says."""
    from trainer_ext import Classifier

    messages = [example.text for example in eval_split_examples()][:n_messages]

    def load() -> Any:
        return Classifier.from_pretrained(run, quantization="none", dtype="auto", merge_adapter=True)

    if way == "worker":
        with ThreadPoolExecutor(max_workers=1) as worker:
            classifier = worker.submit(load).result()
            return worker.submit(_p50_ms, classifier, messages).result()
    classifier = load()
    if way == "worker after main":
        _p50_ms(classifier, messages)
        with ThreadPoolExecutor(max_workers=1) as worker:
            return worker.submit(_p50_ms, classifier, messages).result()
    if way == "main beside an idle app":
        from space.app import serve
        from space.model_store import ModelStore, SpaceSettings

        demo, _ = serve(ModelStore(SpaceSettings(None, quantization="none")))
        try:
            time.sleep(2)
            return _p50_ms(classifier, messages)
        finally:
            demo.close()
    return _p50_ms(classifier, messages)


def make_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/moderation-lora-all", help="a trained run directory")
    parser.add_argument(
        "--messages",
        type=count_type(5, "messages"),
        default=40,
        help="tweets per way, 5 or more (default 40)",
    )
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="default: all")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one way, in the child process
    parser.add_argument("--max_load", type=float, default=1.5, help="refuse above this 1-minute load")
    parser.add_argument("--force", action="store_true", help="run on a busy machine anyway")
    parser.add_argument("--debug", action="store_true", help="show a failed way's whole traceback")
    parser.add_argument("--out_dir", default="runs/bench_threads", help="where threads.json/.md go")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run each way in a child process and write the report; 2 on bad input or a busy machine."""
    args = make_parser().parse_args(argv)
    if args.way:  # the child: one way, its p50 on stdout
        print(json.dumps({"p50_ms": measure_way(args.way, args.run, args.messages)}))
        return 0
    if refuse_missing_run(args.run):
        return 2
    available = len(eval_split_examples())
    if args.messages > available:
        print(f"error: --messages {args.messages}: the eval split has only {available} tweets.",
              file=sys.stderr)  # fmt: skip
        return 2
    if refuse_busy_machine(args.max_load, args.force):
        return 2
    report: dict[str, Any] = {**report_header("threads", argv), "run": args.run, "messages": args.messages}
    report["results"] = []
    for way in args.ways:
        child = [sys.executable, "-m", "benchmarks.threads", "--way", way, "--run", args.run]
        done = subprocess.run([*child, "--messages", str(args.messages)], capture_output=True, text=True)
        if done.returncode:  # the child's last line says why (its whole traceback with --debug)
            why = done.stderr if args.debug else (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"error: the way {way!r} failed: {why}", file=sys.stderr)
            return 1
        p50 = json.loads(done.stdout.strip().splitlines()[-1])["p50_ms"]
        report["results"].append({"way": way, "p50_ms": p50})
    lines = [
        "# One message's latency by the threads that run the model",
        "",
        f"Rerun: `{report['command']}` ({report['date']}; {report['machine']}; 1-minute load average at "
        f"start {report['load_average']:.2f}). Run `{args.run}`, merged, unquantized, dtype auto; "
        f"{args.messages} tweets, one per call, each way in a fresh process.",
        "",
        "| way | predict p50 (ms) |",
        "|---|---:|",
        *(f"| {row['way']} | {row['p50_ms']:.1f} |" for row in report["results"]),
    ]
    write_report(args.out_dir, "threads", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
