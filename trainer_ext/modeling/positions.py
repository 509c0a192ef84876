"""Which positions the LM head is applied to: a ``logits_to_keep`` that keeps its matmul on the fast path.

transformers' integer ``logits_to_keep=1`` keeps the last position by slicing a strided *view* of the
hidden states (``hidden_states[:, -1:, :]``). PyTorch's CPU matmul does not fold such a view into one
matrix product with the LM head: with several rows it broadcasts the head's weight to `(B, H, V)`, copies
it, and runs a batched product; with one row it still takes a slow path for the odd strides. Measured on a
2-core AVX-512 CPU with SmolLM2-135M's bf16 head (49,152 x 576): 16 rows took 2,977 ms and a 906 MB copy
of the weight instead of 56 ms; one row 235 ms instead of 14 ms. An index tensor makes transformers gather
the kept positions into a fresh, contiguous `(B, 1, H)` tensor first (``slice_logits_to_keep``), which is
then a plain `(B, H) @ (H, V)` product.

>>> import torch
>>> last_position(torch.zeros(2, 7, dtype=torch.long))
tensor([6])
"""

from __future__ import annotations

import torch


def last_position(input_ids: torch.Tensor) -> torch.Tensor:
    """``logits_to_keep`` for the last position of `input_ids`, as a 1-D index tensor.

    Use it where ``logits_to_keep=1`` would be passed: same logits, without the slow strided matmul (see
    the module docstring).

    Args:
        input_ids (`torch.Tensor`): `(B, S)`, the ids fed to the model in this call.

    Returns:
        `torch.Tensor` of shape `(1,)`: ``[S - 1]``, on the device of `input_ids`.
    """
    return torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)
