"""Tokenisation with exact completion-only masking.

An encoded sample has the ids of its running text (prompt + completion tokenised as one string), with
labels only on the completion. Layout of one encoded sample::

    [BOS]  prefix  message[:budget]  suffix(answer cue)  completion  EOS
    -100   -100    -100              -100                ids         eos_id     <- labels

- a BOS is added once, at the very start, only for tokenizers that add one (Llama-style);
- the completion always ends with the tokenizer's EOS, which is learned even when the pad token is
  the EOS token (labels are built from positions, never from comparing ids with `pad_token_id`);
- truncation to `max_length` shortens only the message; when the fixed parts leave no room for it,
  [`EncodingError`] names the sample.

Fast tokenizers encode the prompt as one string, split by character offsets (so a word marker such as
SentencePiece's "▁", which `legacy` Llama-2 / Mistral normalizers prepend to every string, appears only
where the running text has it), and the completion after the answer cue, keeping the tokens that start
in it. Pieces are tokenised apart instead where a token straddles that boundary (or, when both template
and message hold special-token text, a message bound), and with slow tokenizers (no offsets).

Spaces that end the prefix (`"Message: "`) belong to the message (`" hello"`, not `" "` + `"hello"`). A
message that contains the text of a special token (`"<|endoftext|>"`) gets it as plain text; templates
and verbalizers may use special tokens on purpose (chat markers) and keep them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from trainer_ext.tasks import LabelTask, TaskError
from trainer_ext.vocabulary import TRUNCATION_SIDES

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class EncodingError(ValueError):
    """A sample that cannot be encoded within `max_length` (or with this tokenizer); names the sample."""


def _raw_ids(tokenizer: Any, text: str, split_special_tokens: bool = False) -> list[int]:
    if not text:
        return []
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=split_special_tokens)
    return list(encoded["input_ids"])


def _offset_ids(tokenizer: Any, text: str, split: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` (no special tokens added) and the `(start, end)` character span of each."""
    if not text:
        return [], []
    encoded = tokenizer(
        text, add_special_tokens=False, split_special_tokens=split, return_offsets_mapping=True
    )
    return list(encoded["input_ids"]), [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


class _PieceEncoder:
    """Encodes prompt pieces and completions for one tokenizer (special tokens looked up once)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise EncodingError(
                f"The tokenizer {type(tokenizer).__name__} has no EOS token, so completions cannot end; "
                "set `tokenizer.eos_token` (loading.load_tokenizer does this for known models)."
            )
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_ids = self._special_prefix()
        # Tokenizers that mark a word start on every encoded string (SentencePiece "▁") would put a
        # space between pieces. For them, pieces after the first are encoded after the EOS token,
        # which is then removed: a special token ends the previous split, so no marker is added.
        self.anchor = str(tokenizer.eos_token)
        self.needs_anchor = self._anchored("a") != _raw_ids(tokenizer, "a")

    def _anchored(self, text: str) -> list[int]:
        ids = _raw_ids(self.tokenizer, self.anchor + text)
        return ids[1:] if ids[:1] == [self.eos_id] else _raw_ids(self.tokenizer, text)

    def _special_prefix(self) -> list[int]:
        plain = _raw_ids(self.tokenizer, "a")
        full = list(self.tokenizer("a", add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    def piece(self, text: str, first: bool) -> list[int]:
        """Ids of template text; `first` when it starts the sequence (encoded as is)."""
        if first or not self.needs_anchor:
            return _raw_ids(self.tokenizer, text)
        return self._anchored(text) if text else []

    def message(self, text: str, first: bool) -> list[int]:
        """Ids of user text: special-token text stays plain text where pieces encode independently."""
        if first or not self.needs_anchor:
            return _raw_ids(self.tokenizer, text, split_special_tokens=True)
        return self._anchored(text) if text else []

    def completion(self, task: LabelTask, label: str) -> list[int]:
        return self.piece(task.completion(label), first=False) + [self.eos_id]

    def parts(self, task: LabelTask, text: str) -> tuple[list[int], list[int], list[int]]:
        """Ids of the prompt before the message, of the message, and after it (pieces tokenised apart)."""
        prefix, message, suffix = task.prompt_parts(text)
        core = prefix.rstrip(" ")
        prefix_ids = self.piece(core, first=True)
        message_ids = self.message(prefix[len(core) :] + message, first=not prefix_ids)
        return prefix_ids, message_ids, self.piece(suffix, first=False)

    def prompt(
        self,
        task: LabelTask,
        text: str,
        reserve: int,
        max_length: int,
        source: str | None,
        truncation_side: str = "right",
    ) -> tuple[list[int], bool]:
        """Prompt ids leaving `reserve` tokens for the completion; also whether the message was cut."""
        head, message_ids, tail = self.parts(task, text)
        fixed = len(self.bos_ids) + len(head) + len(tail) + reserve
        budget = max_length - fixed
        if budget < (1 if message_ids else 0):
            raise EncodingError(
                f"Sample {_describe(source, text)}: the prompt without the message plus the completion take "
                f"{fixed} tokens, leaving no room for the message within max_length={max_length}; raise "
                "max_length or shorten the template, verbalizers or k-shot examples."
            )
        truncated = len(message_ids) > budget
        return self.bos_ids + head + cut_message(message_ids, budget, truncation_side) + tail, truncated


class _OffsetEncoder(_PieceEncoder):
    """Encodes with a fast tokenizer: whole strings, split by the character offsets of their tokens."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        decoder = getattr(tokenizer, "added_tokens_decoder", {})
        self.specials = tuple(token.content for token in decoder.values() if token.special)

    def completion(self, task: LabelTask, label: str) -> list[int]:
        """Tokens that start in the completion when it follows the answer cue, + EOS."""
        context = task.prompt_parts("")[2] or "\n"
        ids, offsets = _offset_ids(self.tokenizer, context + task.completion(label))
        at = len(context)
        if any(start < at < end for start, end in offsets):
            return super().completion(task, label)
        return [token for token, (start, _) in zip(ids, offsets, strict=True) if start >= at] + [self.eos_id]

    def parts(self, task: LabelTask, text: str) -> tuple[list[int], list[int], list[int]]:
        """The ids of the whole prompt, split around the tokens that lie inside the message.

        A token that straddles a message boundary stays with the template part it overlaps, so the three
        parts joined are the ids of the prompt, and truncation cuts only message tokens. Special-token
        text is plain text in the message; when the template holds special tokens too, the message ids
        come from a second reading of the prompt with them as plain text.
        """
        prefix, message, suffix = task.prompt_parts(text)
        start, end = len(prefix.rstrip(" ")), len(prefix) + len(message)
        full = prefix + message + suffix
        marked = self._has_special(prefix[:start]) or self._has_special(suffix)
        head, inside, tail, clean = self._split(full, start, end, plain=not marked)
        if not (marked and self._has_special(full[start:end])):
            return head, inside, tail
        _, inside, _, plain_clean = self._split(full, start, end, plain=True)
        return (head, inside, tail) if clean and plain_clean else super().parts(task, text)

    def _has_special(self, text: str) -> bool:
        return any(token in text for token in self.specials)

    def _split(
        self, text: str, start: int, end: int, plain: bool
    ) -> tuple[list[int], list[int], list[int], bool]:
        """Ids of `text` before, inside and after `[start, end)`; also whether no token straddles a bound."""
        ids, offsets = _offset_ids(self.tokenizer, text, split=plain)
        n_head = sum(1 for first, _ in offsets if first < start)
        n_tail = min(sum(1 for _, last in offsets if last > end), len(ids) - n_head)
        clean = not any(first < bound < last for first, last in offsets for bound in (start, end))
        return ids[:n_head], ids[n_head : len(ids) - n_tail], ids[len(ids) - n_tail :], clean


def _encoder(tokenizer: Any) -> _PieceEncoder:
    return _OffsetEncoder(tokenizer) if getattr(tokenizer, "is_fast", False) else _PieceEncoder(tokenizer)


def cut_message(ids: list[int], budget: int, side: str = "right") -> list[int]:
    """Shorten message ids to `budget`: keep the start (`"right"` cuts the end), the end (`"left"`), or
    both ends (`"both"`, the middle is cut; the start gets the extra token of an odd budget).

    >>> cut_message([1, 2, 3, 4, 5], 3, "right"), cut_message([1, 2, 3, 4, 5], 3, "left")
    ([1, 2, 3], [3, 4, 5])
    >>> cut_message([1, 2, 3, 4, 5], 3, "both")
    [1, 2, 5]
    """
    if len(ids) <= budget:
        return ids
    if side == "right":
        return ids[:budget]
    if side == "left":
        return ids[len(ids) - budget :]
    if side == "both":
        head = (budget + 1) // 2
        return ids[:head] + ids[len(ids) - (budget - head) :]
    raise EncodingError(
        f"truncation_side: unknown value {side!r}; choose one of {', '.join(TRUNCATION_SIDES)}."
    )


def _describe(source: str | None, text: str) -> str:
    return source if source else repr(text[:60] + ("..." if len(text) > 60 else ""))


def label_token_ids(tokenizer: Any, task: LabelTask) -> dict[str, list[int]]:
    """The completion ids of each label, EOS included, as they follow the prompt.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): The task whose verbalizers are encoded.

    Returns:
        `dict[str, list[int]]`: label -> completion token ids ending with `tokenizer.eos_token_id`.
    """
    encoder = _encoder(tokenizer)
    return {label: encoder.completion(task, label) for label in task.labels}


def _encode_with(
    encoder: _PieceEncoder,
    task: LabelTask,
    text: str,
    label: str,
    max_length: int,
    source: str | None,
    truncation_side: str = "right",
) -> tuple[dict[str, list[int]], bool]:
    if label not in task.verbalizers:
        raise EncodingError(f"Sample {_describe(source, text)}: label {label!r} is not one of {task.labels}.")
    completion = encoder.completion(task, label)
    prompt, truncated = encoder.prompt(task, text, len(completion), max_length, source, truncation_side)
    input_ids = prompt + completion
    encoded = {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt) + completion,
    }
    return encoded, truncated


