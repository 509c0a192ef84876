"""The demo's handlers as plain functions, without a server: input checks, CSV reading, decoding, models.

The model-backed handlers run a real tiny Llama-shaped model saved from a config (`tiny_model_dir`),
as the base model and with a real LoRA adapter directory, on the CPU without quantization.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

SPACE_DIR = Path(__file__).resolve().parent.parent / "space"
sys.path.insert(0, str(SPACE_DIR))

import app  # noqa: E402
import csv_batch  # noqa: E402
import generation  # noqa: E402
import handlers  # noqa: E402
import model_store  # noqa: E402

# Input checks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  hello there \n", "hello there"),
        ("x" * handlers.MAX_MESSAGE_CHARS, "x" * handlers.MAX_MESSAGE_CHARS),
    ],
)
def test_check_message_accepts_and_strips(text, expected):
    assert handlers.check_message(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (None, "empty"),
        ("y" * (handlers.MAX_MESSAGE_CHARS + 1), f"has {handlers.MAX_MESSAGE_CHARS + 1} characters"),
    ],
)
def test_check_message_refuses_with_a_reason(text, fragment):
    with pytest.raises(gr.Error, match=fragment):
        handlers.check_message(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "business, entertainment, politics, sport, tech",
            ["business", "entertainment", "politics", "sport", "tech"],
        ),
        ("sport,\ntech\n\n, science fiction ", ["sport", "tech", "science fiction"]),
        ("a,,b,", ["a", "b"]),
    ],
)
def test_parse_categories(text, expected):
    assert handlers.parse_categories(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("sport", "at least two"),
        ("", "at least two"),
        ("Sport, tech, sport", "listed twice"),
        (",".join(f"c{i}" for i in range(handlers.MAX_CATEGORIES + 1)), "at most"),
        ("sport, " + "z" * (handlers.MAX_CATEGORY_CHARS + 1), "longer than"),
    ],
)
def test_parse_categories_refuses(text, fragment):
    with pytest.raises(gr.Error, match=fragment):
        handlers.parse_categories(text)


# CSV files


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_read_table_reads_text_cells(tmp_path):
    path = write(tmp_path / "in.csv", 'id,text\n1,"hello, world"\n2,\n')
    table = csv_batch.read_table(path)
    assert list(table.columns) == ["id", "text"]
    assert table["text"].tolist() == ["hello, world", ""]
    assert table["id"].tolist() == ["1", "2"]


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "fragment"),
    [
        ("notes.txt", "text\nhi\n", {}, "notes.txt is not a CSV file"),
        ("big.csv", "text\n" + "hello\n" * 50, {"max_bytes": 100}, r"big.csv is 0.0 MB; .* up to 0.0 MB"),
        ("many.csv", "text\na\nb\nc\n", {"max_rows": 2}, "more than 2 rows"),
        ("empty.csv", "", {}, "empty.csv is empty"),
        ("header.csv", "id,text\n", {}, "header but no rows"),
        ("ragged.csv", "id,text\n1,ok\n2,one, two\n", {}, "line 3 has 3 fields where the header has 2"),
        ("latin.csv", b"text\ncaf\xe9 au lait\n", {}, "not UTF-8"),
    ],
)
def test_read_table_refuses_bad_files(tmp_path, name, content, kwargs, fragment):
    path = write(tmp_path / name, content)
    with pytest.raises(gr.Error, match=fragment):
        csv_batch.read_table(path, **kwargs)


def test_texts_of_checks_column_and_cells(tmp_path):
    table = csv_batch.read_table(write(tmp_path / "m.csv", "id,message\n1,hi\n2,\n3,  \n4,ok\n"))
    with pytest.raises(gr.Error, match=r"m.csv has no column 'text'; its columns are 'id', 'message'"):
        csv_batch.texts_of(table, "text", tmp_path / "m.csv", 100)
    with pytest.raises(gr.Error, match=r"rows 2, 3 \(header not counted\) are empty"):
        csv_batch.texts_of(table, "message", tmp_path / "m.csv", 100)
    table = csv_batch.read_table(write(tmp_path / "n.csv", "message\nshort\nmuch longer text\n"))
    with pytest.raises(gr.Error, match=r"row 2 \(header not counted\) are longer than 10"):
        csv_batch.texts_of(table, "message", tmp_path / "n.csv", 10)
    assert csv_batch.texts_of(table, "message", tmp_path / "n.csv", 100) == ["short", "much longer text"]


def test_guess_text_column(tmp_path):
    named = csv_batch.read_table(write(tmp_path / "a.csv", "id,Tweet,score\n1,hello there,3\n"))
    assert csv_batch.guess_text_column(named) == "Tweet"
    unnamed = csv_batch.read_table(write(tmp_path / "b.csv", "id,words\n1,a long line of words\n"))
    assert csv_batch.guess_text_column(unnamed) == "words"


def test_predictions_table_appends_label_and_probabilities(tmp_path):
    table = csv_batch.read_table(write(tmp_path / "a.csv", "message,predicted_label\nhi,old\nbye,old\n"))
    predictions = [
        SimpleNamespace(label="neutral", probs={"hate": 0.1, "neutral": 0.9}),
        SimpleNamespace(label="hate", probs={"hate": 0.75, "neutral": 0.25}),
    ]
    out = csv_batch.predictions_table(table, predictions, ["hate", "neutral"])
    assert list(out.columns) == [
        "message",
        "predicted_label",
        "predicted_label_",
        "prob_hate",
        "prob_neutral",
    ]
    assert out["predicted_label_"].tolist() == ["neutral", "hate"]
    assert out["prob_hate"].tolist() == [0.1, 0.75]
    assert (
        csv_batch.summary(predictions, ["hate", "neutral"])
        == "Classified 2 messages: **hate** 1, **neutral** 1."
    )


# Decoding


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (generation.DecodingRequest("greedy", 5), {"max_new_tokens": 5, "num_beams": 1, "do_sample": False}),
        (
            generation.DecodingRequest("beam search", 7, num_beams=3),
            {"max_new_tokens": 7, "num_beams": 3, "do_sample": False, "early_stopping": True},
        ),
        (
            generation.DecodingRequest("sampling", 9, temperature=0.5, top_p=0.9),
            {"max_new_tokens": 9, "num_beams": 1, "do_sample": True, "temperature": 0.5, "top_p": 0.9},
        ),
    ],
)
def test_decoding_kwargs(request_, expected):
    assert request_.generate_kwargs() == expected


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"style": "top-k"}, "Unknown decoding style"),
        ({"max_new_tokens": 0}, "Max new tokens must be a whole number from 1"),
        ({"max_new_tokens": generation.MAX_NEW_TOKENS + 1}, "Max new tokens"),
        ({"max_new_tokens": 2.5}, "whole number"),
        ({"style": "beam search", "num_beams": 1}, "Beams must be a whole number from 2"),
        ({"style": "sampling", "temperature": 0.0}, "Temperature"),
        ({"style": "sampling", "top_p": 1.5}, "Top-p"),
    ],
)
def test_decoding_request_refuses(kwargs, fragment):
    with pytest.raises(gr.Error, match=fragment):
        generation.DecodingRequest(**kwargs)


def test_continue_prompt_styles(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    prompt = "The weather today is"
    greedy = generation.continue_prompt(model, tokenizer, prompt, generation.DecodingRequest("greedy", 6))
    assert greedy == generation.continue_prompt(
        model, tokenizer, prompt, generation.DecodingRequest("greedy", 6)
    )
    n_new = len(tokenizer(greedy, add_special_tokens=False)["input_ids"])
    assert 1 <= n_new <= 6 + 1  # decoding and re-encoding may merge or split one token
    beam = generation.continue_prompt(
        model, tokenizer, prompt, generation.DecodingRequest("beam search", 4, 2)
    )
    assert isinstance(beam, str) and beam
    sampled = [
        generation.continue_prompt(
            model, tokenizer, prompt, generation.DecodingRequest("sampling", 6, seed=seed)
        )
        for seed in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]


def test_continue_prompt_caps_prompt_length(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    with pytest.raises(gr.Error, match="The prompt is empty"):
        generation.continue_prompt(model, tokenizer, "  ", generation.DecodingRequest())
    with pytest.raises(gr.Error, match=f"up to {generation.MAX_PROMPT_CHARS}"):
        generation.continue_prompt(model, tokenizer, "a" * 2001, generation.DecodingRequest())
    with pytest.raises(gr.Error, match=f"tokens long; .* up to {generation.MAX_PROMPT_TOKENS} tokens"):
        generation.continue_prompt(model, tokenizer, "7 " * 600, generation.DecodingRequest())


# Settings


def test_settings_from_env(tmp_path, monkeypatch):
    monkeypatch.setattr(model_store, "DEFAULT_ADAPTER_DIR", tmp_path / "missing")
    settings = model_store.SpaceSettings.from_env({})
    assert settings.adapter is None and not settings.adapter_is_default
    assert settings.base_model == "smollm2-135m"
    assert settings.quantization in {"8bit", "none"}  # `auto`, resolved for the device at hand

    monkeypatch.setattr(model_store, "DEFAULT_ADAPTER_DIR", tmp_path)
    settings = model_store.SpaceSettings.from_env({model_store.ENV_QUANTIZATION: "none"})
    assert settings.adapter == str(tmp_path) and settings.adapter_is_default
    settings = model_store.SpaceSettings.from_env({model_store.ENV_ADAPTER: ""})
    assert settings.adapter is None, "an empty adapter variable means: base model only"
    settings = model_store.SpaceSettings.from_env(
        {model_store.ENV_ADAPTER: "user/moderation-lora"}, revision="v1"
    )
    assert (settings.adapter, settings.revision) == ("user/moderation-lora", "v1")
    settings = model_store.SpaceSettings.from_env(
        {model_store.ENV_ADAPTER: "user/run"}, adapter=str(tmp_path)
    )
    assert settings.adapter == str(tmp_path), "a command-line value overrides the environment"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"adapter": "/no/such/run"}, "The adapter directory /no/such/run .* does not exist"),
        ({"adapter": "runs/missing-run/here"}, "does not exist"),
        ({"quantization": "3bit"}, "Unknown quantization '3bit'"),
    ],
)
def test_settings_refuse(kwargs, fragment):
    with pytest.raises(model_store.ModelSetupError, match=fragment):
        model_store.SpaceSettings(**kwargs)


def test_model_notice_says_when_the_model_is_untrained(tmp_path):
    untrained = app.model_notice(model_store.SpaceSettings(adapter=None, quantization="none"))
    assert "No trained adapter found" in untrained and "untrained" in untrained
    trained = app.model_notice(model_store.SpaceSettings(adapter=str(tmp_path), quantization="none"))
    assert str(tmp_path) in trained and "untrained" not in trained


def test_user_facing_turns_failures_into_messages():
    def broken(text: str) -> str:
        raise KeyError(text)

    def unavailable() -> None:
        raise model_store.ModelSetupError("Could not load <the model>")

    with pytest.raises(gr.Error) as caught:
        app.user_facing(broken)("boom")
    assert "Something went wrong while answering (KeyError)" in caught.value.message
    assert "boom" not in caught.value.message
    with pytest.raises(gr.Error) as caught:
        app.user_facing(unavailable)()
    assert caught.value.message == "Could not load &lt;the model&gt;"
    with pytest.raises(gr.Error, match="kept as is"):
        app.user_facing(lambda: (_ for _ in ()).throw(gr.Error("kept as is")))()


def test_examples_are_readable():
    headlines = app.read_examples("headlines.csv", "headline")
    messages = app.read_examples("messages.csv", "message")
    assert len(headlines) >= 5 and len(messages) >= 5
    with open(SPACE_DIR / "examples" / "headlines.csv", encoding="utf-8") as handle:
        categories = {row["category"] for row in csv.DictReader(handle)}
    assert categories == set(handlers.parse_categories(handlers.DEFAULT_CATEGORIES))
