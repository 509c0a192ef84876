"""Turning a causal LM into label predictions: constrained scoring and greedy generation.

Two decoding modes:

- ``constrained``: the log-probability of each label's whole completion (its tokens and the EOS) given
  the prompt; argmax over labels. The prompt goes through the model once; its KV cache is then repeated
  once per label and the label tokens are scored in one more short pass. Never invalid, and it returns a
  probability per label (a softmax over the labels' sequence log-probabilities). The tokens every prompt
  starts with (the instruction of a template, the examples of a few-shot prompt) go through the model
  once per call, not once per prompt: their KV cache is copied into every batch.
- ``generate``: greedy decoding of a few tokens from the prompt alone, parsed back to a label with
  `LabelTask.label_from_completion`; an answer that is not a label is invalid (``None``).

Prompts are left-padded, with position ids counted from each row's first real token, so a row's
result does not depend on the batch it is in (models with absolute position embeddings, like GPT-2,
would otherwise see shifted positions).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from trainer_ext.tasks import LabelTask
from trainer_ext.training.tokenization import label_token_ids


@dataclass
class LabelScores:
    """Per-sample results of a decoding mode.

    Args:
        labels (`list[str | None]`): The predicted label of each sample; `None` when invalid (generate only).
        probs (`torch.Tensor`, *optional*): `(N, L)` label probabilities (constrained only).
        completions (`list[str]`, *optional*): The generated text of each sample (generate only).
    """

    labels: list[str | None]
    probs: torch.Tensor | None = None
    completions: list[str] | None = None


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into `(input_ids, attention_mask)`, both `(B, P)`."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)


def _label_grid(completions: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Label completions as a right-padded `(L, C)` grid of ids and a mask of real tokens."""
    width = max(len(c) for c in completions)
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    for row, completion in enumerate(completions):
        ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
        mask[row, : len(completion)] = 1
    return ids.to(device), mask.to(device)


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading token ids all `prompts` share, leaving every prompt at least one id of its own."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length


@torch.no_grad()
def _prefix_cache(model, prefix: Sequence[int], device):
    """The KV cache of `prefix` (batch 1), computed once and copied into every batch."""
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)  # (1, K)
    return model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values


def _batch_inputs(prompts, pad_id, device, prefix=None):
    """`(ids, mask, positions, cache)` of a batch of prompts, with or without a shared prefix.

    `prefix`, when given, is `(K, cache)`: the first K ids of every prompt and their KV cache; only the
    rest of each prompt is fed, left-padded after the shared part (the padding is masked out). `mask`
    always covers the whole prompt: `(B, P)`, `(B, K + S)` with a prefix.
    """
    if prefix is None:
        ids, mask = left_pad(prompts, pad_id, device)
        return ids, mask, _positions(mask), None
    shared, prefix_cache = prefix
    ids, own = left_pad([p[shared:] for p in prompts], pad_id, device)  # (B, S)
    mask = torch.cat([own.new_ones((own.shape[0], shared)), own], dim=1)  # (B, K + S)
    cache = copy.deepcopy(prefix_cache)  # the next forward appends to it
    cache.batch_repeat_interleave(len(prompts))
    return ids, mask, _positions(mask)[:, shared:], cache


@torch.no_grad()
def _score_batch(model, prompts, grid, grid_mask, pad_id, prefix=None) -> torch.Tensor:
    """Sequence log-probabilities `(B, L)` of every label completion after every prompt."""
    device = grid.device
    ids, mask, positions, cache = _batch_inputs(prompts, pad_id, device, prefix)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    first = out.logits[:, -1].float().log_softmax(-1)  # (B, V)
    scores = first[:, grid[:, 0]]  # (B, L): log p(first label token | prompt)
    n_prompts, n_labels = ids.shape[0], grid.shape[0]
    if grid.shape[1] == 1:
        return scores
    # Feed every label's tokens but the last after a copy of each prompt's cache; row b*L + l is
    # prompt b followed by label l.
    cache = out.past_key_values
    cache.batch_repeat_interleave(n_labels)
    feed = grid[:, :-1].repeat(n_prompts, 1)  # (B*L, C-1)
    feed_mask = grid_mask[:, :-1].repeat(n_prompts, 1)
    attention = torch.cat([mask.repeat_interleave(n_labels, 0), feed_mask], dim=1)
    start = positions[:, -1:].repeat_interleave(n_labels, 0) + 1
    feed_positions = start + torch.arange(feed.shape[1], device=device)
    out = model(
        input_ids=feed,
        attention_mask=attention,
        position_ids=feed_positions,
        past_key_values=cache,
        use_cache=False,
    )
    logp = out.logits.float().log_softmax(-1)  # (B*L, C-1, V)
    targets = grid[:, 1:].repeat(n_prompts, 1)  # (B*L, C-1)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * grid_mask[:, 1:].repeat(n_prompts, 1)
    return scores + token_logp.sum(-1).view(n_prompts, n_labels)


