"""Weight layout of float32 linear layers for prediction on the CPU.

`nn.Linear` keeps its weight as a contiguous `(out, in)` matrix and computes ``x @ weight.T``. On the
CPU, for the rows of one short prompt (8 to 48 tokens), that product runs 1.6-2.7x slower than the same
product with the weight stored the other way round, as the transpose of a contiguous `(in, out)` matrix
(column-major): 577 against 1,083 microseconds for 28 rows of SmolLM2-135M's `gate_proj` in float32 on a
2-core AVX-512 CPU, weights read from memory (``python -m benchmarks.linear_layout``,
docs/benchmarks/linear_layout.md). From 64 rows on the two layouts are within a few percent of each
other; for 1 to 3 rows column-major is slower (0.64-0.93x), which is why constrained scoring packs the
few label tokens into the prompt's own pass (`trainer_ext.inference.packed_labels`). What it gives for a
whole message is in the ``fp32`` and ``fp32-merged`` rows of ``python -m benchmarks.latency``.

`use_column_major_weights` re-lays the float32 weights of a model's linear layers that way, in place.
The values do not change, only their order in memory; results differ from the row-major ones by float
rounding only (another summation order). The output embeddings (the LM head, often tied to the input
embeddings) are left alone: their product over one or a few rows is not faster that way.

A model is re-laid for prediction only (`Classifier` does it when it loads one). Greedy generation,
which feeds one row per new token after the prompt, runs those steps 0.64-0.93x as fast; the prompt's
own pass gains more than that for short answers such as labels, not for long free continuations.

>>> import torch
>>> layer = torch.nn.Linear(4, 3)
>>> before = layer(torch.ones(2, 4))
>>> use_column_major_weights(layer)
1
>>> layer.weight.stride(), torch.allclose(layer(torch.ones(2, 4)), before)
((1, 3), True)
"""

from __future__ import annotations

import torch
from torch import nn


def use_column_major_weights(model: nn.Module) -> int:
    """Stores every float32 `nn.Linear` weight of `model` as the transpose of a contiguous matrix.

    Args:
        model (`torch.nn.Module`): A model (or a layer) on the CPU, used for prediction.

    Returns:
        `int`: the number of weights re-laid (layers already column-major, on another device, in another
        dtype, or the output embeddings are skipped).
    """
    skip = set()
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        skip.add(id(output.weight))
    relaid = 0
    for module in model.modules():
        if type(module) is not nn.Linear:  # quantized layers keep theirs (LoRA's inner nn.Linear do not)
            continue
        weight = module.weight
        if (
            id(weight) in skip
            or weight.device.type != "cpu"
            or weight.dtype != torch.float32
            or not weight.is_contiguous()
            or weight.dim() != 2
        ):
            continue
        with torch.no_grad():
            weight.data = weight.data.t().contiguous().t()  # (out, in) values, strides (1, out)
        relaid += 1
    return relaid
