"""The demo's handlers as plain functions, without a server: input checks, CSV reading, decoding, models.

The model-backed handlers run a real tiny Llama-shaped model saved from a config (`tiny_model_dir`),
as the base model and with a real LoRA adapter directory, on the CPU without quantization.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from space import (
    app,
    csv_batch,
    generation,
    handlers,
    model_store,
)
from space.errors import InputError

SPACE_DIR = Path(__file__).resolve().parent.parent / "space"

#: What a handler raises for a person's input: its own message (`gr.Error`) or the model code's
#: `InputError`, which `app.user_facing` shows the same way.
SHOWN_ERRORS = (gr.Error, InputError)

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
    with pytest.raises(SHOWN_ERRORS, match=fragment):
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
    with pytest.raises(SHOWN_ERRORS, match=fragment):
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
        (
            "ragged.csv",
            "id,text\n1,ok\n2,one, two\n",
            {},
            "line 3 has 3 fields where the header has 2 .read with",
        ),
        ("latin.csv", b"text\n\x81\x98 au lait\n", {}, "not UTF-8 .* nor cp1252 / cp1251"),
    ],
)
def test_read_table_refuses_bad_files(tmp_path, name, content, kwargs, fragment):
    path = write(tmp_path / name, content)
    with pytest.raises(SHOWN_ERRORS, match=fragment):
        csv_batch.read_table(path, **kwargs)


def test_texts_of_checks_column_and_cells(tmp_path):
    table = csv_batch.read_table(write(tmp_path / "m.csv", "id,message\n1,hi\n2,\n3,  \n4,ok\n"))
    with pytest.raises(SHOWN_ERRORS, match=r"m.csv has no column 'text'; its columns are 'id', 'message'"):
        csv_batch.texts_of(table, "text", tmp_path / "m.csv", 100)
    with pytest.raises(SHOWN_ERRORS, match=r"rows 2, 3 \(header not counted\) are empty"):
        csv_batch.texts_of(table, "message", tmp_path / "m.csv", 100)
    table = csv_batch.read_table(write(tmp_path / "n.csv", "message\nshort\nmuch longer text\n"))
    with pytest.raises(SHOWN_ERRORS, match=r"row 2 \(header not counted\) are longer than 10"):
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
    with pytest.raises(SHOWN_ERRORS, match=fragment):
        generation.DecodingRequest(**kwargs)


def test_continue_prompt_styles(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    prompt = "The weather today is"

    def run(*args, **kwargs) -> str:
        return generation.continue_prompt(
            model, tokenizer, prompt, generation.DecodingRequest(*args, **kwargs)
        )

    greedy = run("greedy", 4)
    n_new = len(tokenizer(greedy, add_special_tokens=False)["input_ids"])
    assert 1 <= n_new <= 4 + 1  # decoding and re-encoding may merge or split one token
    assert run("beam search", 3, num_beams=2)
    sampled = [run("sampling", 4, seed=seed) for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1], "the same seed samples the same text"
    assert sampled[0] != sampled[2]


def test_continue_prompt_caps_prompt_length(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    with pytest.raises(SHOWN_ERRORS, match="The prompt is empty"):
        generation.continue_prompt(model, tokenizer, "  ", generation.DecodingRequest())
    with pytest.raises(SHOWN_ERRORS, match=f"up to {generation.MAX_PROMPT_CHARS}"):
        generation.continue_prompt(model, tokenizer, "a" * 2001, generation.DecodingRequest())
    with pytest.raises(SHOWN_ERRORS, match=f"tokens long; .* up to {generation.MAX_PROMPT_TOKENS} tokens"):
        generation.continue_prompt(model, tokenizer, "7 " * 600, generation.DecodingRequest())


# Settings


def test_settings_from_env(tmp_path, monkeypatch):
    monkeypatch.setattr(model_store, "DEFAULT_ADAPTER_DIR", tmp_path / "missing")
    settings = model_store.SpaceSettings.from_env({})
    assert settings.adapter is None and not settings.adapter_is_default
    assert settings.base_model == "smollm2-135m"
    assert settings.quantization in {"8bit", "none"}  # `auto`, resolved for the device at hand

    monkeypatch.setattr(model_store, "DEFAULT_ADAPTER_DIR", tmp_path)
    settings = model_store.SpaceSettings.from_env({})
    assert settings.adapter is None, "a run still in progress (no run.json yet) is not used"
    (tmp_path / "run.json").write_text("{}")
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
    assert model_store.SpaceSettings.from_env({}).merge_adapter
    assert not model_store.SpaceSettings.from_env({model_store.ENV_MERGE_ADAPTER: " False"}).merge_adapter
    assert model_store.SpaceSettings.from_env({model_store.ENV_MERGE_ADAPTER: "false"}, merge_adapter=True)
    with pytest.raises(model_store.ModelSetupError, match="MERGE_ADAPTER is 'sometimes'; set it to true"):
        model_store.SpaceSettings.from_env({model_store.ENV_MERGE_ADAPTER: "sometimes"})
    with pytest.raises(model_store.ModelSetupError, match="merge_adapter must be True or False, got 'false'"):
        model_store.SpaceSettings(merge_adapter="false")  # a string would be true in Python


def test_load_run_refuses_a_merge_adapter_that_is_not_a_bool(tmp_path):
    from trainer_ext.runs.directory import load_run

    with pytest.raises(TypeError, match="merge_adapter must be True or False, got 'yes'"):
        load_run(tmp_path, merge_adapter="yes")


def test_bitsandbytes_4bit_kernel_notice_is_dropped_and_other_records_kept():
    import logging

    import trainer_ext

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert trainer_ext._drop_4bit_kernel_notice in logger.filters

    def record(msg: str, *args) -> logging.LogRecord:
        return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, msg, args, None)

    notice = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please pip install kernels"
    assert not logger.filter(record(notice, ModuleNotFoundError("No module named 'kernels'")))
    assert logger.filter(record(notice, ConnectionError("the Hub could not be reached")))  # installed
    assert logger.filter(record("some other bitsandbytes warning"))


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
    with pytest.raises(gr.Error, match="shown on the page") as caught:
        app.user_facing(lambda: (_ for _ in ()).throw(InputError("shown on the page")))()
    assert caught.value.message == "shown on the page"


def test_examples_are_readable():
    headlines = app.read_examples("headlines.csv", "headline")
    messages = app.read_examples("messages.csv", "message")
    assert len(headlines) >= 5 and len(messages) >= 5
    with open(SPACE_DIR / "examples" / "headlines.csv", encoding="utf-8") as handle:
        categories = {row["category"] for row in csv.DictReader(handle)}
    assert categories == set(handlers.parse_categories(handlers.DEFAULT_CATEGORIES))


# Handlers on real (tiny) models


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A real run directory: LoRA on the tiny model, its weights moved off zero so that it changes answers."""
    import torch

    from trainer_ext.modeling.loading import load_model
    from trainer_ext.runs.directory import save_run
    from trainer_ext.runs.info import RunInfo
    from trainer_ext.tasks import moderation_task

    base = str(tiny_model_dir("llama"))
    loaded = load_model(base, quantization="none", method="lora-all", dtype="float32")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    run_info = RunInfo(base_model=base, quantization="none", method="lora-all", dtype="float32")
    return save_run(
        tmp_path_factory.mktemp("run"), loaded.model, loaded.tokenizer, moderation_task(), run_info
    )


