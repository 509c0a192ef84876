"""Training prompt variation for transfer: label order, distractor labels, reworded instruction."""

import random

import pytest

from trainer_ext.data.examples import Example
from trainer_ext.tasks import LabelTask, PromptVariation, TaskError, TaskSettings
from trainer_ext.tasks.variation import DEFAULT_DISTRACTOR_POOL, INSTRUCTION_PARAPHRASES
from trainer_ext.training.tokenization import encode_dataset, encode_prompt
from trainer_ext.training.trainer import LabelDataset

LABELS = ["hate", "offensive", "neutral"]
EXAMPLES = [Example(f"message number {i}", LABELS[i % 3]) for i in range(24)]


def _prompts(tokenizer, task, seed=0):
    encoded = encode_dataset(tokenizer, task, EXAMPLES, 128, variation_seed=seed)
    texts = []
    for sample in encoded:
        prompt = [
            tok for tok, label in zip(sample["input_ids"], sample["labels"], strict=True) if label == -100
        ]
        texts.append(tokenizer.decode(prompt))
    return encoded, texts


def _listed(prompt: str) -> list[str]:
    header = prompt.split("\n\nMessage:")[0]
    for paraphrase in INSTRUCTION_PARAPHRASES:
        before, after = paraphrase.split("{labels}")
        if header.startswith(before) and header.endswith(after):
            return header[len(before) : len(header) - len(after)].split(", ")
    raise AssertionError(f"not an instruction prompt: {header!r}")


def test_off_by_default(gpt2_tokenizer):
    task = LabelTask(LABELS)
    assert not task.training_variation.active
    assert not TaskSettings(labels=LABELS).variation().active
    assert not LabelTask.from_settings(TaskSettings(labels=LABELS)).training_variation.active
    plain = encode_dataset(gpt2_tokenizer, task, EXAMPLES, 128)
    assert encode_dataset(gpt2_tokenizer, task, EXAMPLES, 128, variation_seed=3) == plain
    _, texts = _prompts(gpt2_tokenizer, task)
    assert all(text == task.prompt(example.text) for text, example in zip(texts, EXAMPLES, strict=True))
    assert task.to_dict()["training_variation"] == PromptVariation().to_dict()


def test_shuffled_label_order(gpt2_tokenizer):
    task = LabelTask(LABELS, training_variation=PromptVariation(shuffle_labels=True))
    encoded, texts = _prompts(gpt2_tokenizer, task)
    orders = [tuple(_listed(text)) for text in texts]
    assert all(sorted(order) == sorted(LABELS) for order in orders)
    assert len(set(orders)) >= 4  # 24 samples see several of the 6 orders
    # The completion (the true label) is unchanged, and the draw is seeded.
    plain = encode_dataset(gpt2_tokenizer, LabelTask(LABELS), EXAMPLES, 128)
    for varied, fixed in zip(encoded, plain, strict=True):
        assert [t for t in varied["labels"] if t != -100] == [t for t in fixed["labels"] if t != -100]
    assert _prompts(gpt2_tokenizer, task)[1] == texts
    assert _prompts(gpt2_tokenizer, task, seed=1)[1] != texts
    # Evaluation and prediction prompts are the task's own.
    dataset = LabelDataset(EXAMPLES, gpt2_tokenizer, task, 128, variation_seed=0)
    assert dataset.prompts[0] == encode_prompt(gpt2_tokenizer, LabelTask(LABELS), EXAMPLES[0].text, 128)
    assert dataset.encoded == encoded


def test_distractor_labels(gpt2_tokenizer):
    variation = PromptVariation(distractors=2)
    task = LabelTask(LABELS, training_variation=variation)
    _, texts = _prompts(gpt2_tokenizer, task)
    for text in texts:
        listed = _listed(text)
        extra = [label for label in listed if label not in LABELS]
        assert len(listed) == 5 and len(extra) == 2 and set(extra) <= set(DEFAULT_DISTRACTOR_POOL)
        assert [label for label in listed if label in LABELS] == LABELS  # not shuffled: the task's order
    positions = {tuple(i for i, label in enumerate(_listed(t)) if label not in LABELS) for t in texts}
    assert len(positions) > 1  # distractors go anywhere in the list
    # A pool label that is also a task label is never listed as a distractor.
    own = PromptVariation(distractors=1, distractor_pool=["Hate", "weather"])
    assert own.template(LabelTask(LABELS).template, LABELS, random.Random(0)).count("weather") == 1
    with pytest.raises(TaskError, match="pool has only 1"):
        short = PromptVariation(distractors=2, distractor_pool=["hate", "weather"])
        short.template("{labels} {text}", LABELS, random.Random(0))


def test_reworded_instruction(gpt2_tokenizer):
    task = LabelTask(LABELS, training_variation=PromptVariation(paraphrase=True, shuffle_labels=True))
    _, texts = _prompts(gpt2_tokenizer, task)
    headers = {text.split("\n\nMessage:")[0].replace(", ".join(_listed(text)), "{labels}") for text in texts}
    assert headers <= set(INSTRUCTION_PARAPHRASES) and len(headers) >= 3
    for text, example in zip(texts, EXAMPLES, strict=True):
        assert text.endswith(f"\n\nMessage: {example.text}\n\nCategory:")
    custom = LabelTask(LABELS, template="Labels: {labels}\nTweet: {text}\nLabel:",
                       training_variation=PromptVariation(paraphrase=True))  # fmt: skip
    assert custom.training_variant(random.Random(0)).prompt("x") == custom.prompt("x")  # only the built-in


def test_recorded_in_task_json(tmp_path):
    settings = TaskSettings(labels=LABELS, shuffle_labels=True, distractors=3, distractor_pool="a, b, c, d",
                            paraphrase_instruction=True)  # fmt: skip
    task = LabelTask.from_settings(settings)
    task.save(tmp_path)
    loaded = LabelTask.load(tmp_path)
    assert loaded.training_variation == PromptVariation(True, 3, ["a", "b", "c", "d"], True)
    assert loaded.prompt("x") == LabelTask(LABELS).prompt("x")  # the prompt users meet is unchanged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distractors": -1}, "distractors must be >= 0"),
        ({"distractor_pool": ["a, b"]}, "may not contain a comma"),
    ],
)
def test_bad_variation_is_refused(kwargs, message):
    with pytest.raises(TaskError, match=message):
        PromptVariation(**kwargs)
    with pytest.raises(TaskError, match="unknown keys"):
        PromptVariation.from_dict({"shuffle": True})
    with pytest.raises(TaskError, match="distractors must be"):
        TaskSettings(labels=LABELS, distractors=-2)


def test_pool_entries_count_once_and_unused_options_are_warned_about(caplog):
    variation = PromptVariation(distractors=2, distractor_pool=["cars", "Cars", "food", " food ", "art"])
    assert variation.distractor_pool == ["cars", "food", "art"]
    with caplog.at_level("WARNING", logger="trainer_ext.tasks.variation"):
        LabelTask.from_settings(TaskSettings(labels=LABELS, prompt_style="raw", shuffle_labels=True))
        LabelTask.from_settings(TaskSettings(labels=LABELS, prompt_style="raw", paraphrase_instruction=True))
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "shuffle_labels/distractors (the prompt does not list the labels)" in messages
    assert "paraphrase_instruction (only the built-in instruction prompt" in messages
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainer_ext.tasks.variation"):
        LabelTask.from_settings(TaskSettings(labels=LABELS, shuffle_labels=True, paraphrase_instruction=True))
    assert not caplog.records  # the built-in instruction prompt lists the labels and is paraphrased
