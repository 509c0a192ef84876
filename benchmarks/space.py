"""Load benchmark of the demo: N classification requests from C concurrent `gradio_client` clients.

    python -m benchmarks.space                                  # launches space/app.py on 127.0.0.1
    python -m benchmarks.space --requests 50 --clients 10 --quantization 8bit
    python -m benchmarks.space --url http://127.0.0.1:7860/     # an app that is already running
    python -m benchmarks.space --clients 1 --transport http     # Gradio's REST API, not gradio_client

Each request sends a distinct message to `/moderate` through `gradio_client` (or, with `--transport
http`, Gradio's REST API: see `asker`); each answer is checked against its own input by
asking the same message again, one at a time, after the load (`--no_verify` skips that). The script
prints the latency percentiles (p50, p95) and throughput, and writes them with the settings to a JSON
file. The first request, which loads the model, is not timed. An app launched here also reports the
model's own share of a request (`predict_in_app_p50_s`: the p50 of `ModelStore.predict` inside the app,
which with more than one client also counts waits for the store's inference lock), how many threads made
those calls and the warm-up call that loaded the model (`predict_threads`), and the CPU seconds the whole
process spent per request (`process_cpu_s_per_request`: the model's threads, the web framework's and the
clients', which run in this process too, all on the same cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import count_type

REPO_ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = REPO_ROOT / "space"
DEFAULT_OUTPUT = REPO_ROOT / "runs" / "bench_space.json"

logger = logging.getLogger("bench_space")


@dataclass
class LoadResult:
    """Answers and latencies of one load run.

    Args:
        answers (`dict[int, dict]`): Answer of each request that succeeded, by request index.
        latencies (`dict[int, float]`): Seconds from sending to answer, by request index.
        errors (`dict[int, str]`): Error of each request that failed, by request index.
        wall_s (`float`): Seconds from the first request sent to the last answer.
    """

    answers: dict[int, Any] = field(default_factory=dict)
    latencies: dict[int, float] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0


def make_messages(n: int) -> list[str]:
    """`n` distinct messages: the demo's example messages, each tagged with its request number."""
    import csv

    with open(SPACE_DIR / "examples" / "messages.csv", newline="", encoding="utf-8") as handle:
        base = [row["message"] for row in csv.DictReader(handle)]
    return [f"{base[i % len(base)]} (request {i})" for i in range(n)]


TRANSPORTS = ("gradio_client", "http")


def asker(url: str, api_name: str = "/moderate", transport: str = "gradio_client") -> Callable[[str], Any]:
    """One client of the app: a function that sends a message to `api_name` and returns the answer.

    `gradio_client` is `gradio_client.Client.predict`, as the issue's users call the Space. Its
    answer loop waits 50 ms whenever no message has arrived yet (`stream_sse_v1plus` in
    `gradio_client/utils.py`, version 2.7), so its latencies move in steps of up to 50 ms. `http` asks
    Gradio's documented REST API with `httpx` instead: ``POST /gradio_api/call/NAME`` with the inputs,
    then ``GET /gradio_api/call/NAME/EVENT_ID``, whose server-sent events end with ``event: complete``
    and the outputs (or ``event: error``), which shows what the server itself takes. Gradio writes each
    event's data on one ``data:`` line; other events (``heartbeat``, ``generating``) are skipped.
    """
    if transport == "gradio_client":
        from gradio_client import Client

        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        return lambda message: client.predict(message, api_name=api_name)
    import httpx

    call = url.rstrip("/") + "/gradio_api/call" + api_name

    def ask(message: str) -> Any:
        posted = httpx.post(call, json={"data": [message]}, timeout=120)
        posted.raise_for_status()
        events = httpx.get(f"{call}/{posted.json()['event_id']}", timeout=120)
        events.raise_for_status()
        event = None
        for line in events.text.splitlines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = json.loads(line.removeprefix("data:"))
                if event == "error":  # Gradio sends {"error": message}, the message None unless shown
                    shown = data.get("error") if isinstance(data, dict) else data
                    raise RuntimeError(f"the app answered with an error: {shown or 'see the app log'}")
                return data[0]
        raise RuntimeError(f"no complete event in the answer: {events.text[:200]!r}")

    return ask


