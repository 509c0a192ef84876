"""The demo over HTTP: launched on 127.0.0.1, every API endpoint called with `gradio_client`, then closed.

One app serves the embedded SmolLM2-135M-Instruct base model with the app's default settings (no
adapter: the untrained path the page warns about; quantization `auto`, i.e. unquantized on a CPU); the
load test uses a second app on a tiny model so that 50 requests stay fast. Latency is not asserted
here: `benchmarks/space.py` measures it.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from benchmarks.space import make_messages, run_load
from space import (
    handlers,
    model_store,
)
from space.app import serve

REPO_ROOT = Path(__file__).resolve().parent.parent

MESSAGES_CSV = REPO_ROOT / "space" / "examples" / "messages.csv"
ENDPOINTS = {"/moderate", "/classify_topic", "/csv_columns", "/classify_csv", "/generate", "/model_info"}


def launch(settings: model_store.SpaceSettings):
    """Launch the demo on a free loopback port; returns the Blocks, the URL and in-process handlers."""
    store = model_store.ModelStore(settings)
    demo, url = serve(store)
    return demo, url, handlers.DemoHandlers(store)


@pytest.fixture(scope="module")
def smollm2_app(smollm2_path):
    settings = model_store.SpaceSettings(adapter=None, base_model=smollm2_path)
    demo, url, local = launch(settings)
    client = Client(url, verbose=False, analytics_enabled=False)
    yield SimpleNamespace(url=url, client=client, handlers=local)
    demo.close()


def confidences(answer: dict) -> dict[str, float]:
    """`{label: probability}` from the answer of a `gr.Label` endpoint."""
    return {item["label"]: item["confidence"] for item in answer["confidences"]}


def test_every_endpoint_is_named(smollm2_app):
    api = smollm2_app.client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) >= ENDPOINTS
    assert not api["unnamed_endpoints"]


def test_moderate(smollm2_app):
    message = "Thank you all for the birthday wishes, it was a wonderful day!"
    answer = smollm2_app.client.predict(message, api_name="/moderate")
    probs = confidences(answer)
    assert set(probs) == {"hate", "offensive", "neutral"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert answer["label"] == max(probs, key=probs.get)
    local = smollm2_app.handlers.moderate(message)
    assert probs == pytest.approx(local, abs=1e-4), "the server answers what the handler computes"


def test_classify_topic_with_own_categories(smollm2_app):
    answer = smollm2_app.client.predict(
        "Striker scores twice as the league leaders win again",
        "sport, politics, cooking",
        "base",
        api_name="/classify_topic",
    )
    probs = confidences(answer)
    assert set(probs) == {"sport", "politics", "cooking"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)


def test_classify_topic_without_adapter_offers_only_the_base_model(smollm2_app):
    with pytest.raises(AppError, match=r"'trained' .* is not in the list of choices: \['base'\]"):
        smollm2_app.client.predict(
            "A headline", handlers.DEFAULT_CATEGORIES, "trained", api_name="/classify_topic"
        )


def test_csv_columns_and_batch(smollm2_app, tmp_path):
    client = smollm2_app.client
    columns = client.predict(handle_file(str(MESSAGES_CSV)), api_name="/csv_columns")
    assert [choice[1] for choice in columns["choices"]] == ["id", "message"]
    assert columns["value"] == "message", "the text column is chosen for the user"
    small = tmp_path / "three.csv"
    small.write_text('id,text\n1,"Lovely weather, isn\'t it?"\n2,You are an idiot\n3,See you at lunch\n')
    path, preview, summary = client.predict(handle_file(str(small)), "text", api_name="/classify_csv")
    assert Path(path).name == "three_predictions.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["text"] == "Lovely weather, isn't it?"
    for row in rows:
        probs = {label: float(row[f"prob_{label}"]) for label in ("hate", "offensive", "neutral")}
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
        assert row["predicted_label"] == max(probs, key=probs.get)
    assert preview["headers"][-4:] == ["predicted_label", "prob_hate", "prob_offensive", "prob_neutral"]
    assert len(preview["data"]) == 3
    assert summary.startswith("Classified 3 messages")


@pytest.mark.parametrize(
    ("name", "content", "column", "fragment"),
    [
        (
            "table.csv",
            "id,text\n1,hello\n",
            "message",
            "table.csv has no column 'message'; its columns are 'id', 'text'",
        ),
        (
            "table.csv",
            "text\n" + "x" * 1001 + "\n",
            "text",
            "row 1 \\(header not counted\\) are longer than 1000",
        ),
        ("empty.csv", "", "text", "empty.csv is empty"),
    ],
)
def test_batch_errors_are_clear(smollm2_app, tmp_path, name, content, column, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AppError, match=fragment):
        smollm2_app.client.predict(handle_file(str(path)), column, api_name="/classify_csv")


def test_batch_refuses_a_file_that_is_not_csv(smollm2_app, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("text\nhello\n")
    with pytest.raises(
        AppError, match=r"Invalid file type. Please upload a file that is one of these formats: \['.csv'\]"
    ):
        smollm2_app.client.predict(handle_file(str(path)), "text", api_name="/classify_csv")


def test_generate_greedy_matches_the_handler(smollm2_app):
    prompt = "The capital of France is"
    answer = smollm2_app.client.predict(prompt, "greedy", 3, 4, 0.8, 0.95, 0, api_name="/generate")
    assert answer and answer == smollm2_app.handlers.generate(prompt, "greedy", 3)


def test_input_length_is_capped(smollm2_app):
    with pytest.raises(AppError, match="has 1001 characters; this demo classifies up to 1000"):
        smollm2_app.client.predict("a" * 1001, api_name="/moderate")
    with pytest.raises(AppError, match="Value 500 is greater than maximum value 200"):
        smollm2_app.client.predict("Hello", "greedy", 500, 4, 0.8, 0.95, 0, api_name="/generate")


def test_model_info(smollm2_app):
    info = smollm2_app.client.predict(api_name="/model_info")
    assert info["trained"] is False and info["adapter"] is None
    assert info["quantization"] in {"8bit", "none"}  # `auto`: 8-bit on a GPU, unquantized on a CPU


# Load: many clients at once, none lost or mixed up


@pytest.fixture(scope="module")
def tiny_app(tiny_model_dir):
    settings = model_store.SpaceSettings(
        adapter=None, base_model=str(tiny_model_dir("llama")), quantization="none"
    )
    demo, url, local = launch(settings)
    yield SimpleNamespace(url=url, handlers=local)
    demo.close()


@pytest.mark.parametrize("transport", ["gradio_client", "http"])
def test_concurrent_requests_are_all_answered_with_their_own_answer(tiny_app, transport):
    messages = make_messages(50)
    expected = {index: tiny_app.handlers.moderate(message) for index, message in enumerate(messages)}
    distinct = {tuple(round(p, 4) for p in probs.values()) for probs in expected.values()}
    assert len(distinct) > 40, "the inputs must get distinguishable answers for a mix-up to show"

    result = run_load(tiny_app.url, messages, clients=10, transport=transport)

    assert result.errors == {}
    assert sorted(result.answers) == list(range(50))
    for index, answer in result.answers.items():
        assert confidences(answer) == pytest.approx(expected[index], abs=1e-4), (
            f"request {index} got another answer"
        )


def test_the_benchmarks_http_client_reports_an_error_answer_as_a_failed_request(tiny_app):
    result = run_load(tiny_app.url, ["   "], clients=1, transport="http")  # an empty message is refused
    assert result.answers == {} and "the app answered with an error" in result.errors[0]


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--clients", "0"], "expected a number of clients, 1 or more; got '0'"),
        (["--requests", "-3"], "expected a number of requests, 1 or more; got '-3'"),
    ],
)
def test_the_space_benchmark_refuses_bad_counts(argv, shown, capsys):
    from benchmarks.space import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and shown in capsys.readouterr().err


def test_the_space_benchmark_names_a_missing_adapter_in_one_line(tmp_path, capsys):
    from benchmarks.space import main

    assert main(["--adapter", str(tmp_path / "nope"), "--output", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The adapter directory") and "Traceback" not in err
    assert not (tmp_path / "out.json").exists()


def test_the_space_benchmark_times_each_prediction_inside_the_app():
    from benchmarks.space import time_predictions

    class Store:
        def predict(self, texts):
            if not texts:
                raise ValueError("no texts")
            time.sleep(0.01)
            return [text.upper() for text in texts]

    store = Store()
    calls = time_predictions(store)
    assert store.predict(["a", "b"]) == ["A", "B"]
    with pytest.raises(ValueError, match="no texts"):
        store.predict([])
    assert len(calls) == 2 and calls[0][0] >= 0.01 and calls[0][1] == threading.get_ident()


def test_the_space_benchmark_says_in_one_line_when_no_app_answers(tmp_path, capsys):
    """gradio_client connects when it is made: an address where nothing listens is a failed request."""
    import socket

    from benchmarks.space import main

    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["--url", f"http://127.0.0.1:{port}/", "--output", str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the app failed its first request:") and "Traceback" not in err
    assert not (tmp_path / "out.json").exists()
