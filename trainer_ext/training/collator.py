"""Batch collation: dynamic padding of encoded samples, labels -100 on padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer_ext.training.tokenization import IGNORE_INDEX


class LabelCollator:
    """Pad encoded samples to the longest one in the batch.

    Samples come from [`~tokenization.encode_example`] / [`~tokenization.encode_dataset`] (training:
    `input_ids`, `attention_mask`, `labels`) or are prompts for inference (`input_ids` and optionally
    `attention_mask`). Padding positions get the pad id in `input_ids`, 0 in `attention_mask` and -100
    in `labels`, so a pad token equal to EOS never hides the learned EOS. A `sample_weight` (class weight
    of the loss) is kept as a float tensor `(B,)`; other keys (e.g. `length`) are ignored.

    Batches of similar length waste less padding: with `TrainingArguments(group_by_length=True)` the
    Trainer groups a list of encoded dicts by `len(sample["input_ids"])`, which every encoded sample
    carries.

    Args:
        tokenizer (`PreTrainedTokenizerBase`):
            Supplies `pad_token_id` (its `eos_token_id` when it has no pad token).
        pad_to_multiple_of (`int`, *optional*):
            Round the padded length up to a multiple of this (e.g. 8 for tensor cores).
        padding_side (`str`, *optional*, defaults to `"right"`):
            `"right"` for training; `"left"` for batched generation.

    Example:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> vocab = {"<eos>": 0, "hi": 1, "there": 2, "ok": 3}
    >>> tokenizer = PreTrainedTokenizerFast(
    ...     tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<eos>")), eos_token="<eos>"
    ... )
    >>> collator = LabelCollator(tokenizer)  # no pad token: pads with EOS (id 0)
    >>> batch = collator([
    ...     {"input_ids": [1, 2, 3, 0], "attention_mask": [1, 1, 1, 1], "labels": [-100, -100, 3, 0]},
    ...     {"input_ids": [1, 3, 0], "attention_mask": [1, 1, 1], "labels": [-100, 3, 0]},
    ... ])
    >>> batch["input_ids"]
    tensor([[1, 2, 3, 0],
            [1, 3, 0, 0]])
    >>> batch["attention_mask"]
    tensor([[1, 1, 1, 1],
            [1, 1, 1, 0]])
    >>> batch["labels"]  # the EOS (0) is learned, the padding (also 0) is not
    tensor([[-100, -100,    3,    0],
            [-100,    3,    0, -100]])

    ```
    """

    def __init__(
        self, tokenizer: Any, pad_to_multiple_of: int | None = None, padding_side: str = "right"
    ) -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of}.")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError(
                f"The tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token; set "
                "`tokenizer.pad_token` before collating."
            )
        self.pad_token_id = int(pad_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side

    def _padded_length(self, lengths: Sequence[int]) -> int:
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def _pad(self, values: Sequence[int], length: int, fill: int) -> list[int]:
        padding = [fill] * (length - len(values))
        return list(values) + padding if self.padding_side == "right" else padding + list(values)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate `features` into a dict of `torch.long` tensors of shape (batch, padded length)."""
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        with_labels = "labels" in features[0]
        for index, feature in enumerate(features):
            if "input_ids" not in feature:
                raise ValueError(
                    f"Sample {index} of the batch has no 'input_ids'; encode it with encode_example."
                )
            if ("labels" in feature) != with_labels:
                raise ValueError(f"Sample {index} of the batch differs from sample 0 in having 'labels'.")
            if with_labels and len(feature["labels"]) != len(feature["input_ids"]):
                raise ValueError(f"Sample {index}: 'labels' and 'input_ids' differ in length.")
        length = self._padded_length([len(feature["input_ids"]) for feature in features])
        batch = {
            "input_ids": [self._pad(f["input_ids"], length, self.pad_token_id) for f in features],
            "attention_mask": [
                self._pad(f.get("attention_mask", [1] * len(f["input_ids"])), length, 0) for f in features
            ],
        }
        if with_labels:
            batch["labels"] = [self._pad(f["labels"], length, IGNORE_INDEX) for f in features]
        tensors = {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
        if "sample_weight" in features[0]:  # class weights of the loss, one per sample: (B,)
            tensors["sample_weight"] = torch.tensor([float(f["sample_weight"]) for f in features])
        return tensors
