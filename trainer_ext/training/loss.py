"""The completion-only loss of `LabelTrainer`, and the shared prompt prefix it runs once per batch.

Only completion tokens are scored, and the LM head is applied only at the positions that predict one
(``logits_to_keep`` as a boolean mask), never to the full `(batch, seq, vocab)` tensor.

With an instruction prompt, every sample of a batch starts with the same ids: the instruction that names
the labels (and any k-shot examples), often 40% of a tweet's tokens. `completion_loss` runs those ids
through the model once, for one row, and lets every sample attend to their keys and values (repeated along
the batch, so their gradient is the sum over the samples, as when each sample computes them itself). The
loss and the gradients are those of the whole batch computed sample by sample, up to float rounding; only
dropout differs (one mask over the shared ids for the batch instead of one per sample).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from trainer_ext.modeling.positions import last_position
from trainer_ext.training.tokenization import IGNORE_INDEX

# A shared run of fewer ids saves less than its extra forward call costs.
MIN_SHARED_PREFIX = 8


def shared_prompt_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> int:
    """How many leading positions every row of a batch shares and no position among them is scored.

    Args:
        input_ids (`torch.Tensor`), attention_mask (`torch.Tensor`): `(B, T)`, right-padded.
        keep (`torch.Tensor`): `(B, T)` bool, the positions whose logits are scored.

    Returns:
        `int`: K, the length of the shared prefix; 0 when there is nothing worth sharing (a single row,
        left padding, fewer than `MIN_SHARED_PREFIX` shared ids).
    """
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)  # (T,)
    length = int(same.int().cumprod(0).sum())
    scored = keep.any(0).nonzero()
    if len(scored):
        length = min(length, int(scored[0]))  # the prefix must not hold a scored position
    length = min(length, input_ids.shape[1] - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def _forward(model, inputs: dict[str, torch.Tensor], keep: torch.Tensor, share_prefix: bool):
    """The model's output at the `keep` positions, running a shared prompt prefix once when allowed."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    shared = shared_prompt_prefix(ids, mask, keep) if share_prefix else 0
    if not shared:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False)
    # Under DistributedDataParallel the prefix goes through the wrapped module itself, so that the wrapper
    # sees one forward per step, as it expects; the prefix's gradients reach it through the second pass.
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    prefix_ids = ids[:1, :shared]  # (1, K); its one logit row is not used
    prefix = inner(input_ids=prefix_ids, use_cache=True, logits_to_keep=last_position(prefix_ids))
    cache = prefix.past_key_values
    cache.batch_repeat_interleave(ids.shape[0])  # (1, ...) -> (B, ...); the gradient sums over rows
    positions = torch.arange(shared, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)  # (B, T - K)
    return model(
        input_ids=ids[:, shared:],
        attention_mask=mask,  # (B, T): the prefix's columns and each row's own
        position_ids=positions,
        past_key_values=cache,
        logits_to_keep=keep[:, shared:],
        use_cache=False,
    )


def completion_loss(
    model,
    inputs: dict[str, torch.Tensor],
    num_items: Any = None,
    share_prefix: bool = False,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Any]:
    """Cross-entropy of the completion tokens, computing logits only where a completion token is predicted.

    Args:
        model (`PreTrainedModel`): A causal LM whose forward accepts ``logits_to_keep`` (transformers 5).
        inputs (`dict`): `input_ids`, `attention_mask`, `labels` (-100 outside completions), all `(B, T)`;
            optionally `sample_weight` `(B,)`, each sample's class weight, which multiplies the loss of its
            completion tokens.
        num_items (`int` or `torch.Tensor`, *optional*): Divisor of the summed loss (the Trainer's count of
            completion tokens across accumulation steps and devices); defaults to this batch's count. The
            divisor is the unweighted token count: with class weights of mean 1 over the training set (see
            `trainer_ext.training.weights`) the loss keeps its scale and the learning rate its meaning, and
            the result is the same however the batches are accumulated or split between processes.
        share_prefix (`bool`, *optional*, defaults to `False`): Run the ids every sample starts with once
            (see the module docstring); needs right padding (left-padded batches run whole) and a model
            that takes `past_key_values` with gradients, so not gradient checkpointing.
        label_smoothing (`float`, *optional*, defaults to 0.0): epsilon of label smoothing over the vocabulary
            (Szegedy et al. 2016, "Rethinking the Inception Architecture", section 7): each completion token's
            loss is ``(1 - epsilon) * NLL + epsilon * mean over the V tokens of -log p``, as transformers'
            `LabelSmoother` computes it for `TrainingArguments.label_smoothing_factor`.

    Returns:
        `(loss, outputs)`; `outputs.logits` is `(N, V)`, one row per scored position in row-major order.
    """
    labels = inputs["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): position t predicts token t + 1
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    outputs = _forward(model, inputs, keep, share_prefix)
    logits = outputs.logits  # (N, V): one row per completion token, in row-major order of `keep`
    targets = labels[:, 1:][keep[:, :-1]]  # (N,)
    # (N,): each completion token's loss, times its sample's class weight when there are weights
    per_token = F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=label_smoothing)
    if "sample_weight" in inputs:
        per_token = per_token * inputs["sample_weight"][:, None].expand_as(labels)[keep]
    loss = per_token.sum()
    divisor = num_items if num_items is not None else targets.numel()
    return loss / divisor, outputs
