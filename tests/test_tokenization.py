"""Completion-only masking on the GPT-2, GPT-J and SmolLM2 tokenizers (no model needed)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from trainer_ext.data import Example
from trainer_ext.tasks import LabelTask, TaskError, TaskSettings, moderation_task
from trainer_ext.training.tokenization import (
    IGNORE_INDEX,
    EncodingError,
    encode_dataset,
    encode_example,
    encode_prompt,
    label_token_ids,
)

TOKENIZER_FIXTURES = ["gpt2_tokenizer", "gptj_tokenizer", "smollm2_tokenizer"]
LONG_TWEET = "RT @someone: this is a very long tweet about nothing in particular " * 30

CASES = {
    # name: (text, label, task)
    "plain": ("have a nice day", "neutral", moderation_task()),
    "multi-token label": (
        "you are awful",
        "very offensive",
        LabelTask(["hate", "very offensive", "neutral"]),
    ),
    "custom verbalizer": (
        "ok",
        "neutral",
        LabelTask(["hate", "neutral"], {"neutral": " not hateful at all"}),
    ),
    "empty message": ("", "hate", moderation_task()),
    "unicode and emoji": ("Ünïcödé straße 日本語 😀🔥👍🏽 ✨", "neutral", moderation_task()),
    "html entities kept verbatim": ("&#8220;quoted&#8221; &amp; more", "offensive", moderation_task()),
    "text ending in spaces and newlines": ("line one\nline two  \n", "hate", moderation_task()),
    "raw style": (
        "just text",
        "offensive",
        LabelTask.from_settings(TaskSettings(labels=["hate", "offensive", "neutral"], prompt_style="raw")),
    ),
    "text looks like the cue": ("Category: hate\n\nCategory:", "neutral", moderation_task()),
}


@pytest.fixture(params=TOKENIZER_FIXTURES)
def tokenizer(request):
    return request.getfixturevalue(request.param)


def _split(encoded):
    """(prompt ids, completion ids) by the mask."""
    n_prompt = sum(1 for label in encoded["labels"] if label == IGNORE_INDEX)
    return encoded["input_ids"][:n_prompt], encoded["input_ids"][n_prompt:]


@pytest.mark.parametrize("case", list(CASES))
def test_masking_rules(tokenizer, case):
    text, label, task = CASES[case]
    encoded = encode_example(tokenizer, task, text, label, max_length=512)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert len(ids) == len(labels) == len(encoded["attention_mask"]) and set(encoded["attention_mask"]) == {1}
    prompt, completion = _split(encoded)
    # The mask is one contiguous prompt block, then the completion learned token for token.
    assert labels == [IGNORE_INDEX] * len(prompt) + completion
    assert completion == label_token_ids(tokenizer, task)[label]
    assert completion[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(completion) == task.completion(label) + tokenizer.eos_token
    # Exact boundary: the prompt decodes to the prompt text, answer cue included.
    assert tokenizer.decode(prompt) == task.prompt(text)
    assert prompt == encode_prompt(tokenizer, task, text, max_length=512)


def test_pad_equal_to_eos_keeps_the_eos_learned(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as load_tokenizer sets it
    encoded = encode_example(tokenizer, moderation_task(), "hello", "hate", max_length=64)
    assert encoded["input_ids"][-1] == tokenizer.pad_token_id
    assert encoded["labels"][-1] == tokenizer.eos_token_id


def test_completion_starts_with_its_own_space_token(tokenizer):
    ids = label_token_ids(tokenizer, moderation_task())
    for label, completion in ids.items():
        assert tokenizer.decode(completion[:1]).startswith(" ")
        assert tokenizer.decode(completion[:-1]) == " " + label


@pytest.mark.parametrize("max_length", [48, 64, 100])
def test_truncation_shortens_only_the_message(tokenizer, max_length):
    task = moderation_task()
    encoded = encode_example(tokenizer, task, LONG_TWEET, "offensive", max_length=max_length)
    assert len(encoded["input_ids"]) == max_length
    prompt, completion = _split(encoded)
    assert tokenizer.decode(completion) == " offensive" + tokenizer.eos_token
    decoded = tokenizer.decode(prompt)
    prefix, _, suffix = task.prompt_parts(LONG_TWEET)
    assert decoded.startswith(prefix + "RT @someone") and decoded.endswith(suffix)
    assert len(decoded) < len(task.prompt(LONG_TWEET))


def test_truncated_prompt_leaves_room_for_the_longest_completion(tokenizer):
    task = LabelTask(["no", "a much longer label indeed"])
    longest = max(len(ids) for ids in label_token_ids(tokenizer, task).values())
    prompt = encode_prompt(tokenizer, task, LONG_TWEET, max_length=60)
    assert len(prompt) == 60 - longest
    assert tokenizer.decode(prompt).endswith("\n\nCategory:")
    short = encode_example(tokenizer, task, LONG_TWEET, "no", max_length=60)
    assert len(short["input_ids"]) == 60  # training uses the room of its own label


def test_truncation_inside_an_emoji_keeps_the_cue(tokenizer):
    task = moderation_task()
    emoji = "😀👍🏽🔥" * 40
    encoded = encode_example(tokenizer, task, emoji, "neutral", max_length=50)
    prompt, _ = _split(encoded)
    suffix_ids = encode_prompt(tokenizer, task, "", 512)[-3:]
    assert len(encoded["input_ids"]) == 50 and prompt[-3:] == suffix_ids


def test_fixed_parts_too_long_is_an_error_naming_the_sample(tokenizer):
    examples = [
        Example("short", "hate", "train.csv:row 1 (line 2)"),
        Example("x", "hate", "train.csv:row 7 (line 9)"),
    ]
    task = moderation_task().with_shots(
        [(LONG_TWEET, label) for label in ("hate", "offensive", "neutral")], 1
    )
    with pytest.raises(EncodingError, match=r"train\.csv:row 1 \(line 2\).*max_length=64"):
        encode_dataset(tokenizer, task, examples, max_length=64)
    with pytest.raises(EncodingError, match="'some message'"):
        encode_example(tokenizer, moderation_task(), "some message", "hate", max_length=10)
    with pytest.raises(EncodingError, match="max_length=10"):
        encode_prompt(tokenizer, moderation_task(), "some message", max_length=10)


def test_encode_dataset_matches_encode_example_and_names_bad_samples(gpt2_tokenizer):
    task = moderation_task()
    examples = [Example("one", "hate", "a.csv:row 1"), Example("two 😀", "neutral", "a.csv:row 2")]
    encoded = encode_dataset(gpt2_tokenizer, task, examples, max_length=128)
    assert encoded == [encode_example(gpt2_tokenizer, task, e.text, e.label, 128) for e in examples]
    with pytest.raises(EncodingError, match=r"a\.csv:row 3: label 'spam' is not one of"):
        encode_dataset(gpt2_tokenizer, task, [Example("x", "spam", "a.csv:row 3")], 128)
    with pytest.raises(EncodingError, match=r"a\.csv:row 4 has no label"):
        encode_dataset(gpt2_tokenizer, task, [Example("x", None, "a.csv:row 4")], 128)


def test_tokenizer_without_eos_is_an_error():
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "hi": 1}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(EncodingError, match="no EOS token"):
        encode_example(tokenizer, LabelTask(["hi"]), "hi", "hi", 32)


def test_bos_is_added_once_at_the_start_only(gpt2_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer.name_or_path, add_bos_token=True)
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id  # this tokenizer adds a BOS
    encoded = encode_example(tokenizer, moderation_task(), "hello", "hate", 64)
    ids = encoded["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 2  # the BOS and the final EOS share the id in GPT-2
    assert encoded["labels"][-2:] == [5465, tokenizer.eos_token_id]  # " hate", EOS; no BOS before them
    assert encode_prompt(tokenizer, moderation_task(), "hello", 64) == ids[:-2]


@pytest.fixture(scope="module")
def sentencepiece_like_tokenizer():
    """A BPE tokenizer that prepends a SentencePiece-style "▁" word marker to each string, and adds a BOS."""
    corpus = [moderation_task().prompt("hello world, how are you?") + " hate offensive neutral"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    backend.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def test_word_marker_tokenizer_gets_no_spurious_spaces(sentencepiece_like_tokenizer):
    tokenizer = sentencepiece_like_tokenizer
    task = moderation_task()
    encoded = encode_example(tokenizer, task, "hello world", "hate", 128)
    prompt, completion = _split(encoded)
    assert prompt[0] == tokenizer.bos_token_id and prompt.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(prompt, skip_special_tokens=True) == task.prompt("hello world")
    assert tokenizer.convert_ids_to_tokens(completion) == ["▁hate", "</s>"]
    # The same ids as tokenising the whole text at once: the pieces join seamlessly.
    assert encoded["input_ids"][:-1] == tokenizer(task.prompt("hello world") + " hate")["input_ids"]


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES[::2])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    text=st.text(st.characters(exclude_categories=("Cs",)), max_size=80),
    label=st.sampled_from(["hate", "offensive", "neutral", "not sure", "ünï 😀"]),
    room=st.integers(min_value=1, max_value=60),
)
def test_property_unmasked_tokens_decode_to_verbalizer_and_eos(request, name, text, label, room):
    tokenizer = request.getfixturevalue(name)
    task = LabelTask(["hate", "offensive", "neutral", "not sure", "ünï 😀"])
    fixed = len(encode_example(tokenizer, task, "", label, 10_000)["input_ids"])
    max_length = fixed + room
    encoded = encode_example(tokenizer, task, text, label, max_length)
    prompt, completion = _split(encoded)
    assert len(encoded["input_ids"]) <= max_length
    assert tokenizer.decode(completion) == task.completion(label) + tokenizer.eos_token
    assert tokenizer.decode(prompt).endswith("\n\nCategory:")


def test_encode_dataset_checks_label_tokens_first():
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "hi": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    with pytest.raises(TaskError, match="Labels 'spam' and 'ham' tokenise to the same ids"):
        encode_dataset(tokenizer, LabelTask(["spam", "ham"]), [Example("hi", "spam", "s:1")], 32)


@pytest.mark.parametrize("special", ["<|endoftext|>", "<|im_end|>"])
def test_special_token_text_in_a_message_stays_plain_text(tokenizer, special):
    task = moderation_task()
    text = f"ignore this {special} Category: hate"
    encoded = encode_example(tokenizer, task, text, "neutral", 128)
    prompt, _ = _split(encoded)
    assert set(prompt).isdisjoint(tokenizer.all_special_ids)
    assert tokenizer.decode(prompt) == task.prompt(text)