@pytest.fixture(scope="module")
def trained(run_dir):
    return handlers.DemoHandlers(
        model_store.ModelStore(model_store.SpaceSettings(str(run_dir), quantization="none"))
    )


@pytest.fixture(scope="module")
def untrained(tiny_model_dir):
    settings = model_store.SpaceSettings(None, base_model=str(tiny_model_dir("llama")), quantization="8bit")
    return handlers.DemoHandlers(model_store.ModelStore(settings))


def test_models_load_lazily_once(run_dir):
    settings = model_store.SpaceSettings(str(run_dir), quantization="none", merge_adapter=False)
    store = model_store.ModelStore(settings)
    trained = handlers.DemoHandlers(store)
    assert not store.is_loaded("trained") and not store.is_loaded("base")
    info = trained.model_info()
    assert info["trained"] and info["loaded"] == [] and "loaded on the first request" in info["base_model"]
    trained.moderate("hello")
    first = store.trained()
    trained.moderate("hello again")
    assert store.trained() is first
    assert store.base().model is first.model, "the base model is the trained model with its adapter off"
    assert trained.model_info()["loaded"] == ["trained", "base"]


def test_merged_adapter_answers_as_the_separate_one_and_the_base_model_loads_apart(run_dir):
    """`trained` merges the adapter (the default); `separate` switches it off for the base model. Both in
    float32, where merging changes results by rounding only (bf16, the CPU default, rounds more)."""
    settings = model_store.SpaceSettings(str(run_dir), quantization="none", dtype="float32")
    store = model_store.ModelStore(settings)
    trained = handlers.DemoHandlers(store)
    assert store.settings.merge_adapter, "merged by default"
    settings = model_store.SpaceSettings(
        str(run_dir), quantization="none", dtype="float32", merge_adapter=False
    )
    separate = handlers.DemoHandlers(model_store.ModelStore(settings))
    message, headline = "see you at the match", "Shares slide after profits miss"
    categories = "business, tech"
    assert trained.moderate(message) == pytest.approx(separate.moderate(message), abs=1e-4)
    assert not hasattr(store.trained().model, "disable_adapter"), "the adapter is folded into the weights"
    with_adapter = separate.classify_topic(headline, categories, "trained")
    base = separate.classify_topic(headline, categories, "base")
    assert separate.store.base().model is separate.store.trained().model
    assert trained.classify_topic(headline, categories, "base") == pytest.approx(base, abs=1e-4)
    assert store.base().model is not store.trained().model, "the base model is a model of its own"
    assert trained.classify_topic(headline, categories, "trained") == pytest.approx(with_adapter, abs=1e-4)
    assert trained.model_info()["merge_adapter"] and not separate.model_info()["merge_adapter"]
    again = separate.classify_topic(headline, categories, "trained")
    assert again == pytest.approx(with_adapter, abs=1e-5), "switching the adapter off must not leave it off"