def run_load(
    url: str, messages: list[str], clients: int, api_name: str = "/moderate", transport: str = "gradio_client"
) -> LoadResult:
    """Send `messages` to `api_name` from `clients` concurrent clients, each sending its share in turn.

    Args:
        url (`str`): The app's address.
        messages (`list[str]`): One request per message; request `i` goes to client `i % clients`.
        clients (`int`): Concurrent clients (one client of `transport`, see `asker`, and one thread each).
        api_name (`str`, *optional*, defaults to `"/moderate"`): The endpoint.
        transport (`str`, *optional*, defaults to `"gradio_client"`): `gradio_client` or `http`.

    Returns:
        `LoadResult`: every answer and latency by request index, and the failures.
    """
    result = LoadResult()

    def worker(first: int) -> None:
        try:
            ask = asker(url, api_name, transport)
        except Exception as err:  # gradio_client connects when made: an app that is not there
            for index in range(first, len(messages), clients):
                result.errors[index] = f"{type(err).__name__}: {err}"
            return
        for index in range(first, len(messages), clients):
            start = time.perf_counter()
            try:
                result.answers[index] = ask(messages[index])
            except Exception as err:  # a lost or refused request is a result, not a crash
                result.errors[index] = f"{type(err).__name__}: {err}"
            result.latencies[index] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(worker, range(clients)))
    result.wall_s = time.perf_counter() - start
    return result


def summarize(result: LoadResult, n_requests: int) -> dict[str, Any]:
    """Counts, latency percentiles (seconds) and throughput of a load run."""
    latencies = np.array([result.latencies[i] for i in sorted(result.answers)])
    stats = {"requests": n_requests, "answered": len(result.answers), "failed": len(result.errors)}
    has = len(latencies) > 0
    stats.update(
        p50_s=float(np.percentile(latencies, 50)) if has else None,
        p95_s=float(np.percentile(latencies, 95)) if has else None,
        mean_s=float(latencies.mean()) if has else None,
        max_s=float(latencies.max()) if has else None,
        throughput_rps=len(latencies) / result.wall_s if has else 0.0,
    )
    stats["wall_s"] = result.wall_s
    return stats


def time_predictions(store: Any) -> list[tuple[float, int]]:
    """Record every `store.predict` call from now on: its seconds (the model's share of a request, plus
    any wait for the store's inference lock when requests overlap) and the thread that made it.

    Args:
        store (`ModelStore`): The app's models; its `predict` is wrapped in place.

    Returns:
        `list[tuple[float, int]]`: The list the wrapper appends `(seconds, thread id)` to (clear it to
        start again).
    """
    calls: list[tuple[float, int]] = []
    predict = store.predict

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return predict(*args, **kwargs)
        finally:
            calls.append((time.perf_counter() - start, threading.get_ident()))

    store.predict = timed
    return calls


def launch_app(args: argparse.Namespace) -> tuple[Any, str, list[tuple[float, int]]]:
    """Launch the demo with the settings of the command line (and the environment).

    Returns:
        `tuple`: the running app, its URL, and the list `time_predictions` fills with each prediction
        inside the app.
    """
    from space.app import serve
    from space.model_store import ModelStore, SpaceSettings

    settings = SpaceSettings.from_env(
        adapter=args.adapter,
        base_model=args.base_model,
        quantization=args.quantization,
        merge_adapter=args.merge_adapter,
    )
    store = ModelStore(settings)
    calls = time_predictions(store)
    return (*serve(store, concurrency=args.concurrency), calls)


def mismatches(
    url: str, messages: list[str], result: LoadResult, transport: str = "gradio_client"
) -> list[int]:
    """Requests whose answer under load differs from the answer to the same message asked alone."""
    ask = asker(url, transport=transport)
    return [index for index in sorted(result.answers) if ask(messages[index]) != result.answers[index]]


