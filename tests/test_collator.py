"""LabelCollator: dynamic padding, -100 on padding, pad == EOS, length grouping, its doctest."""

from __future__ import annotations

import doctest

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

import trainer_ext.training.collator
from trainer_ext.data import Example
from trainer_ext.tasks import moderation_task
from trainer_ext.training.collator import LabelCollator
from trainer_ext.training.tokenization import IGNORE_INDEX, encode_dataset, encode_prompt

TEXTS = ["hi", "a somewhat longer message with more words in it", "medium length text 😀"]


@pytest.fixture(scope="module")
def encoded(gpt2_tokenizer):
    examples = [
        Example(text, label, f"t:{i}")
        for i, (text, label) in enumerate(zip(TEXTS, ["hate", "offensive", "neutral"], strict=True))
    ]
    return encode_dataset(gpt2_tokenizer, moderation_task(), examples, max_length=128)


def test_docstring_example_runs():
    result = doctest.testmod(trainer_ext.training.collator, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_right_padding_to_the_longest_sample(gpt2_tokenizer, encoded):
    batch = LabelCollator(gpt2_tokenizer)(encoded)
    lengths = [len(sample["input_ids"]) for sample in encoded]
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["input_ids"].dtype == torch.long
    for row, sample in enumerate(encoded):
        n = len(sample["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == sample["input_ids"]
        assert batch["labels"][row, :n].tolist() == sample["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert set(batch["labels"][row, n:].tolist()) <= {IGNORE_INDEX}
        assert set(batch["input_ids"][row, n:].tolist()) <= {gpt2_tokenizer.pad_token_id}
        # pad == EOS: the sample's own EOS stays learned right before the padding.
        assert batch["labels"][row, n - 1].item() == gpt2_tokenizer.eos_token_id


def test_pad_to_multiple_of(gpt2_tokenizer, encoded):
    batch = LabelCollator(gpt2_tokenizer, pad_to_multiple_of=16)(encoded)
    longest = max(len(sample["input_ids"]) for sample in encoded)
    assert batch["input_ids"].shape[1] == -(-longest // 16) * 16
    assert (batch["labels"][:, longest:] == IGNORE_INDEX).all()


def test_left_padding_for_generation_prompts(gpt2_tokenizer):
    prompts = [{"input_ids": encode_prompt(gpt2_tokenizer, moderation_task(), text, 128)} for text in TEXTS]
    batch = LabelCollator(gpt2_tokenizer, padding_side="left")(prompts)
    assert "labels" not in batch
    longest = batch["input_ids"].shape[1]
    for row, prompt in enumerate(prompts):
        n = len(prompt["input_ids"])
        assert batch["input_ids"][row, longest - n :].tolist() == prompt["input_ids"]
        assert batch["attention_mask"][row].tolist() == [0] * (longest - n) + [1] * n


@pytest.mark.parametrize(
    ("kwargs", "features", "match"),
    [
        ({"padding_side": "middle"}, [{"input_ids": [1]}], "padding_side"),
        ({"pad_to_multiple_of": 0}, [{"input_ids": [1]}], "pad_to_multiple_of"),
        ({}, [], "empty batch"),
        ({}, [{"input_ids": [1], "labels": [1]}, {"input_ids": [1]}], "Sample 1"),
        ({}, [{"input_ids": [1, 2], "labels": [1]}], "differ in length"),
        ({}, [{"attention_mask": [1]}], "no 'input_ids'"),
    ],
)
def test_collator_errors(gpt2_tokenizer, kwargs, features, match):
    with pytest.raises(ValueError, match=match):
        LabelCollator(gpt2_tokenizer, **kwargs)(features)


def test_length_grouping_works_on_encoded_samples(gpt2_tokenizer, encoded):
    samples = encoded * 4
    sampler = LengthGroupedSampler(batch_size=4, dataset=samples, generator=torch.Generator().manual_seed(0))
    order = list(sampler)
    assert sorted(order) == list(range(len(samples)))
    lengths = [len(sample["input_ids"]) for sample in samples]
    assert lengths[order[0]] == max(lengths)  # the longest batch comes first (memory peaks early)


def test_loss_counts_only_completion_tokens(tiny_model, encoded):
    model, tokenizer = tiny_model("gpt2")
    batch = LabelCollator(tokenizer)(encoded)
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]  # (B, T-1, V), (B, T-1)
    learned = shift_labels != IGNORE_INDEX
    assert learned.sum().item() == 2 * len(encoded)  # one label token + EOS per sample
    expected = torch.nn.functional.cross_entropy(shift_logits[learned], shift_labels[learned])
    torch.testing.assert_close(loss, expected)
