"""Weight layout of linear layers for prediction on the CPU, by CPU class: float32 column-major (AVX-512),
a weight-first LM head and float32 prepacked for oneDNN (AVX2), bf16 prepacked (native bf16).

`nn.Linear` keeps its weight as a contiguous `(out, in)` matrix and computes ``x @ weight.T``. On a CPU
with AVX-512, for the rows of one short prompt (8 to 48 tokens), that product runs 1.6-2.7x slower than the
same product with the weight stored the other way round, as the transpose of a contiguous `(in, out)` matrix
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

On a CPU with AVX2 but no AVX-512, as most laptops have, the same benchmark gave the opposite on the one
such machine measured, a 2-core AMD EPYC (Intel AVX2 CPUs were not measured; ``python -m
benchmarks.linear_layout --run runs/moderation-lora-all``, three runs:
docs/benchmarks/linear_layout_avx2_first/, linear_layout_avx2/ and linear_layout_avx2_rerun/): column-major
decoder products ran 0.73-1.12x as fast as row-major ones for 16 to 48 rows, slower in 32 of 36 cases. What
gains there is, first, the LM head: its product over the few rows of the label tokens (a 49,152 x 576
weight, 113 MB in float32) ran 1.9-3.6x faster for 3 to 8 rows and 1.2-1.6x for 16 to 64 computed weight
first, as ``(weight @ x.T).T``, 1.1-1.2x for 128 rows, about as fast for 1 row and slower for 448;
`WeightFirstLinear` computes it that way for 2 to 128 rows, which costs no memory. Second, float32 weights
prepacked for oneDNN (below), at the price of a second copy. Whole messages of the main job's run
(unquantized, adapter merged, layouts interleaved in one process) took 1.11-1.13x less time than with
row-major weights with the weight-first head alone (three runs), 1.26-1.28x with the decoder weights
prepacked as well, and 1.34-1.40x less than with the column-major weights used before (two runs; in the
first, column-major was 1.03x faster than row-major). In uncommitted probes while the machine ran faster
overall, the prepacking gained only 1.04-1.08x over the weight-first head. So on such CPUs
`lay_out_for_prediction` keeps row-major weights, computes the head weight first and, for unquantized
models, prepacks the decoder's float32 weights. On CPUs with AVX-512 none of that was measured, and on other
CPUs (ARM) nothing was: float32 layers stay as they are there.

bf16 products go through oneDNN, which reorders a plain `(out, in)` weight into its own blocked layout on
every call (float32 ones go through MKL's sgemm instead). `use_prepacked_weights` does that reorder once,
when a model is loaded for prediction, and keeps the blocked copy beside the weight
(``torch.ops.mkldnn._reorder_linear_weight``, the weight packing that PyTorch's Inductor compiler does for
CPU linear layers when it freezes a model). In bf16 the results are bit-identical to `nn.Linear`'s;
SmolLM2-135M's 210 decoder products over the 28 rows of one message took 23.0 instead of 35.8 ms, weights
read from memory, on a 2-core AMD EPYC with native bf16. The price is a second copy of those weights (about
270 MB for SmolLM2-135M, its tied LM head included). In float32, on AVX2, oneDNN's results differ from MKL's
by float rounding, and the copy is 425 MB (the head excluded).

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

from trainer_ext.modeling.cpu_features import cpu_capability, cpu_supports_bf16


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's LM head (``get_output_embeddings``), or `None` for a model or layer without one."""
    get_output = getattr(model, "get_output_embeddings", None)
    return get_output() if callable(get_output) else None


def use_column_major_weights(model: nn.Module) -> int:
    """Stores every float32 `nn.Linear` weight of `model` as the transpose of a contiguous matrix.

    Args:
        model (`torch.nn.Module`): A model (or a layer) on the CPU, used for prediction.

    Returns:
        `int`: the number of weights re-laid (layers already column-major, on another device, in another
        dtype, or the output embeddings are skipped).
    """
    skip = set()
    output = _output_embeddings(model)
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


# Rows of one product the weight-first LM head computes: measured 1.9-3.6x faster for 3-8 rows, 1.2-1.6x
# for 16-64, 1.1-1.2x for 128, slower for 448 (see the module docstring); 2 rows were not measured.
WEIGHT_FIRST_ROWS = range(2, 129)