def encode_example(
    tokenizer: Any,
    task: LabelTask,
    text: str,
    label: str,
    max_length: int,
    source: str | None = None,
    truncation_side: str = "right",
) -> dict[str, list[int]]:
    """Encode one training sample: prompt masked with -100, completion + EOS learned.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): Prompt template and verbalizers.
        text (`str`): The message.
        label (`str`): Its label (one of `task.labels`).
        max_length (`int`): Maximum length of the whole sequence; only the message is shortened.
        source (`str`, *optional*): Where the sample comes from (`file:row`), for error messages.
        truncation_side (`str`, *optional*, defaults to `"right"`): What a too long message keeps (see
            `cut_message`).

    Returns:
        `dict`: `input_ids`, `attention_mask`, `labels`, plain lists of ints of equal length.

    Raises:
        `EncodingError`: when the label is unknown or the fixed parts leave no room for the message.
    """
    encoded, _ = _encode_with(_encoder(tokenizer), task, text, label, max_length, source, truncation_side)
    return encoded


def encode_prompt(
    tokenizer: Any,
    task: LabelTask,
    text: str,
    max_length: int,
    source: str | None = None,
    truncation_side: str = "right",
) -> list[int]:
    """Encode the prompt of `text` for inference, leaving room for the longest completion.

    Truncation follows [`encode_example`]: only the message is shortened, and the prompt ids are
    the same as those of a training sample of the same (untruncated) text.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): Prompt template and verbalizers.
        text (`str`): The message.
        max_length (`int`): Maximum length of prompt + longest completion.
        source (`str`, *optional*): Where the sample comes from, for error messages.
        truncation_side (`str`, *optional*, defaults to `"right"`): What a too long message keeps.

    Returns:
        `list[int]`: the prompt ids, ending with the answer cue.
    """
    return encode_prompts(tokenizer, task, [text], max_length, truncation_side)[0][0]


