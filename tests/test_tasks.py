"""LabelTask: prompt styles, verbalizers, k-shot prompts, parsing completions, JSON, validation."""

from __future__ import annotations

import doctest
import json

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import HfArgumentParser, PreTrainedTokenizerFast

import trainer_ext.tasks.task
from trainer_ext.tasks import (
    INSTRUCTION_TEMPLATE,
    LabelTask,
    TaskError,
    TaskSettings,
    format_label_list,
    moderation_task,
    parse_label_list,
    topic_task,
)
from trainer_ext.training.tokenization import check_label_tokens

MODERATION = ["hate", "offensive", "neutral"]
TWEET = "I can't believe it's Monday again"
SHOT_POOL = [(f"{label} example {i}", label) for label in ("hate", "offensive", "neutral") for i in range(5)]


def test_instruction_prompt_names_the_labels_and_ends_with_the_answer_cue():
    task = moderation_task()
    assert task.prompt(TWEET) == (
        "Classify the following messages into one of the following categories: hate, offensive, neutral\n\n"
        f"Message: {TWEET}\n\nCategory:"
    )
    assert task.completion("offensive") == " offensive"


@pytest.mark.parametrize(
    ("settings", "expected_prompt"),
    [
        (TaskSettings(labels=MODERATION, prompt_style="raw"), f"{TWEET} ###"),
        (TaskSettings(labels=MODERATION, prompt_style="raw", separator="\n=>"), f"{TWEET}\n=>"),
        (
            TaskSettings(labels=MODERATION, prompt_style="Labels: {labels}\nTweet: {text}\nLabel:"),
            f"Labels: hate, offensive, neutral\nTweet: {TWEET}\nLabel:",
        ),
    ],
    ids=["raw", "raw-separator", "custom"],
)
def test_prompt_styles(settings, expected_prompt):
    task = LabelTask.from_settings(settings)
    assert task.prompt(TWEET) == expected_prompt
    prefix, text, suffix = task.prompt_parts(TWEET)
    assert (prefix + text + suffix, text) == (expected_prompt, TWEET)


def test_prompt_parts_put_instruction_in_prefix_and_cue_in_suffix():
    prefix, text, suffix = moderation_task().prompt_parts("{labels} {text}")
    assert prefix.startswith("Classify") and prefix.endswith("Message: ")
    assert text == "{labels} {text}"  # the message is never formatted
    assert suffix == "\n\nCategory:"


def test_custom_verbalizers_and_parsing():
    task = LabelTask(["hate", "offensive", "neutral"], verbalizers={"neutral": " none"})
    assert task.verbalizers == {"hate": " hate", "offensive": " offensive", "neutral": " none"}
    assert task.label_from_completion(" none\n") == "neutral"
    assert task.label_from_completion(" neutral") == "neutral"


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        (" hate", "hate"),
        ("Hate.", "hate"),
        ("  OFFENSIVE!\nMessage: more text", "offensive"),
        (" neutral language is fine", None),  # more words after a label: another answer, not the label
        (" hate speech", "hate speech"),
        ("", None),
        ("   \n", None),
        (" sport", None),
        ("\nneutral", "neutral"),
        ("hate<|endoftext|>", "hate"),
        (" hateful", None),
        (" hate_speech", None),
        ("neutrally", None),
    ],
)
def test_label_from_completion(generated, expected):
    task = LabelTask(["hate", "hate speech", "offensive", "neutral"])
    assert task.label_from_completion(generated) == expected


