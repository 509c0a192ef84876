"""Turning a causal LM into label predictions: constrained scoring and greedy generation.

Two decoding modes:

- ``constrained``: the log-probability of each label's whole completion (its tokens and the EOS) given
  the prompt; argmax over labels. The prompt goes through the model once and the label tokens are packed
  into that same pass (`packed_labels`; a batch too wide for one packed pass is split into several), unless
  a second pass over them, fed after copies of the prompts' KV cache in chunks (see below), takes fewer
  forward passes. Never invalid, and it
  returns a probability per label (a softmax over the labels' sequence log-probabilities). The tokens
  every prompt starts with (the instruction of a template, the examples of a few-shot prompt) go through
  the model once per call, not once per prompt: their KV cache is copied into every batch.
- ``generate``: greedy decoding of a few tokens from the prompt alone, parsed back to a label with
  `LabelTask.label_from_completion`; an answer that is not a label is invalid (``None``).

Prompts are left-padded, with position ids counted from each row's first real token, so a row's
result does not depend on the batch it is in (models with absolute position embeddings, like GPT-2,
would otherwise see shifted positions), up to float rounding: batch shapes differ, and a label set long
enough to leave the packed passes for a full batch may still be packed for a smaller last one.

Constrained scoring needs one log-probability per label token, not the whole distribution. The label pass
therefore runs over chunks of (prompt, label) rows whose logits stay under `_LOGITS_PER_CHUNK`, and the
log-sum-exp over the vocabulary is taken in place, without a log-softmax of the logits' size: memory no
longer grows with batch x labels x label tokens x vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from trainer_ext.inference.packed_labels import label_chunks, packed_passes, packed_scores
from trainer_ext.modeling.positions import last_position
from trainer_ext.tasks import LabelTask
from trainer_ext.training.tokenization import label_token_ids

# At most this many logits (rows x label positions x vocabulary) exist at once in a packed pass or a chunk
# of the label pass: 32 MiB in float32, whatever the batch size, the number of labels and their lengths (a
# row of the label pass over it runs whole; packing is not used for a prompt over it).
# Smaller chunks would mean more, smaller forward passes, each with its own copy of the batch's KV cache.
_LOGITS_PER_CHUNK = 1 << 23


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
    return model(input_ids=ids, use_cache=True, logits_to_keep=last_position(ids)).past_key_values


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


def _log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float32 log-probabilities `(..., K)` of the `targets` ids `(..., K)` under `logits` `(..., V)`.

    Equals ``logits.float().log_softmax(-1).gather(-1, targets)`` without a log-softmax of the same size as
    the logits: the log-sum-exp is computed in place, in `logits` themselves when they are float32 (they
    are overwritten) or else in one float32 copy.
    """
    picked = logits.gather(-1, targets).float()  # (..., K)
    work = logits.float()  # (..., V)
    peak = work.amax(-1, keepdim=True)  # (..., 1)
    return picked - work.sub_(peak).exp_().sum(-1, keepdim=True).log_().add_(peak)