class PromptEncoder:
    """Encodes prompts for inference with what every call shares worked out once: the tokenizer's special
    tokens and the room the longest label completion needs. A predictor called once per message keeps one.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): Prompt template and verbalizers.
        max_length (`int`): Maximum length of prompt + completion; only the message is shortened.
        truncation_side (`str`, *optional*, defaults to `"right"`): What a too long message keeps.
    """

    def __init__(
        self, tokenizer: Any, task: LabelTask, max_length: int, truncation_side: str = "right"
    ) -> None:
        self.tokenizer, self.task = tokenizer, task
        self.max_length, self.truncation_side = max_length, truncation_side
        self._encoder = _encoder(tokenizer)
        self._reserve = max(len(self._encoder.completion(task, label)) for label in task.labels)

    def __call__(self, texts: Sequence[str]) -> list[tuple[list[int], bool]]:
        """The prompt ids of each text (see `encode_prompt`) and whether its message was shortened."""
        return [
            self._encoder.prompt(self.task, text, self._reserve, self.max_length, None, self.truncation_side)
            for text in texts
        ]


def encode_prompts(
    tokenizer: Any, task: LabelTask, texts: list[str], max_length: int, truncation_side: str = "right"
) -> list[tuple[list[int], bool]]:
    """The prompt ids of each text (see `encode_prompt`) and whether its message was shortened."""
    return PromptEncoder(tokenizer, task, max_length, truncation_side)(texts)


