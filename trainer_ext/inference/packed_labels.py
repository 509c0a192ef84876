"""Constrained scoring in one forward pass: the label tokens packed after the prompt's own tokens.

Scoring a label of several tokens (``neutral`` + EOS is already two) needs the model's prediction after
each of its tokens but the last. `scoring` gets them with a second pass that feeds the label tokens after
copies of the prompts' KV cache. For a short label set the same predictions come out of the prompt's own
pass: every label's tokens but its last are appended after the prompt, one label after another, and a 4-D
attention mask lets each of them see the shared prefix, the prompt's real tokens and the earlier tokens of
its own label only; its position id continues the prompt's. Each appended token then computes what it
would compute in the second pass, up to float rounding. This is the tree attention of speculative
decoding (Miao et al. 2024, "SpecInfer"), with the labels as the tree's branches.

The second pass reads every weight of the model once more for a handful of rows; on a 2-core CPU that
was a large share of the time of one message (``python -m benchmarks.latency``). The logits of a packed
pass are `(B, 1 + T, V)` for `T` appended tokens; `packed_passes` splits a batch into as many packed passes
as keep them under the scoring module's chunk size, and keeps the second pass where that would take fewer
passes, or where one prompt's packed logits alone exceed the chunk.

>>> import torch
>>> packed_label_tokens(torch.tensor([[5, 0], [7, 9]]), torch.tensor([[1, 0], [1, 1]]))
(tensor([7]), tensor([1]), tensor([0]))
"""

from __future__ import annotations

import torch


def packed_label_tokens(grid: torch.Tensor, grid_mask: torch.Tensor):
    """The tokens appended after the prompt: each label's tokens but its last, label after label.

    Args:
        grid (`torch.Tensor`): `(L, C)` label token ids, right-padded.
        grid_mask (`torch.Tensor`): `(L, C)` 1 on real label tokens.

    Returns:
        `(ids, label_of, step)`, each `(T,)`: the token ids, the label each belongs to, and its index
        within that label (0 for the label's first token). `T` is the number of label tokens minus `L`.
    """
    ids, label_of, step = [], [], []
    for label, length in enumerate(grid_mask.sum(-1).tolist()):
        for index in range(int(length) - 1):
            ids.append(int(grid[label, index]))
            label_of.append(label)
            step.append(index)
    device = grid.device
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return as_tensor(ids), as_tensor(label_of), as_tensor(step)


def packed_attention_mask(own_mask: torch.Tensor, prefix: int, label_of: torch.Tensor) -> torch.Tensor:
    """Which keys each query of a packed pass sees, `(B, 1, S + T, prefix + S + T)` booleans.

    Args:
        own_mask (`torch.Tensor`): `(B, S)` 1 on the real tokens of each prompt's own (left-padded) part.
        prefix (`int`): Length `K` of the shared prefix in the KV cache (0 without one).
        label_of (`torch.Tensor`): `(T,)` the label of each appended token.

    Returns:
        `torch.Tensor`: True where a query attends: every query sees the prefix; prompt tokens see the
        real prompt tokens up to themselves; appended tokens see all real prompt tokens and the tokens of
        their own label up to themselves; every query sees itself (so a padding row is never empty).
    """
    batch, own = own_mask.shape
    appended = label_of.shape[0]
    queries = own + appended
    device = own_mask.device
    real = own_mask.bool()[:, None, :]  # (B, 1, S)
    allowed = torch.zeros((batch, queries, prefix + queries), dtype=torch.bool, device=device)
    allowed[:, :, :prefix] = True
    causal = torch.ones((own, own), dtype=torch.bool, device=device).tril()  # (S, S)
    allowed[:, :own, prefix : prefix + own] = causal & real
    allowed[:, own:, prefix : prefix + own] = real
    same_label = label_of[:, None] == label_of[None, :]  # (T, T)
    earlier = torch.ones((appended, appended), dtype=torch.bool, device=device).tril()
    allowed[:, own:, prefix + own :] = same_label & earlier
    index = torch.arange(queries, device=device)
    allowed[:, index, prefix + index] = True
    return allowed[:, None]