def _batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Index batches of similar prompt length (less padding), covering every index once."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def score_labels(
    model,
    tokenizer,
    task: LabelTask,
    prompts: Sequence[Sequence[int]],
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
    share_prefix: bool = True,
) -> LabelScores:
    """Constrained decoding: the probability of each label's completion after each prompt.

    Args:
        model (`PreTrainedModel` or `PeftModel`): A causal LM in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer (pad and EOS ids).
        task (`LabelTask`): The labels and their verbalizers.
        prompts (`Sequence[Sequence[int]]`): Prompt ids, e.g. from `encode_prompt`.
        batch_size (`int`, *optional*, defaults to 16): Prompts per forward pass.
        on_batch (`Callable[[int], None]`, *optional*): Called with the size of each finished batch.
        share_prefix (`bool`, *optional*, defaults to `True`): Run the ids that all prompts start with
            through the model once and re-use their KV cache (same scores up to float rounding).

    Returns:
        `LabelScores`: `labels` (argmax) and `probs` `(N, L)` in `task.labels` order.
    """
    device = next(model.parameters()).device
    completions = label_token_ids(tokenizer, task)
    grid, grid_mask = _label_grid(
        [completions[label] for label in task.labels], tokenizer.pad_token_id, device
    )
    logp = torch.empty((len(prompts), len(task.labels)), dtype=torch.float32)
    shared = shared_prefix_length(prompts) if share_prefix and prompts else 0
    prefix = (shared, _prefix_cache(model, prompts[0][:shared], device)) if shared else None
    for batch in _batches(prompts, batch_size):
        logp[batch] = _score_batch(
            model, [prompts[i] for i in batch], grid, grid_mask, tokenizer.pad_token_id, prefix
        ).cpu()
        if on_batch:
            on_batch(len(batch))
    probs = logp.softmax(-1)
    return LabelScores([task.labels[i] for i in probs.argmax(-1).tolist()], probs=probs)


@torch.no_grad()
def generate_labels(
    model,
    tokenizer,
    task: LabelTask,
    prompts: Sequence[Sequence[int]],
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> LabelScores:
    """Greedy decoding of each prompt's completion, parsed to a label (`None` when it is not one).

    Args:
        model (`PreTrainedModel` or `PeftModel`): A causal LM in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        task (`LabelTask`): Parses completions back to labels.
        prompts (`Sequence[Sequence[int]]`): Prompt ids.
        batch_size (`int`, *optional*, defaults to 16): Prompts per `generate` call.
        max_new_tokens (`int`, *optional*): Defaults to the longest label completion, EOS included.
        on_batch (`Callable[[int], None]`, *optional*): Called with the size of each finished batch.

    Returns:
        `LabelScores`: `labels` and the raw `completions`.
    """
    device = next(model.parameters()).device
    if max_new_tokens is None:
        max_new_tokens = max(len(ids) for ids in label_token_ids(tokenizer, task).values())
    labels: list[str | None] = [None] * len(prompts)
    texts = [""] * len(prompts)
    for batch in _batches(prompts, batch_size):
        ids, mask = left_pad([prompts[i] for i in batch], tokenizer.pad_token_id, device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, index in enumerate(batch):
            texts[index] = tokenizer.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
            labels[index] = task.label_from_completion(texts[index])
        if on_batch:
            on_batch(len(batch))
    return LabelScores(labels, completions=texts)


def contextual_calibration(probs: torch.Tensor, content_free_probs: torch.Tensor) -> torch.Tensor:
    """Divide out the label bias a content-free input reveals (Zhao et al. 2021, "Calibrate Before Use").

    Args:
        probs (`torch.Tensor`): `(N, L)` label probabilities.
        content_free_probs (`torch.Tensor`): `(L,)` or `(K, L)` probabilities of content-free inputs such as
            ``"N/A"``; several are averaged.

    Returns:
        `torch.Tensor`: `(N, L)` calibrated probabilities (each row sums to 1).

    Example:

    ```python
    >>> p = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    >>> contextual_calibration(p, torch.tensor([0.65, 0.35])).argmax(-1).tolist()
    [0, 1]

    ```
    """
    bias = content_free_probs.reshape(-1, probs.shape[-1]).mean(0).clamp(min=1e-12)
    calibrated = probs / bias
    return calibrated / calibrated.sum(-1, keepdim=True)