def test_with_shots_is_balanced_seeded_and_rendered_in_the_message_format():
    task = moderation_task().with_shots(SHOT_POOL, k=2, seed=3)
    assert sorted(label for _, label in task.shots) == ["hate"] * 2 + ["neutral"] * 2 + ["offensive"] * 2
    assert task.shots == moderation_task().with_shots(SHOT_POOL, k=2, seed=3).shots
    assert {tuple(moderation_task().with_shots(SHOT_POOL, k=2, seed=s).shots) for s in range(5)} != {
        tuple(task.shots)
    }
    prompt = task.prompt(TWEET)
    assert prompt.count("Classify the following") == 1
    first_text, first_label = task.shots[0]
    assert f"Message: {first_text}\n\nCategory: {first_label}\n\nMessage: " in prompt
    assert prompt.endswith(f"Message: {TWEET}\n\nCategory:")
    assert prompt.index(task.shots[-1][0]) < prompt.index(TWEET)


def test_with_shots_raw_style_and_errors():
    task = LabelTask.from_settings(
        TaskSettings(labels=MODERATION, prompt_style="raw", shots=1), shot_examples=SHOT_POOL, seed=0
    )
    assert len(task.shots) == 3
    text, label = task.shots[0]
    assert task.prompt(TWEET).startswith(f"{text} ### {label}\n\n")
    with pytest.raises(TaskError, match="needs examples"):
        LabelTask.from_settings(TaskSettings(labels=MODERATION, shots=1))
    with pytest.raises(TaskError, match="'hate'"):
        moderation_task().with_shots(SHOT_POOL, k=6)


def test_with_labels_keeps_template_and_drops_foreign_shots():
    task = moderation_task().with_shots(SHOT_POOL, k=1)
    topics = task.with_labels(["business", "sport"])
    assert topics.template == task.template and topics.shots == []
    assert "categories: business, sport\n" in topics.prompt("Shares rise")
    assert topics.completion("sport") == " sport"
    assert topic_task(["tech"]).prompt("x").startswith("Classify")


def test_a_single_string_is_not_taken_for_a_label_set():
    """``list("sport, politics")`` would be its characters: refused, with the list to write instead."""
    with pytest.raises(TaskError, match=r"not the string 'sport, politics'; write \['sport', 'politics'\]"):
        moderation_task().with_labels("sport, politics")
    with pytest.raises(TaskError, match="labels must be a list of label names"):
        LabelTask("hate")


def test_json_round_trip(tmp_path):
    task = LabelTask(["a", "b"], {"b": " beta"}, "Q: {text}\nA:", shots=[("x", "a")])
    assert LabelTask.from_dict(json.loads(json.dumps(task.to_dict()))) == task
    path = task.save(tmp_path / "run")
    assert path.name == "task.json" and json.loads(path.read_text())["labels"] == ["a", "b"]
    assert LabelTask.load(tmp_path / "run") == task
    assert LabelTask.load(path) == task


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "No task.json"),
        ("{not json", "not a valid task file"),
        ('{"template": "{text}"}', "needs at least 'labels'"),
        ('{"labels": ["a"], "format_version": 99}', "newer"),
    ],
)
def test_load_errors(tmp_path, content, match):
    if content is not None:
        (tmp_path / "task.json").write_text(content)
    with pytest.raises(TaskError, match=match):
        LabelTask.load(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": ["hate", "neutral", "hate"]}, "Duplicate label 'hate'"),
        ({"labels": ["Hate", "hate"]}, "ignoring case"),
        ({"labels": ["hate", ""]}, "Empty"),
        ({"labels": []}, "non-empty"),
        ({"labels": [" hate"]}, "whitespace"),
        ({"labels": ["a"], "template": "no placeholder"}, "exactly once"),
        ({"labels": ["a"], "template": "{text} and {text}"}, "exactly once"),
        ({"labels": ["a"], "verbalizers": {"b": " b"}}, "not in labels"),
        ({"labels": ["a"], "verbalizers": {"a": "  "}}, "empty"),
        ({"labels": ["a", "b"], "verbalizers": {"a": " x", "b": " X"}}, "same verbalizer"),
        ({"labels": ["a"], "shots": [("text", "z")]}, "not in labels"),
    ],
)
def test_task_validation(kwargs, match):
    with pytest.raises(TaskError, match=match):
        LabelTask(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_style": "chatty"}, "neither 'instruction', 'raw'"),
        ({"prompt_style": "raw", "separator": ""}, "separator"),
        ({"shots": -1}, "shots"),
        ({"max_length": 2}, "max_length"),
        ({"verbalizers": "{bad json"}, "not valid JSON"),
        ({"labels": ["a", "a"]}, "Duplicate"),
    ],
)
def test_task_settings_validation(kwargs, match):
    with pytest.raises(TaskError, match=match):
        TaskSettings(**kwargs)