def _runs_nn_linear(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether `layer` should compute `x` as `nn.Linear` does: anywhere but a CPU product of `dtype` inputs,
    weights and bias without gradients, outside autocast (which only rewrites PyTorch's own ops) and outside
    `torch.compile` (whose Inductor cannot lower a product with a prepacked weight)."""
    weight, bias = layer.weight, layer.bias
    return (
        x.device.type != "cpu"
        or weight.device.type != "cpu"
        or x.dtype != dtype
        or weight.dtype != dtype
        or (bias is not None and bias.dtype != dtype)
        or torch.is_autocast_enabled("cpu")
        or torch.compiler.is_compiling()  # a compiler traces nn.Linear, not oneDNN's packed tensors
        or (
            torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
        )
    )


class WeightFirstLinear(nn.Linear):
    """An `nn.Linear` that computes a float32 product of 2 to 128 rows on the CPU without gradients as
    ``(weight @ x.T).T``, made contiguous: the same values up to float rounding (another summation order),
    faster for the few rows of an LM head on AVX2 CPUs (see the module docstring). Everything else (other
    row counts, dtypes and devices, gradients) runs `nn.Linear`. The class holds no state of its own.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
        if rows not in WEIGHT_FIRST_ROWS or _runs_nn_linear(self, x, torch.float32):
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1])  # (rows, in)
        out = torch.mm(weight, flat.t()).t().contiguous()  # (out, rows) -> (rows, out)
        if bias is not None:
            out += bias
        return out.reshape(*x.shape[:-1], weight.shape[0])  # (..., out)


def use_weight_first_head(model: nn.Module) -> int:
    """Switches the output embeddings (the LM head) of `model` to `WeightFirstLinear`, in place, where it
    is a float32 `nn.Linear` on the CPU. Only the class changes: the parameters (and their tying to the
    input embeddings) stay as they are, and `nn.Linear` checks still see the layer as one.

    Args:
        model (`torch.nn.Module`): A model with ``get_output_embeddings``, on the CPU, used for prediction.

    Returns:
        `int`: 1 when the head was switched (or already was), else 0.
    """
    head = _output_embeddings(model)
    if type(head) not in (nn.Linear, WeightFirstLinear):
        return 0
    if head.weight.device.type != "cpu" or head.weight.dtype != torch.float32:
        return 0
    head.__class__ = WeightFirstLinear
    return 1


# One availability guard for oneDNN's linear ops (absent from builds without oneDNN).
_MKLDNN = getattr(torch.ops, "mkldnn", None)
_PACKING = (
    torch.backends.mkldnn.is_available()
    and hasattr(_MKLDNN, "_reorder_linear_weight")
    and hasattr(_MKLDNN, "_linear_pointwise")
)


def _identity(weight: torch.Tensor) -> tuple[int, int]:
    """Where a weight's data lives and its version counter (0 for a tensor made under
    `torch.inference_mode`, which has none and cannot change outside it)."""
    return weight.data_ptr(), 0 if weight.is_inference() else weight._version