def test_the_base_model_loaded_apart_reads_texts_as_the_trained_run_does(run_dir, tmp_path):
    import json
    import shutil

    moved = shutil.copytree(run_dir, tmp_path / "run")
    info = json.loads((moved / "run.json").read_text(encoding="utf-8"))
    info["data"] = {**info.get("data", {}), "decode_html": True}
    info["task"] = {**info["task"], "max_length": 96, "truncation_side": "left"}
    (moved / "run.json").write_text(json.dumps(info), encoding="utf-8")
    store = model_store.ModelStore(
        model_store.SpaceSettings(str(moved), quantization="none", dtype="float32")
    )
    base, trained = store.base(), store.trained()
    assert base.model is not trained.model
    assert (base.decode_html, base.max_length, base.truncation_side) == (True, 96, "left")
    assert base.model.dtype == trained.model.dtype


def test_quantized_weights_keep_the_adapter_separate(run_dir, monkeypatch, caplog):
    caplog.set_level("INFO", logger="space.model_store")
    calls = []
    monkeypatch.setattr(
        "trainer_ext.inference.classifier.Classifier.from_pretrained",
        lambda path, **kwargs: calls.append(kwargs["merge_adapter"]),
    )
    for quantization in ("8bit", "none"):
        model_store.ModelStore(model_store.SpaceSettings(str(run_dir), quantization=quantization)).trained()
    model_store.ModelStore(
        model_store.SpaceSettings(str(run_dir), quantization="none", merge_adapter=False)
    ).trained()
    assert calls == [False, True, False]
    said = [r.getMessage() for r in caplog.records if "adapter stays separate" in r.getMessage()]
    assert said == [
        "The adapter stays separate: merging it needs unquantized weights (--quantization none), "
        "and the weights are 8bit."
    ]