@torch.no_grad()
def _score_rows(model, cache, mask, start, prompts, ids, ids_mask) -> torch.Tensor:
    """Log-probability `(R,)` of every token but the first of label row `r`, after prompt `prompts[r]`.

    Args:
        cache (`Cache`): The KV cache of the batch's `B` prompts; left as it is.
        mask (`torch.Tensor`): `(B, P)` attention mask of the prompts.
        start (`torch.Tensor`): `(B,)` position id of each prompt's first label token.
        prompts (`torch.Tensor`): `(R,)` the prompt of each row.
        ids (`torch.Tensor`): `(R, W + 1)` the rows' label tokens, right-padded.
        ids_mask (`torch.Tensor`): `(R, W + 1)` 1 on real label tokens.
    """
    rows_cache = copy.deepcopy(cache)  # the forward appends to it
    rows_cache.batch_select_indices(prompts)
    feed = ids[:, :-1]  # (R, W): the last token predicts nothing that is scored
    out = model(
        input_ids=feed,
        attention_mask=torch.cat([mask[prompts], ids_mask[:, :-1]], dim=1),  # (R, P + W)
        position_ids=start[prompts].unsqueeze(1) + torch.arange(feed.shape[1], device=feed.device),  # (R, W)
        past_key_values=rows_cache,
        use_cache=False,
    )
    token_logp = _log_probs(out.logits, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (R, W)
    return token_logp.where(ids_mask[:, 1:].bool(), 0.0).sum(-1)


def _label_pass(model, cache, mask, start, grid, grid_mask, vocab_size: int) -> torch.Tensor:
    """Log-probabilities `(B, L)` of every label's tokens after its first, given the prompts' KV cache.

    Rows are (prompt, label) pairs, fed in chunks whose logits stay under `_LOGITS_PER_CHUNK`. They go label
    by label, longest label first, so that each chunk is only as wide as its own longest label; labels of a
    single token have nothing to score here.

    Args:
        cache (`Cache`): The KV cache of the `B` prompts; left as it is.
        mask (`torch.Tensor`): `(B, P)` attention mask of the prompts.
        start (`torch.Tensor`): `(B,)` position id of each prompt's first label token.
        grid (`torch.Tensor`), grid_mask (`torch.Tensor`): `(L, C)` label tokens and their mask.
        vocab_size (`int`): Width of the logits.
    """
    n_prompts = mask.shape[0]
    lengths = grid_mask.sum(-1)  # (L,)
    order = lengths.argsort(descending=True, stable=True)  # (L,)
    order = order[lengths[order] > 1]
    prompt_ids = torch.arange(n_prompts, device=grid.device)
    label_of, prompt_of = (t.reshape(-1) for t in torch.meshgrid(order, prompt_ids, indexing="ij"))  # (R,)
    scores = torch.zeros((n_prompts, grid.shape[0]), dtype=torch.float32, device=grid.device)  # (B, L)
    for rows in label_chunks(lengths[label_of].tolist(), vocab_size, _LOGITS_PER_CHUNK):
        labels, prompts = label_of[rows], prompt_of[rows]  # (R,)
        width = int(lengths[labels[0]])  # the chunk's longest label, its first row's
        scores[prompts, labels] = _score_rows(
            model, cache, mask, start, prompts, grid[labels, :width], grid_mask[labels, :width]
        )
    return scores


@torch.no_grad()
def _score_batch(model, prompts, grid, grid_mask, pad_id, prefix=None) -> torch.Tensor:
    """Sequence log-probabilities `(B, L)` of every label completion after every prompt.

    Label tokens after the first are packed into the prompts' own pass when that takes no more passes
    than a second pass over them (`packed_passes`); a batch whose packed logits exceed
    `_LOGITS_PER_CHUNK` is then split into packed passes of near-equal numbers of rows.
    """
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    passes = packed_passes(len(prompts), grid_mask, vocab_size, _LOGITS_PER_CHUNK) if vocab_size else 0
    if passes > 1:
        parts = torch.arange(len(prompts)).tensor_split(passes)  # neighbours: prompts come sorted by length
        parts = [[prompts[i] for i in part] for part in parts]
        return torch.cat([_score_batch(model, part, grid, grid_mask, pad_id, prefix) for part in parts])
    ids, mask, positions, cache = _batch_inputs(prompts, pad_id, grid.device, prefix)
    if passes:
        return packed_scores(model, ids, mask, positions, cache, grid, grid_mask, _log_probs)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=last_position(ids),
    )
    logits = out.logits[:, -1]  # (B, V)
    # log p(first label token | prompt), (B, L)
    scores = _log_probs(logits, grid[:, 0].expand(logits.shape[0], -1))
    if grid.shape[1] == 1:
        return scores
    start = positions[:, -1] + 1  # (B,)
    return scores + _label_pass(model, out.past_key_values, mask, start, grid, grid_mask, logits.shape[-1])


