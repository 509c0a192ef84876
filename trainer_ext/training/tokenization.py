"""Tokenisation with exact completion-only masking.

The prompt (prefix, message, suffix) and the completion are tokenised apart and concatenated, so
the boundary between what the model reads and what it learns to write is exact whatever the
tokenizer would merge across it. Layout of one encoded sample::

    [BOS]  prefix  message[:budget]  suffix(answer cue)  completion  EOS
    -100   -100    -100              -100                ids         eos_id     <- labels

- a BOS is added once, at the very start, only for tokenizers that add one (Llama-style);
- the completion always ends with the tokenizer's EOS, which is learned even when the pad token is
  the EOS token (labels are built from positions, never from comparing ids with `pad_token_id`);
- truncation to `max_length` shortens only the message; when the fixed parts leave no room for it,
  [`EncodingError`] names the sample.

Spaces that end the prefix (`"Message: "`) are tokenised with the message, as a tokenizer would
see them in running text (`" hello"` rather than `" "` + `"hello"`). A message that contains the
text of a special token (`"<|endoftext|>"`) gets it as plain text, not as the special token, for
tokenizers that encode pieces independently (byte-level BPE: GPT-2, GPT-J, SmolLM2); templates and
verbalizers may use special tokens on purpose (chat markers) and keep them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
        prefix, message, suffix = task.prompt_parts(text)
        core = prefix.rstrip(" ")
        message = prefix[len(core) :] + message
        prefix_ids = self.piece(core, first=True)
        message_ids = self.message(message, first=not prefix_ids)
        suffix_ids = self.piece(suffix, first=False)
        fixed = len(self.bos_ids) + len(prefix_ids) + len(suffix_ids) + reserve
        budget = max_length - fixed
        if budget < (1 if message_ids else 0):
            raise EncodingError(
                f"Sample {_describe(source, text)}: the prompt without the message plus the completion take "
                f"{fixed} tokens, leaving no room for the message within max_length={max_length}; raise "
                "max_length or shorten the template, verbalizers or k-shot examples."
            )
        truncated = len(message_ids) > budget
        ids = self.bos_ids + prefix_ids + cut_message(message_ids, budget, truncation_side) + suffix_ids
        return ids, truncated


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
    encoder = _PieceEncoder(tokenizer)
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
    encoded, _ = _encode_with(
        _PieceEncoder(tokenizer), task, text, label, max_length, source, truncation_side
    )
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


def encode_prompts(
    tokenizer: Any, task: LabelTask, texts: list[str], max_length: int, truncation_side: str = "right"
) -> list[tuple[list[int], bool]]:
    """The prompt ids of each text (see `encode_prompt`) and whether its message was shortened."""
    encoder = _PieceEncoder(tokenizer)
    reserve = max(len(encoder.completion(task, label)) for label in task.labels)
    return [encoder.prompt(task, text, reserve, max_length, None, truncation_side) for text in texts]


def encode_dataset(
    tokenizer: Any, task: LabelTask, examples: Iterable[Any], max_length: int, truncation_side: str = "right"
) -> list[dict[str, list[int]]]:
    """Encode labelled examples for training or evaluation.

    Each encoded dict carries `input_ids`, so the Trainer's `group_by_length` can group a list of
    them by length without a separate `length` column.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): Prompt template and verbalizers.
        examples (`Iterable[Example]`): Objects with `text`, `label` and `source` (see `data.Example`).
        max_length (`int`): Maximum sequence length; only messages are shortened.

    Returns:
        `list[dict]`: one encoded dict per example, in order.

    Raises:
        `EncodingError`: naming the first sample (its `source`) that cannot be encoded.
        `TaskError`: when two labels tokenise to the same ids or a verbalizer to none
            ([`check_label_tokens`]).
    """
    check_label_tokens(task, tokenizer)
    encoder = _PieceEncoder(tokenizer)
    encoded: list[dict[str, list[int]]] = []
    truncated: list[str] = []
    for example in examples:
        source = getattr(example, "source", None)
        if example.label is None:
            raise EncodingError(f"Sample {_describe(source, example.text)} has no label; training needs one.")
        sample, cut = _encode_with(
            encoder, task, example.text, example.label, max_length, source, truncation_side
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