def test_task_settings_from_command_line():
    (settings,) = HfArgumentParser(TaskSettings).parse_args_into_dataclasses(
        ["--labels", "sport", "tech", "--verbalizers", '{"tech": " technology"}', "--shots", "1"]
    )
    assert settings.labels == ["sport", "tech"]
    assert settings.verbalizers == {"tech": " technology"}
    assert settings.prompt_style == "instruction" and settings.max_length == 256
    task = LabelTask.from_settings(settings, shot_examples=[("a", "sport"), ("b", "tech")])
    assert task.template == INSTRUCTION_TEMPLATE and task.completion("tech") == " technology"


def _word_tokenizer(vocab: dict[str, int], strip: str | None = None) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, **vocab}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if strip:
        backend.normalizer = normalizers.Replace(strip, "")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def test_docstring_example_runs():
    result = doctest.testmod(trainer_ext.tasks.task)
    assert result.attempted > 0 and result.failed == 0


def test_check_label_tokens_accepts_distinct_labels(gpt2_tokenizer):
    check_label_tokens(moderation_task(), gpt2_tokenizer)
    check_label_tokens(LabelTask(["hate", "hate speech"]), gpt2_tokenizer)


def test_check_label_tokens_reports_identical_ids():
    tokenizer = _word_tokenizer({"yes": 2})  # both labels become <unk>
    with pytest.raises(TaskError, match="Labels 'spam' and 'ham' tokenise to the same ids"):
        check_label_tokens(LabelTask(["yes", "spam", "ham"]), tokenizer)


def test_check_label_tokens_reports_empty_verbalizer():
    tokenizer = _word_tokenizer({"yes": 2}, strip="!")
    with pytest.raises(TaskError, match="label '!!' is empty after tokenisation"):
        check_label_tokens(LabelTask(["yes", "!!"]), tokenizer)


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        (" C", "C"),
        (" C++", "C++"),
        (" C#", "C#"),
        (" C+", None),  # not C, and not C++ either
        (" C#.", "C#"),
        (" c++\nnext line", "C++"),
        (" C-sharp", None),
        (" N/A", "N/A"),
        (" N/A!", "N/A"),
        (" N", None),
        (" Sci/Tech", "Sci/Tech"),
        (" Sci", None),
        (" +1", "+1"),
        (" +12", None),
        (" negative", "negative"),
        (" very negative", "very negative"),
        (" very negative indeed", None),
        (" negative</s>", "negative"),
    ],
)
def test_a_label_matches_only_up_to_the_end_of_the_answer(generated, expected):
    task = LabelTask(["C", "C++", "C#", "N/A", "Sci/Tech", "+1", "negative", "very negative"])
    assert task.label_from_completion(generated) == expected


def test_a_label_with_the_list_separator_is_refused_and_the_string_form_round_trips():
    with pytest.raises(TaskError, match="contains a comma"):
        LabelTask(["Business, Finance", "Sports"])
    with pytest.raises(TaskError, match="contains a comma"):
        TaskSettings(labels=["a,b", "c"])
    settings = TaskSettings(labels="Business / Finance, Sports,Sci/Tech")
    assert settings.labels == ["Business / Finance", "Sports", "Sci/Tech"]
    assert parse_label_list(format_label_list(settings.labels)) == settings.labels
    task = LabelTask(settings.labels)
    assert "categories: Business / Finance, Sports, Sci/Tech\n" in task.prompt("x")