def make_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark."""
    from space.app import add_merge_adapter_argument

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an app that is already running (default: launch one here)")
    parser.add_argument(
        "--requests", type=count_type(1, "requests"), default=50, help="number of requests (default 50)"
    )
    parser.add_argument(
        "--clients", type=count_type(1, "clients"), default=10, help="concurrent clients (default 10)"
    )
    parser.add_argument("--adapter", help="adapter of the launched app (see space/README.md)")
    parser.add_argument("--base_model", help="base model of the launched app")
    parser.add_argument("--quantization", choices=["auto", "8bit", "4bit", "none"], help="default auto")
    parser.add_argument("--concurrency", type=int, default=2, help="concurrency limit of the launched app")
    add_merge_adapter_argument(parser)  # the launched app's
    parser.add_argument("--no_verify", action="store_true", help="do not re-ask each message alone")
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="gradio_client",
        help="gradio_client (default) or http: Gradio's REST API through httpx, without the client's polling",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file for the figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when a request failed or an answer did not match its input."""
    from gradio_client import Client

    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from space.model_store import ModelSetupError

    try:
        demo, url, in_app = (None, args.url, []) if args.url else launch_app(args)
    except ModelSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        messages = make_messages(args.requests)
        logger.info("Warm-up request to %s (loads the model) ...", url)
        warm_up = run_load(url, ["warm-up message"], 1, transport=args.transport)
        if warm_up.errors:
            print(f"error: the app failed its first request: {warm_up.errors[0]}", file=sys.stderr)
            return 1
        logger.info("%d requests from %d clients ...", args.requests, args.clients)
        loading_threads = {thread for _, thread in in_app}  # the warm-up request loaded the model
        in_app.clear()
        cpu_start = time.process_time()
        result = run_load(url, messages, args.clients, transport=args.transport)
        cpu_s = time.process_time() - cpu_start
        stats = summarize(result, args.requests)
        if in_app:  # launched here: the model's share of each request, and the CPU each request costs
            stats["predict_in_app_p50_s"] = float(np.percentile([s for s, _ in in_app], 50))
            stats["predict_threads"] = len(loading_threads | {thread for _, thread in in_app})
            stats["process_cpu_s_per_request"] = cpu_s / args.requests
        served = Client(url, verbose=False, analytics_enabled=False).predict(api_name="/model_info")
        if not args.no_verify:
            stats["mismatched"] = len(mismatches(url, messages, result, args.transport))
    finally:
        if demo is not None:
            demo.close()
    report = {
        "benchmark": "space_load",
        "url": args.url or "launched in-process",
        "clients": args.clients,
        "transport": args.transport,
        "served": served,  # what the app reports through /model_info
        "concurrency": None if args.url else args.concurrency,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1min": os.getloadavg()[0],  # other processes on the CPU skew the figures
        },
        **stats,
        "errors": sorted(set(result.errors.values()))[:5],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    p50, p95 = (f"{stats[key]:.3f} s" if stats[key] is not None else "n/a" for key in ("p50_s", "p95_s"))
    if "predict_in_app_p50_s" in stats:
        p50 += (
            f" (the model inside the app: {stats['predict_in_app_p50_s']:.3f} s on "
            f"{stats['predict_threads']} thread(s); "
            f"{stats['process_cpu_s_per_request']:.3f} CPU-s per request)"
        )
    checked = "answers not checked (--no_verify)"
    if "mismatched" in stats:
        checked = f"{stats['mismatched']} mismatched"
    print(
        f"{stats['answered']}/{args.requests} answered, {stats['failed']} failed, {checked}; "
        f"latency p50 {p50}, p95 {p95}; "
        f"{stats['throughput_rps']:.2f} requests/s -> {args.output}"
    )
    return 1 if stats["failed"] or stats.get("mismatched") else 0


if __name__ == "__main__":
    sys.exit(main())