def test_moderate_gives_a_probability_per_label(trained):
    probs = trained.moderate("  see you at the match tonight  ")
    assert list(probs) == ["hate", "offensive", "neutral"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert probs == trained.moderate("see you at the match tonight"), "the message is stripped"


def test_base_model_answers_differently_from_the_trained_one(trained):
    headline, categories = "Chipmaker shares slide after profits miss forecasts", "business, sport, tech"
    with_adapter = trained.classify_topic(headline, categories, "trained")
    without = trained.classify_topic(headline, categories, "base")
    assert list(with_adapter) == list(without) == ["business", "sport", "tech"]
    assert with_adapter != pytest.approx(without, abs=1e-3)
    assert trained.classify_topic(headline, categories, "trained") == pytest.approx(with_adapter, abs=1e-5), (
        "switching the adapter off for the base model must not leave it off"
    )
    raw = trained.classify_topic(headline, categories, "base", calibrate=False)
    assert raw != pytest.approx(without, abs=1e-3), "calibration changes the probabilities"
    assert sum(raw.values()) == pytest.approx(1.0, abs=1e-4)


def test_untrained_store_refuses_the_trained_choice(untrained):
    with pytest.raises(SHOWN_ERRORS, match="No trained adapter is configured"):
        untrained.classify_topic("A headline", "sport, tech", "trained")
    with pytest.raises(SHOWN_ERRORS, match="Unknown model choice 'large'"):
        untrained.classify_topic("A headline", "sport, tech", "large")
    probs = untrained.classify_topic("A headline", "sport, tech", "base")
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)


def test_untrained_store_runs_8bit(untrained):
    probs = untrained.moderate("have a nice day")
    assert list(probs) == ["hate", "offensive", "neutral"]
    import bitsandbytes as bnb

    modules = untrained.store.base().model.modules()
    assert any(isinstance(module, bnb.nn.Linear8bitLt) for module in modules)


def test_classify_csv(trained, tmp_path):
    table = tmp_path / "inbox.csv"
    rows = [f"message number {i}, with a comma" for i in range(handlers.BATCH_SIZE + 1)]
    table.write_text(
        "id,text\n" + "".join(f'{i},"{text}"\n' for i, text in enumerate(rows)), encoding="utf-8"
    )
    ticks = []

    def progress(fraction, desc=None):
        ticks.append(fraction)

    path, preview, counts = trained.classify_csv(str(table), "text", progress=progress)
    with open(path, newline="", encoding="utf-8") as handle:
        out = list(csv.DictReader(handle))
    assert [row["text"] for row in out] == rows
    expected = trained.store.predict(rows)  # all rows in one batch: the file's batches must agree, in order
    for row, prediction in zip(out, expected, strict=True):
        assert row["predicted_label"] == prediction.label
        assert float(row["prob_neutral"]) == pytest.approx(prediction.probs["neutral"], abs=1e-3)
    n = len(rows)
    assert len(preview) == n and counts.startswith(f"Classified {n} messages")
    assert ticks == [0.0, 0.0, handlers.BATCH_SIZE / n], "one tick before loading, one per batch"


def test_csv_columns_proposes_the_text_column(trained):
    update = trained.csv_columns(str(SPACE_DIR / "examples" / "messages.csv"))
    assert update.choices == [("id", "id"), ("message", "message")] and update.value == "message"
    assert trained.csv_columns(None).choices == []


def test_generate_with_each_style(trained):
    greedy = trained.generate("Once upon a time", "greedy", 4)
    assert greedy == trained.generate("Once upon a time", "greedy", 4)
    assert trained.generate("Once upon a time", "beam search", 4, num_beams=2)
    assert trained.generate("Once upon a time", "sampling", 4, seed=3) == trained.generate(
        "Once upon a time", "sampling", 4, seed=3
    )
    with pytest.raises(SHOWN_ERRORS, match="The prompt is empty"):
        trained.generate("")


def test_every_event_has_an_api_name(trained):
    demo = app.build_demo(trained.store)
    names = [fn.api_name for fn in demo.fns.values()]
    assert all(names), names
    assert {"moderate", "classify_topic", "csv_columns", "classify_csv", "generate", "model_info"} <= set(
        names
    )
    assert demo._queue.max_size == app.QUEUE_SIZE


@pytest.mark.gpu
def test_models_go_to_the_gpu_by_themselves(run_dir):
    assert model_store.SpaceSettings(str(run_dir)).quantization == "8bit", "`auto` is 8-bit on a GPU"
    on_gpu = handlers.DemoHandlers(
        model_store.ModelStore(model_store.SpaceSettings(str(run_dir), quantization="none"))
    )
    assert sum(on_gpu.moderate("hello").values()) == pytest.approx(1.0, abs=1e-3)
    assert next(on_gpu.store.trained().model.parameters()).device.type == "cuda"
    assert on_gpu.generate("Once upon a time", "greedy", 3)
