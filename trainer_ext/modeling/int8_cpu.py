"""Fast 8-bit linear layers on the CPU.

bitsandbytes stores an 8-bit layer as int8 weights with one absmax scale per output row (``CB``,
``SCB``) and runs LLM.int8(): activations quantized to int8, outlier columns split off in float16.
On a CPU this is slow for training: the outlier part and the backward pass run float16 matmuls,
and CPUs have no fast float16 path (a SmolLM2-135M LoRA step measured 10-20x slower than bf16).

On the CPU we therefore keep bitsandbytes' int8 storage (same ``Linear8bitLt`` modules, same memory)
and compute each matmul as *weight-only* int8, in one of two ways:

- PyTorch's weight-only int8 kernel (``aten::_weight_int8pack_mm``), which takes the int8 rows and one
  scale per output row, exactly bitsandbytes' layout (scale = ``SCB / 127``), and never materializes a
  floating-point weight. It is used in the forward pass for bf16 activations on x86 CPUs when the shape
  suits it and it is the faster path: up to 2,048 rows without native bf16, up to 32 rows with it (see
  `KERNEL_MAX_ROWS` and `_int8_kernel_fits`);
- otherwise, while the activations have fewer rows than the weight has columns (one message, a
  training batch of a few hundred tokens), the int8 rows are converted to the activation dtype as they are
  (int8 values are exact in bf16), multiplied, and the row scales applied to the product's columns instead
  of to the weight: ``x @ (diag(s) Q).T = (x @ Q.T) diag(s)``. That multiplies ``rows x out`` values
  instead of ``out x in`` and skips a weight-sized buffer;
- with more rows, or for float16 activations (whose range an unscaled int8 product can overflow), the
  weight is dequantized row-scale by row-scale right before a regular matmul and dropped right after.

Over SmolLM2-135M's 210 decoder products on a 2-core AMD EPYC with native bf16, forward pass
(``python -m benchmarks.int8_matmul``, docs/benchmarks/int8_matmul_epyc.md), these paths took
64.1 ms for one 28-token message against 73.5 ms dequantizing first and 33.2 ms with bf16
weights; 12.8 ms for one step of generation (one row) against 61.4 and 18.1. On training batches
(512 and 2,048 rows) the int8 ways were about even: the layer's own choice and the same dequantize
path timed as the reference differed by up to 7% at 2,048 rows, and the layer took 1.14-1.23x the time
of bf16 weights. Parity with bf16 weights beyond a few rows would need oneDNN's blocked bf16 matmul to
read int8 weights; PyTorch 2.13's CPU build exposes no such operator, and its int8 kernel, which does
convert inside, is the slower one there above about 32 rows.

The backward pass (``grad_input = grad_output @ W``; the int8 weight itself gets no gradient) converts the
int8 rows again instead of keeping a floating-point copy, with the row scales on ``grad_output`` or on the
weight by the same rule (the kernel has no transposed form). The activations are never quantized, so the
result is at least as accurate as LLM.int8(). CUDA layers are left untouched.

>>> import torch, bitsandbytes as bnb
>>> layer = bnb.nn.Linear8bitLt(4, 3, bias=False, has_fp16_weights=False)
>>> layer.weight = bnb.nn.Int8Params(torch.eye(3, 4), requires_grad=False, has_fp16_weights=False)
>>> layer = layer.to("cpu")
>>> use_weight_only_int8(layer)
1
>>> layer(torch.ones(1, 4)).round().tolist()
[[1.0, 1.0, 1.0]]
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer_ext.modeling.cpu_features import cpu_supports_bf16

logger = logging.getLogger(__name__)

try:  # one availability guard for the optional backend
    import bitsandbytes as bnb

    _Linear8bitLt = bnb.nn.Linear8bitLt
except ImportError:  # pragma: no cover - bitsandbytes is a hard dependency, kept optional here
    bnb = None
    _Linear8bitLt = None


# One availability guard for the kernel: it is vectorized (AVX2 / AVX-512) for bf16 on x86 only; elsewhere,
# and for fp16 / fp32 activations, it runs a scalar loop far slower than dequantize + matmul.
_INT8_KERNEL = (
    getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    else None
)
# Up to how many rows the kernel's forward pass is used, from `python -m benchmarks.int8_matmul`
# on SmolLM2-135M's shapes. On a 2-core AVX-512 CPU without native bf16 (docs/benchmarks/int8_matmul.md) it
# beat dequantize + a BLAS matmul from 40 to 2,048 rows (more rows and the scaled product were not measured
# there). Where the CPU multiplies bf16 natively (AVX-512 BF16, AMX), oneDNN's bf16 matmul on the converted
# rows wins on batches: on a 2-core AMD EPYC (docs/benchmarks/int8_matmul_epyc.md) the kernel's forward pass
# took 1.8-2.7x as long as dequantize + matmul per layer at 512 and 2,048 rows (2.2x and 2.5x summed over the
# model), less time than the other paths summed over the model at 1, 16 and 28 rows and more at 40 (per
# layer the crossover varies). 32 rows, between the two, was not measured. Those few rows are one message's
# own tokens after a cached prefix, and every step of generation.
KERNEL_MAX_ROWS_WITHOUT_NATIVE_BF16 = 2048
KERNEL_MAX_ROWS_WITH_NATIVE_BF16 = 32
KERNEL_MAX_ROWS = (
    KERNEL_MAX_ROWS_WITH_NATIVE_BF16 if cpu_supports_bf16() else KERNEL_MAX_ROWS_WITHOUT_NATIVE_BF16
)
# It reads 16 values of a row at a time with aligned loads (32 bytes of bf16, 16 bytes of int8).
_KERNEL_K_MULTIPLE = 16
_KERNEL_ALIGNMENT = 32


def _row_scales(row_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``SCB / 127`` in `dtype`, shape `(out,)`: the factors that turn the int8 rows back into weights."""
    return (row_scale.to(torch.float32) / 127.0).to(dtype)