def _model_mask(model, allowed: torch.Tensor) -> torch.Tensor:
    """`allowed` as the model's attention takes a ready 4-D mask: booleans for SDPA, else additive floats."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


@torch.no_grad()
def packed_scores(model, ids, mask, positions, cache, grid, grid_mask, log_probs) -> torch.Tensor:
    """Sequence log-probabilities `(B, L)` of every label after every prompt, in one forward pass.

    Args:
        model (`PreTrainedModel` or `PeftModel`): A causal LM in eval mode.
        ids (`torch.Tensor`): `(B, S)` each prompt's own ids (after any shared prefix), left-padded.
        mask (`torch.Tensor`): `(B, K + S)` attention mask of the whole prompts (1 on the prefix).
        positions (`torch.Tensor`): `(B, S)` position ids of `ids`.
        cache (`Cache` or `None`): KV cache of the shared prefix, one copy per row (appended to).
        grid (`torch.Tensor`), grid_mask (`torch.Tensor`): `(L, C)` label tokens and their mask.
        log_probs (`Callable`): ``log_probs(logits (..., V), targets (..., K)) -> (..., K)`` float32.
    """
    batch, own = ids.shape
    prefix = mask.shape[1] - own
    tokens, label_of, step = packed_label_tokens(grid, grid_mask)  # (T,) each
    start = positions[:, -1:] + 1  # (B, 1): position of each prompt's first label token
    out = model(
        input_ids=torch.cat([ids, tokens.expand(batch, -1)], dim=1),  # (B, S + T)
        attention_mask=_model_mask(model, packed_attention_mask(mask[:, prefix:], prefix, label_of)),
        position_ids=torch.cat([positions, start + step], dim=1),  # (B, S + T)
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=torch.arange(own - 1, own + len(tokens), device=ids.device),
    )
    logits = out.logits  # (B, 1 + T, V): after the prompt, then after each appended token
    scores = log_probs(logits[:, 0], grid[:, 0].expand(batch, -1))  # (B, L): each label's first token
    following = grid[label_of, step + 1]  # (T,): the token each appended one predicts
    token_logp = log_probs(logits[:, 1:], following.expand(batch, -1).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return scores.index_add(1, label_of, token_logp)


def label_chunks(widths: list[int], vocab_size: int, logits_per_chunk: int) -> list[slice]:
    """How a second label pass chunks its (prompt, label) rows: slices of consecutive rows whose logits,
    rows x (width - 1) x `vocab_size` for the chunk's first (widest) row, stay under `logits_per_chunk`.

    Args:
        widths (`list[int]`): Label tokens of each row, widest first; every width is 2 or more.
        vocab_size (`int`): Width of the logits.
        logits_per_chunk (`int`): The budget; a row over it gets a chunk of its own.

    Returns:
        `list[slice]`: The chunks, in order, covering every row once.

    >>> label_chunks([3, 3, 2, 2], vocab_size=10, logits_per_chunk=40)
    [slice(0, 2, None), slice(2, 4, None)]
    """
    chunks, first = [], 0
    while first < len(widths):
        rows = max(1, logits_per_chunk // ((widths[first] - 1) * vocab_size))
        chunks.append(slice(first, min(first + rows, len(widths))))
        first += rows
    return chunks


def packed_passes(n_prompts: int, grid_mask: torch.Tensor, vocab_size: int, logits_per_chunk: int) -> int:
    """Forward passes that scoring `n_prompts` prompts with their label tokens packed takes, or 0 when
    packing does not pay.

    Packed, a pass of `R` prompts has `R x (1 + T) x vocab_size` logits for `T` appended tokens; the
    prompts are split into as many passes as keep that under `logits_per_chunk`. The other way is one
    prompt pass and then the chunks of `label_chunks`. Each pass reads every weight once, which on a CPU
    (more so with 8-bit weights, dequantised in every pass) is what a batch of short prompts costs, so
    packing is chosen when it takes no more passes. It is never chosen when one prompt's packed logits
    alone exceed the budget, or when no label has more than one token.

    Args:
        n_prompts (`int`): Prompts in the batch.
        grid_mask (`torch.Tensor`): `(L, C)` 1 on real label tokens.
        vocab_size (`int`): Width of the logits.
        logits_per_chunk (`int`): The logits budget of one pass.

    Returns:
        `int`: the number of packed passes, 0 for the prompt pass followed by a second pass.

    >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # labels of 3 and 2 tokens: 3 appended tokens
    >>> packed_passes(4, mask, vocab_size=10, logits_per_chunk=80), packed_passes(4, mask, 10, 20)
    (2, 0)
    >>> pairs = torch.ones(3, 2, dtype=torch.long)  # three labels of 2 tokens: 3 appended, 1 row per pass
    >>> packed_passes(4, pairs, 10, 50), packed_passes(10, pairs, 10, 50)  # 4 <= 1 + 3; 10 > 1 + 6
    (4, 0)
    """
    lengths = grid_mask.sum(-1).tolist()  # (L,)
    appended = sum(lengths) - len(lengths)
    rows_per_pass = logits_per_chunk // ((1 + appended) * vocab_size)
    if not appended or rows_per_pass < 1:
        return 0
    packed = -(-n_prompts // rows_per_pass)
    widths = sorted((n for n in lengths if n > 1), reverse=True)
    second = 1 + len(
        label_chunks([w for w in widths for _ in range(n_prompts)], vocab_size, logits_per_chunk)
    )
    return packed if packed <= second else 0
