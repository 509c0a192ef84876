"""Encoded samples have the ids of their running text, for SentencePiece-style tokenizers and GPT-2/GPT-J.

The SentencePiece stand-ins are trained here on a few sentences (no downloads): one with the layout of a
Llama-2 / Mistral `legacy` `tokenizer.json` (byte fallback, a normalizer that prepends "▁" to every
string, no pre-tokenizer), as BPE and as Unigram, and one with a Metaspace pre-tokenizer that marks only
the first word (`prepend_scheme="first"`).
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from trainer_ext.tasks import LabelTask, TaskSettings
from trainer_ext.training.tokenization import (
    IGNORE_INDEX,
    EncodingError,
    cut_message,
    encode_example,
    encode_prompt,
    label_token_ids,
)
from trainer_ext.vocabulary import TRUNCATION_SIDES

LABELS = ["hate", "offensive", "neutral"]
INSTRUCTION = LabelTask(LABELS)
CUSTOM = LabelTask(LABELS, template="Tweet: {text}\nLabel:")
RAW = LabelTask.from_settings(TaskSettings(labels=LABELS, prompt_style="raw"))
SPECIALS = ["<unk>", "<s>", "</s>"]
CORPUS = [
    INSTRUCTION.prompt("hello world, how are you?") + " hate offensive neutral very",
    CUSTOM.prompt("I really hate rainy mondays") + " offensive",
    RAW.prompt("you are awful and I hate it") + " neutral",
    "have a nice day, the world is a nice place and you are nice too",
]
LONG = " ".join(["hello world, how are you? you are awful\nand I hate rainy mondays."] * 12)

TOKENIZERS = ["legacy_bpe", "legacy_unigram", "metaspace_bpe", "gpt2_tokenizer", "gptj_tokenizer"]
CASES = {
    # name: (text, label, task)
    "instruction prompt": ("hello world, how are you?", "hate", INSTRUCTION),
    "custom template": ("I really hate rainy mondays", "offensive", CUSTOM),
    "raw style": ("you are awful", "neutral", RAW),
    "message ends with a space": ("hello world ", "hate", INSTRUCTION),
    "message ends with a newline": ("hello world\n", "neutral", INSTRUCTION),
    "custom template, message ends with a newline": ("rainy mondays\n", "hate", CUSTOM),
    "raw style, message ends with a space": ("you are awful ", "offensive", RAW),
    "label of several words": ("you are awful", "very offensive", LabelTask(["hate", "very offensive"])),
    "empty message": ("", "offensive", INSTRUCTION),
    "k-shot examples": (
        "how are you?",
        "neutral",
        LabelTask(LABELS, shots=[("I hate it", "hate"), ("have a nice day", "neutral")]),
    ),
    "unicode": ("straße 😀 nice", "hate", INSTRUCTION),
}


def _train(model: str, prepend_scheme: str) -> Tokenizer:
    """A BPE vocabulary holds the special tokens; a Unigram one only `<unk>` (the others are added tokens)."""
    if model == "bpe":
        backend = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS)
    else:
        backend = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<unk>"], unk_token="<unk>")
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    backend.train_from_iterator(CORPUS, trainer)
    return backend


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """A BOS-adding tokenizer with `<s>` / `</s>`, as `load_tokenizer` sees a Llama-style checkpoint."""
    backend.add_special_tokens(SPECIALS)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _legacy(model: str) -> PreTrainedTokenizerFast:
    """The `tokenizer.json` layout of Llama-2 / Mistral with `legacy` behaviour.

    Trained with a whitespace-splitting pre-tokenizer (as SentencePiece trains), then rewritten as those
    files are: byte-fallback pieces, `Prepend("▁")` + `Replace(" ", "▁")` normalizer, no pre-tokenizer.
    """
    data = json.loads(_train(model, "always").to_str())
    byte_pieces = [f"<0x{byte:02X}>" for byte in range(256)]
    vocab = data["model"]["vocab"]
    if data["model"]["type"] == "BPE":
        vocab.update({piece: len(vocab) + i for i, piece in enumerate(byte_pieces)})
    else:
        vocab.extend([piece, -20.0] for piece in byte_pieces)
    data["model"]["byte_fallback"] = True
    data["pre_tokenizer"] = None
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    backend = Tokenizer.from_str(json.dumps(data))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return _wrap(backend)


@pytest.fixture(scope="module")
def legacy_bpe():
    return _legacy("bpe")


@pytest.fixture(scope="module")
def legacy_unigram():
    return _legacy("unigram")


@pytest.fixture(scope="module")
def metaspace_bpe():
    """Non-legacy SentencePiece style: a Metaspace pre-tokenizer marks the first word only."""
    backend = _train("bpe", "first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return _wrap(backend)


@pytest.fixture(params=TOKENIZERS)
def tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["legacy_bpe", "legacy_unigram"])
def legacy_tokenizer(request):
    return request.getfixturevalue(request.param)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _running(tokenizer, task: LabelTask, text: str, label: str) -> list[int]:
    """Ids of prompt + completion tokenised as one string, EOS appended."""
    return tokenizer(task.prompt(text) + task.completion(label))["input_ids"] + [tokenizer.eos_token_id]


def test_legacy_normalizer_marks_every_string(legacy_tokenizer):
    """The fault this module handles: pieces tokenised apart differ from the running text."""
    prompt, completion = INSTRUCTION.prompt("hello world"), INSTRUCTION.completion("hate")
    running = _ids(legacy_tokenizer, prompt + completion)
    assert _ids(legacy_tokenizer, prompt) + _ids(legacy_tokenizer, completion) != running
    # A special token before the piece does not help: the text after it is normalised on its own.
    anchored = _ids(legacy_tokenizer, legacy_tokenizer.eos_token + completion)[1:]
    assert anchored != running[len(_ids(legacy_tokenizer, prompt)) :]
    assert legacy_tokenizer.convert_ids_to_tokens(anchored)[0] == "▁"


@pytest.mark.parametrize("case", list(CASES))
def test_sample_has_the_ids_of_the_running_text(tokenizer, case):
    text, label, task = CASES[case]
    running = _running(tokenizer, task, text, label)
    encoded = encode_example(tokenizer, task, text, label, max_length=512)
    prompt = encode_prompt(tokenizer, task, text, max_length=512)
    completion = label_token_ids(tokenizer, task)[label]
    assert encoded["input_ids"] == running
    assert running == prompt + completion
    assert encoded["labels"] == [IGNORE_INDEX] * len(prompt) + completion
    assert encoded["attention_mask"] == [1] * len(running)
    assert completion[-1] == tokenizer.eos_token_id and len(completion) > 1


def _parts(tokenizer, task: LabelTask, text: str) -> tuple[list[int], list[int], list[int]]:
    """Running-text prompt ids split into before / inside / after the message (none may straddle)."""
    prefix, message, suffix = task.prompt_parts(text)
    start, end = len(prefix.rstrip(" ")), len(prefix) + len(message)
    encoded = tokenizer(task.prompt(text), add_special_tokens=False, return_offsets_mapping=True)
    spans = list(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True))
    head = [token for token, (_, last) in spans if last <= start]
    inside = [token for token, (first, last) in spans if first >= start and last <= end]
    tail = [token for token, (first, _) in spans if first >= end]
    assert head + inside + tail == encoded["input_ids"]
    return head, inside, tail


@pytest.mark.parametrize("side", TRUNCATION_SIDES)
@pytest.mark.parametrize("task", [INSTRUCTION, CUSTOM, RAW], ids=["instruction", "custom", "raw"])
def test_truncation_cuts_only_message_tokens(tokenizer, task, side):
    head, inside, tail = _parts(tokenizer, task, LONG)
    bos = tokenizer("a")["input_ids"][: -len(_ids(tokenizer, "a"))]
    completion = label_token_ids(tokenizer, task)["hate"]
    fixed = len(bos) + len(head) + len(tail) + len(completion)
    max_length = fixed + len(inside) // 3
    encoded = encode_example(tokenizer, task, LONG, "hate", max_length, truncation_side=side)
    expected = bos + head + cut_message(inside, len(inside) // 3, side) + tail + completion
    assert encoded["input_ids"] == expected
    assert encoded["labels"] == [IGNORE_INDEX] * (len(expected) - len(completion)) + completion


@pytest.mark.parametrize("side", TRUNCATION_SIDES)
def test_truncation_of_a_message_ending_with_newlines_keeps_the_cue(tokenizer, side):
    text = LONG.replace(". ", ".\n")
    max_length = 60
    encoded = encode_example(tokenizer, CUSTOM, text, "neutral", max_length, truncation_side=side)
    completion = label_token_ids(tokenizer, CUSTOM)["neutral"]
    prompt = encoded["input_ids"][: -len(completion)]
    assert len(encoded["input_ids"]) == max_length and encoded["input_ids"][-len(completion) :] == completion
    decoded = tokenizer.decode(prompt, skip_special_tokens=True)
    assert decoded.startswith("Tweet:") and decoded.endswith("\nLabel:")


def test_fixed_parts_too_long_and_unknown_labels_are_errors(tokenizer):
    with pytest.raises(EncodingError, match="max_length=12"):
        encode_example(tokenizer, INSTRUCTION, "hello world", "hate", max_length=12, source="a.csv:row 3")
    with pytest.raises(EncodingError, match="max_length=12"):
        encode_prompt(tokenizer, INSTRUCTION, "hello world", max_length=12)
    with pytest.raises(EncodingError, match=r"a\.csv:row 4: label 'spam' is not one of"):
        encode_example(tokenizer, INSTRUCTION, "hello world", "spam", 512, source="a.csv:row 4")


def test_special_token_text_in_the_message_stays_plain_text(tokenizer):
    text = f"hello {tokenizer.eos_token} world"
    prompt = encode_prompt(tokenizer, INSTRUCTION, text, 512)
    assert prompt == tokenizer(INSTRUCTION.prompt(text), split_special_tokens=True)["input_ids"]
    assert tokenizer.eos_token_id not in prompt


def test_special_token_in_the_template_is_kept(tokenizer):
    eos = tokenizer.eos_token
    task = LabelTask(LABELS, template="Tweet: {text}" + eos + "Label:")
    encoded = encode_example(tokenizer, task, "hello world", "hate", 512)
    assert encoded["input_ids"] == _running(tokenizer, task, "hello world", "hate")
    assert encoded["input_ids"].count(tokenizer.eos_token_id) == 2  # the template's and the final one
    # With special-token text in the message too, the message's stays text and the template's special.
    encoded = encode_example(tokenizer, task, f"hello {eos} world", "hate", 512)
    completion = label_token_ids(tokenizer, task)["hate"]
    assert encoded["input_ids"].count(tokenizer.eos_token_id) == 2
    assert encoded["labels"] == [IGNORE_INDEX] * (len(encoded["labels"]) - len(completion)) + completion


def test_completion_merging_with_the_cue_is_tokenised_apart(gpt2_tokenizer):
    """`"Category:" + ":)"` is one running-text token `"::"`: the boundary is kept, the completion apart."""
    task = LabelTask(["hate", "neutral"], {"hate": ":)"})
    completion = label_token_ids(gpt2_tokenizer, task)["hate"]
    assert completion == _ids(gpt2_tokenizer, ":)") + [gpt2_tokenizer.eos_token_id]
    encoded = encode_example(gpt2_tokenizer, task, "hi", "hate", 64)
    prompt = encode_prompt(gpt2_tokenizer, task, "hi", 64)
    assert encoded["input_ids"] == prompt + completion
    assert encoded["labels"] == [IGNORE_INDEX] * len(prompt) + completion


def test_message_special_text_merging_with_the_template_keeps_both_apart(gpt2_tokenizer):
    """A message ending in `"<"` before the template's `"<|endoftext|>"`: read as pieces, still plain text."""
    eos = gpt2_tokenizer.eos_token
    task = LabelTask(LABELS, template="Tweet: {text}" + eos + "Label:")
    text = f"hello {eos} <"
    prompt = encode_prompt(gpt2_tokenizer, task, text, 128)
    assert prompt.count(gpt2_tokenizer.eos_token_id) == 1
    assert gpt2_tokenizer.decode(prompt) == task.prompt(text)
