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

How each piece of a prompt is tokenised (fast tokenizers by character offsets, special-token text in
messages) is in `trainer_ext.training.pieces`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from trainer_ext.tasks import LabelTask, TaskError
from trainer_ext.training.pieces import (
    EncodingError,
    PieceEncoder,
    cut_message,
    describe_sample,
    piece_encoder,
)

__all__ = [
    "IGNORE_INDEX",
    "EncodingError",
    "PromptEncoder",
    "check_label_tokens",
    "cut_message",
    "encode_dataset",
    "encode_example",
    "encode_prompt",
    "encode_prompts",
    "label_token_ids",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def label_token_ids(tokenizer: Any, task: LabelTask) -> dict[str, list[int]]:
    """The completion ids of each label, EOS included, as they follow the prompt.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): The model's tokenizer.
        task (`LabelTask`): The task whose verbalizers are encoded.

    Returns:
        `dict[str, list[int]]`: label -> completion token ids ending with `tokenizer.eos_token_id`.
    """
    encoder = piece_encoder(tokenizer)
    return {label: encoder.completion(task, label) for label in task.labels}


def _encode_with(
    encoder: PieceEncoder,
    task: LabelTask,
    text: str,
    label: str,
    max_length: int,
    source: str | None,
    truncation_side: str = "right",
) -> tuple[dict[str, list[int]], bool]:
    if label not in task.verbalizers:
        where = describe_sample(source, text)
        raise EncodingError(f"Sample {where}: label {label!r} is not one of {task.labels}.")
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
    encoder = piece_encoder(tokenizer)
    encoded, _ = _encode_with(encoder, task, text, label, max_length, source, truncation_side)
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
        self._encoder = piece_encoder(tokenizer)
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
    encoder = piece_encoder(tokenizer)
    encoded: list[dict[str, list[int]]] = []
    truncated: list[str] = []
    vary = variation_seed is not None and task.training_variation.active
    for index, example in enumerate(examples):
        source = getattr(example, "source", None)
        if example.label is None:
            where = describe_sample(source, example.text)
            raise EncodingError(f"Sample {where} has no label; training needs one.")
        sample_task = task.training_variant(random.Random(f"{variation_seed}:{index}")) if vary else task
        sample, cut = _encode_with(
            encoder, sample_task, example.text, example.label, max_length, source, truncation_side
        )
        encoded.append(sample)
        if cut:
            truncated.append(source or describe_sample(None, example.text))
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