def encode_dataset(
    tokenizer: Any,
    task: LabelTask,
    examples: Iterable[Any],
    max_length: int,
    truncation_side: str = "right",
    variation_seed: int | None = None,
) -> list[dict[str, list[int]]]:
    """Encode labelled examples for training or evaluation.

    Each encoded dict carries `input_ids`, so the Trainer's `group_by_length` can group a list of
    them by length without a separate `length` column.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): Prompt template and verbalizers.
        examples (`Iterable[Example]`): Objects with `text`, `label` and `source` (see `data.Example`).
        max_length (`int`): Maximum sequence length; only messages are shortened.
        truncation_side (`str`, *optional*, defaults to `"right"`): What a too long message keeps.
        variation_seed (`int`, *optional*): For training sets: when given, each sample's prompt is varied as
            `task.training_variation` says (`LabelTask.training_variant`), drawn from a generator seeded
            with this seed and the sample's index; without it every prompt is the task's own.

    Returns:
        `list[dict]`: one encoded dict per example, in order.

    Raises:
        `EncodingError`: naming the first sample (its `source`) that cannot be encoded.
        `TaskError`: when two labels tokenise to the same ids or a verbalizer to none
            ([`check_label_tokens`]).
    """
    check_label_tokens(task, tokenizer)
    encoder = _encoder(tokenizer)
    encoded: list[dict[str, list[int]]] = []
    truncated: list[str] = []
    vary = variation_seed is not None and task.training_variation.active
    for index, example in enumerate(examples):
        source = getattr(example, "source", None)
        if example.label is None:
            raise EncodingError(f"Sample {_describe(source, example.text)} has no label; training needs one.")
        sample_task = task.training_variant(random.Random(f"{variation_seed}:{index}")) if vary else task
        sample, cut = _encode_with(
            encoder, sample_task, example.text, example.label, max_length, source, truncation_side
        )
        encoded.append(sample)
        if cut:
            truncated.append(source or _describe(None, example.text))
    if truncated:
        logger.warning(
            "Shortened the message of %d of %d samples to fit max_length=%d (truncation_side %s): %s%s. "
            "Raise "
            "max_length to keep them whole.",
            len(truncated),
            len(encoded),
            max_length,
            truncation_side,
            ", ".join(truncated[:5]),
            " ..." if len(truncated) > 5 else "",
        )
    return encoded


def check_label_tokens(task: LabelTask, tokenizer: Any) -> None:
    """Check that every label's completion tokenises to distinct, non-empty token ids.

    Args:
        task (`LabelTask`): The task whose verbalizers are checked.
        tokenizer (`PreTrainedTokenizerBase`): The tokenizer of the model.

    Raises:
        `TaskError`: naming the label whose verbalizer tokenises to nothing, or the labels that
        tokenise to the same ids.
    """
    seen: dict[tuple[int, ...], str] = {}
    for label, completion_ids in label_token_ids(tokenizer, task).items():
        ids = tuple(completion_ids[:-1])  # without the EOS
        if not ids:
            raise TaskError(
                f"The verbalizer {task.verbalizers[label]!r} of label {label!r} is empty after tokenisation; "
                "choose a verbalizer with visible text."
            )
        if ids in seen:
            raise TaskError(
                f"Labels {seen[ids]!r} and {label!r} tokenise to the same ids {list(ids)}; the model could "
                "not tell them apart: change one verbalizer."
            )
        seen[ids] = label