def _batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Index batches of similar prompt length (less padding), covering every index once."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class LabelScorer:
    """Constrained scoring for one model and task that keeps, across calls, what every call would redo.

    `score_labels` scores one list of prompts. A predictor that is called again and again (`Classifier`,
    the Space: often one message per call) keeps a `LabelScorer` instead: the label ids and the KV cache of
    `prefix_ids` are computed on first use and reused, so a message costs one forward pass over its own
    tokens plus the label pass, not a pass over the template too.

    `prefix_ids` are the ids every prompt of the task starts with (special tokens, the instruction, any
    k-shot examples). A call whose prompts do not all start with them, and go on after them, scores them
    like `score_labels` (shared prefix of the call only); the result is the same either way up to float
    rounding, and the same bit for bit as a fresh `LabelScorer` given the same prefix.

    The cache holds the model's keys and values as they were when it was computed, for the device, autocast
    state and dtype of that call (a change of those recomputes it). Call `clear()` after changing the
    model's weights.

    Args:
        model (`PreTrainedModel` or `PeftModel`): A causal LM in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer (pad and EOS ids).
        task (`LabelTask`): The labels and their verbalizers.
        prefix_ids (`Sequence[int]`, *optional*): The ids every prompt of the task starts with.
    """

    def __init__(self, model, tokenizer, task: LabelTask, prefix_ids: Sequence[int] = ()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.prefix_ids = [int(i) for i in prefix_ids]
        self._grid: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prefix: tuple[tuple, object] | None = None

    def clear(self) -> None:
        """Forget the cached label ids and prefix KV cache (after the model or task changed)."""
        self._grid = None
        self._prefix = None

    def _label_ids(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._grid is None or self._grid[0].device != device:
            completions = label_token_ids(self.tokenizer, self.task)
            self._grid = _label_grid(
                [completions[label] for label in self.task.labels], self.tokenizer.pad_token_id, device
            )
        return self._grid

    def _shared(self, prompts: Sequence[Sequence[int]], device, share_prefix: bool):
        """`(K, cache)` of the ids all `prompts` start with, from the kept cache where it applies."""
        known = len(self.prefix_ids)
        if known and all(len(p) > known and list(p[:known]) == self.prefix_ids for p in prompts):
            # Keys and values depend on where and how the model computes: device, autocast, weights' dtype.
            state = (
                device,
                torch.is_autocast_enabled(device.type),
                torch.get_autocast_dtype(device.type),
                next(self.model.parameters()).dtype,
            )
            if self._prefix is None or self._prefix[0] != state:
                self._prefix = (state, _prefix_cache(self.model, self.prefix_ids, device))
            return known, self._prefix[1]
        shared = shared_prefix_length(prompts) if share_prefix else 0
        return (shared, _prefix_cache(self.model, prompts[0][:shared], device)) if shared else None

    def __call__(
        self,
        prompts: Sequence[Sequence[int]],
        batch_size: int = 16,
        on_batch: Callable[[int], None] | None = None,
        share_prefix: bool = True,
    ) -> LabelScores:
        """Score `prompts`; see `score_labels` for the arguments and the result."""
        if not prompts:
            return LabelScores([], probs=torch.empty((0, len(self.task.labels))))
        device = next(self.model.parameters()).device
        grid, grid_mask = self._label_ids(device)
        prefix = self._shared(prompts, device, share_prefix)
        logp = torch.empty((len(prompts), len(self.task.labels)), dtype=torch.float32)
        for batch in _batches(prompts, batch_size):
            logp[batch] = _score_batch(
                self.model, [prompts[i] for i in batch], grid, grid_mask, self.tokenizer.pad_token_id, prefix
            ).cpu()
            if on_batch:
                on_batch(len(batch))
        probs = logp.softmax(-1)
        return LabelScores([self.task.labels[i] for i in probs.argmax(-1).tolist()], probs=probs)


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
    return LabelScorer(model, tokenizer, task)(prompts, batch_size, on_batch, share_prefix)


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