def dequantize_rows(int8_weight: torch.Tensor, row_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turns bitsandbytes' row-wise int8 weights back into floating point.

    Args:
        int8_weight (`torch.Tensor` of dtype int8, shape `(out, in)`): the quantized weight (``CB``).
        row_scale (`torch.Tensor`, shape `(out,)`): the absmax of each row (``SCB``).
        dtype (`torch.dtype`): the dtype of the result.

    Returns:
        `torch.Tensor` of shape `(out, in)`: ``int8_weight * row_scale / 127`` in `dtype`.
    """
    # int8 values are exact in bf16 (8 significant bits), so only the scale rounds.
    return int8_weight.to(dtype) * _row_scales(row_scale, dtype).unsqueeze(1)


def _scales_the_product(dtype: torch.dtype, rows: int, in_features: int) -> bool:
    """Whether a product of `rows` rows in `dtype` takes the row scales after the matmul, not before.

    Scaling the product multiplies ``rows x out`` values, scaling the weight ``out x in``: the product is
    scaled while it has fewer rows than the weight has columns. Only bf16 and float32 hold ``x @ Q.T``
    (int8 values up to 127) without overflow; float16 (largest value 65,504) may not.
    """
    return dtype in (torch.bfloat16, torch.float32) and rows < in_features


def _int8_kernel_fits(x: torch.Tensor, int8_weight: torch.Tensor) -> bool:
    """Whether the forward matmul of `x` with `int8_weight` runs on `aten::_weight_int8pack_mm`.

    The kernel must be able to compute it (outside these conditions it reads past the rows, giving wrong
    results, or faults) and should be the faster path.

    Args:
        x (`torch.Tensor`, shape `(..., in)`): the activations.
        int8_weight (`torch.Tensor` of dtype int8, shape `(out, in)`): the quantized weight.

    Returns:
        `bool`: True for bf16, contiguous, aligned `x` and `int8_weight` with `in` a multiple of 16 and at
        most `KERNEL_MAX_ROWS` rows of `x` (which depends on whether the CPU multiplies bf16 natively).
    """
    in_features = x.shape[-1]
    rows = x.numel() // in_features if in_features else 0
    return (
        _INT8_KERNEL is not None
        and x.dtype == torch.bfloat16
        and in_features % _KERNEL_K_MULTIPLE == 0
        and 0 < rows <= KERNEL_MAX_ROWS
        and x.is_contiguous()
        and int8_weight.is_contiguous()
        and x.data_ptr() % _KERNEL_ALIGNMENT == 0
        and int8_weight.data_ptr() % _KERNEL_ALIGNMENT == 0
    )


class _WeightOnlyInt8Matmul(torch.autograd.Function):
    """``x @ dequant(W).T + b`` for 2-D `x` `(rows, in)`, keeping only the int8 weight for the backward
    pass, no float copy.

    `forward_path` is ``"kernel"`` (``_weight_int8pack_mm``, only where `_int8_kernel_fits`), ``"scaled"``
    (the row scales multiply the product) or ``"dequantize"`` (they multiply the weight); `scaled_backward`
    whether the backward pass scales the output gradient rather than the weight. `matmul_paths` picks both.
    """

    @staticmethod
    def forward(ctx, x, int8_weight, row_scale, bias, forward_path, scaled_backward):
        # x is 2-D so that the result is a fresh tensor, never a view made inside this Function.
        ctx.save_for_backward(int8_weight, row_scale)
        ctx.scaled_backward = scaled_backward
        bias = None if bias is None else bias.to(x.dtype)
        if forward_path == "kernel":
            out = _INT8_KERNEL(x, int8_weight, _row_scales(row_scale, x.dtype))  # (rows, out)
        elif forward_path == "scaled":
            out = F.linear(x, int8_weight.to(x.dtype))  # (rows, out), before the row scales
            out = out.mul_(_row_scales(row_scale, x.dtype))
        else:
            return F.linear(x, dequantize_rows(int8_weight, row_scale, x.dtype), bias)  # (rows, out)
        return out if bias is None else out.add_(bias)

    @staticmethod
    def backward(ctx, grad_out):
        int8_weight, row_scale = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[3]:  # a trainable bias (PEFT's bias="all"), grad_out is (rows, out)
            grad_bias = grad_out.sum(0)
        if ctx.needs_input_grad[0]:
            dtype = grad_out.dtype
            if ctx.scaled_backward:  # (grad_out diag(s)) @ Q
                grad_x = (grad_out * _row_scales(row_scale, dtype)) @ int8_weight.to(dtype)  # (rows, in)
            else:
                grad_x = grad_out @ dequantize_rows(int8_weight, row_scale, dtype)  # (rows, in)
        # The int8 weight and its scale are frozen in 8-bit training.
        return grad_x, None, None, grad_bias, None, None


def matmul_paths(x: torch.Tensor, int8_weight: torch.Tensor) -> tuple[str, bool]:
    """How the weight-only int8 matmul of `x` runs: the forward path and whether the backward is scaled.

    Args:
        x (`torch.Tensor`, shape `(..., in)`): the activations.
        int8_weight (`torch.Tensor` of dtype int8, shape `(out, in)`): the quantized weight.

    Returns:
        `tuple[str, bool]`: ``"kernel"`` where `_int8_kernel_fits`, else ``"scaled"`` for bf16 or float32
        activations with fewer rows than `in`, else ``"dequantize"``, for the forward pass (see
        `_WeightOnlyInt8Matmul`); and whether the backward pass applies the row scales to the output
        gradient (the same rule without the kernel).
    """
    in_features = x.shape[-1]
    scaled = _scales_the_product(x.dtype, x.numel() // in_features if in_features else 0, in_features)
    if _int8_kernel_fits(x, int8_weight):
        return "kernel", scaled
    return ("scaled" if scaled else "dequantize"), scaled


def weight_only_int8_linear(
    x: torch.Tensor,
    int8_weight: torch.Tensor,
    row_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    paths: tuple[str, bool] | None = None,
) -> torch.Tensor:
    """``x @ dequant(W).T + bias`` computed as weight-only int8, what `WeightOnlyInt8Linear` runs.

    Args:
        x (`torch.Tensor`, shape `(..., in)`): the activations.
        int8_weight (`torch.Tensor` of dtype int8, shape `(out, in)`): the quantized weight (``CB``).
        row_scale (`torch.Tensor`, shape `(out,)`): the absmax of each row (``SCB``).
        bias (`torch.Tensor`, shape `(out,)`, *optional*): added to the output.
        paths (`tuple[str, bool]`, *optional*): forces the paths (see `matmul_paths`, which picks them
            by default); the kernel path must fit (`_int8_kernel_fits`).

    Returns:
        `torch.Tensor` of shape `(..., out)` in the dtype of `x`.
    """
    forward_path, scaled_backward = matmul_paths(x, int8_weight) if paths is None else paths
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (rows, in); a view when x is contiguous
    out = _WeightOnlyInt8Matmul.apply(rows, int8_weight, row_scale, bias, forward_path, scaled_backward)
    return out.reshape(*x.shape[:-1], int8_weight.shape[0])  # (..., out)


if _Linear8bitLt is not None:

    class WeightOnlyInt8Linear(_Linear8bitLt):
        """A bitsandbytes ``Linear8bitLt`` whose matmul runs as weight-only int8 (see the module doc)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.device.type != "cpu":
                return super().forward(x)
            row_scale = self.weight.SCB if self.weight.SCB is not None else self.state.SCB
            return weight_only_int8_linear(x, self.weight.data, row_scale, self.bias)


def release_checkpoint_pages(model: nn.Module) -> int:
    """Copies the CPU weights of a quantized `model` that still live in the checkpoint's memory map.

    transformers maps the safetensors file into memory and keeps the tensors that need no conversion (bf16
    embeddings and norms of a bf16 checkpoint) as views of that map. The map then stays open, and with it
    every page of the file that quantization read: the pages of all the weights that are now int8 copies.
    Those pages count as the process's resident memory. Copying the few remaining floating-point tensors
    releases the map: the main job's resident memory after loading went from 1,206 to 875 MB in
    `python -m benchmarks.training_memory` (runs before and after this change). The `int8` weights
    themselves are fresh tensors and are left alone.

    Args:
        model (`torch.nn.Module`): A model loaded with 8-bit base weights on the CPU.

    Returns:
        `int`: the number of tensors copied.
    """
    copied = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.is_floating_point():
            tensor.data = tensor.data.clone()
            copied += 1
    return copied


def use_weight_only_int8(model: nn.Module) -> int:
    """Switches every CPU ``Linear8bitLt`` of `model` to the weight-only int8 matmul, in place.

    The modules keep their class hierarchy (they stay ``bnb.nn.Linear8bitLt`` instances, so PEFT still
    wraps them with its 8-bit LoRA layers) and their int8 storage; only ``forward`` changes.

    Args:
        model (`torch.nn.Module`): a model loaded with ``BitsAndBytesConfig(load_in_8bit=True)``, or a layer.

    Returns:
        `int`: the number of layers switched.
    """
    if _Linear8bitLt is None:
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is _Linear8bitLt and module.weight.device.type == "cpu":
            if module.weight.dtype != torch.int8:
                raise ValueError(
                    f"8-bit layer {module} holds {module.weight.dtype} weights, not int8; "
                    "load the model with BitsAndBytesConfig(load_in_8bit=True) before switching it."
                )
            module.__class__ = WeightOnlyInt8Linear
            switched += 1
    if switched:
        logger.info(
            "8-bit layers on the CPU: %d run as weight-only int8 matmuls in the activation dtype", switched
        )
    return switched