class PrepackedLinear(nn.Linear):
    """An `nn.Linear` that, for inference on the CPU in the dtype it was packed in (bf16, or float32 on AVX2
    CPUs), multiplies by a copy of its weight prepacked in oneDNN's blocked layout; everything else
    (gradients, other dtypes and devices) runs `nn.Linear`.

    The packed copy is made again when the weight tensor is replaced or changed in place by an operation
    autograd sees (its version counter). A change made through ``weight.data`` is not seen: call
    `use_prepacked_weights` again after one. Moving or casting the layer (``.to()``, ``.float()``) drops the
    copy, and copying or pickling the layer leaves it out; it is made again at the next CPU call in the
    packed dtype.
    """

    _PACKED_ATTRIBUTES = ("_packed_weight", "_packed_from")

    def _pack(self) -> None:
        weight = self.weight.detach()
        self._packed_weight = _MKLDNN._reorder_linear_weight(weight)  # (out, in), oneDNN's layout
        self._packed_from = _identity(weight)

    def _drop_packed(self) -> None:
        for name in self._PACKED_ATTRIBUTES:
            self.__dict__.pop(name, None)

    def _apply(self, fn, *args, **kwargs):
        self._drop_packed()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        # oneDNN's packed tensors have no storage to copy or pickle.
        state = self.__dict__.copy()
        for name in self._PACKED_ATTRIBUTES:
            state.pop(name, None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if _runs_nn_linear(self, x, getattr(self, "_packed_dtype", torch.bfloat16)):  # dtype kept by casts
            return super().forward(x)
        if getattr(self, "_packed_from", None) != _identity(weight):
            self._pack()
        return _MKLDNN._linear_pointwise(x, self._packed_weight, bias, "none", [], "")  # (..., out)


def _inside_adapters(model: nn.Module) -> set[int]:
    """ids of the modules inside PEFT's adapter layers (their base layer, their adapters): PEFT merges and
    unmerges adapters by writing ``base_layer.weight.data``, which a packed copy would not see."""
    inside: set[int] = set()
    for module in model.modules():
        if id(module) not in inside and hasattr(module, "base_layer") and hasattr(module, "merged"):
            inside.update(id(sub) for sub in module.modules())
    return inside


def packed_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes whose oneDNN-prepacked products were measured faster than `nn.Linear`'s on this CPU: bf16
    where it computes bf16 natively (AVX-512 BF16 or AMX), float32 where PyTorch dispatches to AVX2 (no
    AVX-512; see the module docstring); none where PyTorch has no oneDNN."""
    if not _PACKING:
        return ()
    dtypes = [torch.bfloat16] if cpu_supports_bf16() else []
    if cpu_capability() == "AVX2":
        dtypes.append(torch.float32)
    return tuple(dtypes)


def use_prepacked_weights(model: nn.Module, dtypes: tuple[torch.dtype, ...] | None = None) -> int:
    """Switches every `nn.Linear` of `model` on the CPU whose dtype is one of `dtypes` to `PrepackedLinear`
    and packs its weight, in place. Layers that are already `PrepackedLinear` are packed again: call this
    after a change through ``weight.data``, which a packed layer does not see (PEFT merges adapters that
    way: lay a model out after merging, not before).

    Only the class changes (the modules stay `nn.Linear` instances with the same parameters, so PEFT and
    `state_dict` see them as before); each packed copy adds the weight's size in memory (for SmolLM2-135M
    about 270 MB in bf16, its LM head included; 425 MB in float32, without the LM head, which
    `lay_out_for_prediction` computes weight first instead). Layers inside PEFT adapter layers are left
    alone: merge an adapter first (``merge_adapter=True``). Where no dtype was measured faster this way,
    nothing changes.

    Args:
        model (`torch.nn.Module`): A model (or a layer) on the CPU, used for prediction.
        dtypes (`tuple[torch.dtype, ...]`, *optional*): The dtypes to pack; defaults to `packed_dtypes()`,
            those measured faster on this CPU (PyTorch must have oneDNN for any).

    Returns:
        `int`: the number of layers packed.
    """
    dtypes = packed_dtypes() if dtypes is None else dtypes
    if not (dtypes and _PACKING):
        return 0
    inside = _inside_adapters(model)
    packed = 0
    for module in model.modules():
        if type(module) not in (nn.Linear, PrepackedLinear) or id(module) in inside:
            continue
        weight = module.weight
        if weight.device.type != "cpu" or weight.dtype not in dtypes:
            continue
        module.__class__ = PrepackedLinear
        module._packed_dtype = weight.dtype
        module._pack()  # packs the detached weight: nothing for autograd to record
        packed += 1
    return packed


def lay_out_for_prediction(model: nn.Module, *, prepack: bool) -> None:
    """Lays out `model`'s linear layers for few-row products on this CPU, as measured fastest (see the module
    docstring): where PyTorch dispatches to AVX-512, float32 weights column-major; to AVX2, a weight-first
    float32 LM head; on other CPUs (ARM, not measured) float32 layers stay as they are. With `prepack`, the
    weights of each dtype in `packed_dtypes` are prepacked for oneDNN (bf16 where the CPU computes it
    natively, float32 with AVX2): a second copy of them. Layers on another device are left alone.

    The CPU class is PyTorch's dispatch capability, which the ``ATEN_CPU_CAPABILITY`` environment variable
    can lower (say to ``avx2`` on an AVX-512 CPU). The float32 LM head is not packed even where packing
    ran faster for it (1.26-1.36x the weight-first product for 3-8 rows in the committed reports): its copy
    would add 113 MB to the 425 MB of the decoder's, for a few milliseconds per message.

    Args:
        model (`torch.nn.Module`): A model used for prediction.
        prepack (`bool`): Whether to prepack weights (`use_prepacked_weights`).
    """
    capability = cpu_capability()
    if capability == "AVX512":
        use_column_major_weights(model)
    elif capability == "AVX2":
        use_weight_first_head(model)  # before packing, which leaves the switched head alone
    if prepack:
        use_prepacked_weights(model)
