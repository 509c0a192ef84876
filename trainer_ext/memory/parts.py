"""Byte arithmetic of the memory estimator: weights, trained tensors, optimizer states, activations.

Pure functions of a `ModelShape` and the training options; `trainer_ext.memory.estimate.estimate_memory` adds
them up. Each rule mirrors what the libraries do at run time; the comments say which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer_ext.memory.shapes import ACTIVATION_SAVED, LinearShape, ModelShape

ADAPTER_BYTES = 4  # PEFT keeps LoRA weights in fp32 (it upcasts fp16/bf16 adapters)
_BNB_BLOCK, _BNB_MIN_8BIT = 256, 4096  # bitsandbytes 8-bit optimizers: block size, smallest 8-bit tensor
_NF4_BLOCK, _NF4_NESTED_BLOCK = 64, 256  # bitsandbytes NF4: weights per scale, scales per nested scale
_NF4_CODES = (16 + 256 + 1) * 4  # per layer, fp32: NF4 code book, nested 8-bit code book, nested offset


@dataclass(frozen=True)
class TrainedTensor:
    """A trained tensor: its element count, bytes per element, and whether it is a LoRA adapter."""

    numel: int
    itemsize: int
    adapter: bool = False

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


def lora_targets(shape: ModelShape, method: str) -> tuple[LinearShape, ...]:
    """The block linear layers `trainer_ext.modeling.methods` gives adapters for a LoRA method."""
    if method == "lora-all":
        return shape.linears
    if method == "lora-attention":
        return tuple(linear for linear in shape.linears if linear.attention)
    return ()


def _quantized_linear_bytes(linear: LinearShape, quantization: str, itemsize: int) -> int:
    weights = linear.in_features * linear.out_features
    bias = linear.out_features * itemsize if linear.bias else 0
    if quantization == "8bit":  # int8 weights + one fp32 scale per output row (SCB)
        return weights + 4 * linear.out_features + bias
    if quantization == "4bit":
        # two weights a byte + an 8-bit scale per block + fp32 scales of those scales (double quantization)
        blocks = math.ceil(weights / _NF4_BLOCK)
        return math.ceil(weights / 2) + blocks + 4 * math.ceil(blocks / _NF4_NESTED_BLOCK) + _NF4_CODES + bias
    return linear.num_params * itemsize


def weight_bytes(shape: ModelShape, quantization: str, itemsize: int) -> int:
    """Bytes of the base weights: quantized linear layers, everything else at `itemsize` bytes."""
    quantized = shape.num_layers * sum(
        _quantized_linear_bytes(lin, quantization, itemsize) for lin in shape.linears
    )
    quantized += sum(
        _quantized_linear_bytes(linear, quantization, itemsize) for linear in shape.outer_linears
    )
    rest = (
        shape.num_layers * shape.block_norm_params
        + shape.embedding_params
        + shape.position_params
        + shape.final_norm_params
        + shape.output_params
    )
    return quantized + rest * itemsize


def _norm_tensors(params: int, count: int, norm: str, itemsize: int) -> list[TrainedTensor]:
    """The tensors of `count` norms of `params` parameters: weight and bias, or a weight alone (RMSNorm)."""
    if not params:
        return []
    tensors = count * (2 if norm == "layernorm" else 1)
    return [TrainedTensor(params // tensors, itemsize)] * tensors


def _all_tensors(shape: ModelShape, itemsize: int) -> list[TrainedTensor]:
    block = [TrainedTensor(lin.in_features * lin.out_features, itemsize) for lin in shape.linears]
    block += [TrainedTensor(lin.out_features, itemsize) for lin in shape.linears if lin.bias]
    block += _norm_tensors(shape.block_norm_params, shape.norms_per_block, shape.norm, itemsize)
    tensors = block * shape.num_layers + [TrainedTensor(shape.embedding_params, itemsize)]
    tensors += [TrainedTensor(n, itemsize) for n in (shape.position_params, shape.output_params) if n]
    tensors += [TrainedTensor(lin.num_params, itemsize) for lin in shape.outer_linears]
    return tensors + _norm_tensors(shape.final_norm_params, 1, shape.norm, itemsize)


def _lora_tensors(shape: ModelShape, method: str, rank: int) -> list[TrainedTensor]:
    def pair(n_in: int, n_out: int) -> list[TrainedTensor]:
        return [
            TrainedTensor(rank * n_in, ADAPTER_BYTES, True),
            TrainedTensor(n_out * rank, ADAPTER_BYTES, True),
        ]

    tensors = [t for lin in lora_targets(shape, method) for t in pair(lin.in_features, lin.out_features)]
    tensors *= shape.num_layers
    if method == "lora-all":  # `methods.lora_targets` adds the input embedding and an untied output layer
        embedding_dim = shape.embedding_params // shape.vocab_size
        tensors += pair(shape.vocab_size, embedding_dim)
        if not shape.tied:
            tensors += pair(embedding_dim, shape.vocab_size)
    return tensors


def trained_tensors(shape: ModelShape, method: str, rank: int, itemsize: int) -> list[TrainedTensor]:
    """The tensors a method trains (LoRA adapters in fp32, base weights at `itemsize` bytes)."""
    if method in ("lora-all", "lora-attention"):
        return _lora_tensors(shape, method, rank)
    if method == "norms":
        tensors = _norm_tensors(shape.block_norm_params, shape.norms_per_block, shape.norm, itemsize)
        return tensors * shape.num_layers + _norm_tensors(shape.final_norm_params, 1, shape.norm, itemsize)
    if method == "full":
        return _all_tensors(shape, itemsize)
    return []


def optimizer_bytes(tensors: list[TrainedTensor], kind: str) -> int:
    """Bytes of the optimizer states: ``"adamw"`` (32-bit), ``"adam8bit"`` (bitsandbytes) or ``"sgd"``."""
    if kind == "sgd":
        return 0
    if kind == "adamw":  # torch: exp_avg and exp_avg_sq are zeros_like(param)
        return sum(2 * t.nbytes for t in tensors)
    total = 0
    for t in tensors:  # bitsandbytes: uint8 states + an fp32 absmax per block; small tensors stay fp32
        small = t.numel < _BNB_MIN_8BIT
        total += 2 * (4 * t.numel if small else t.numel + 4 * math.ceil(t.numel / _BNB_BLOCK))
    return total


@dataclass(frozen=True)
class ActivationOptions:
    """What decides the activations besides the shapes.

    Args:
        compute_bytes (`int`): Bytes per element of the activations (4 for fp32, 2 for bf16/fp16).
        quantization (`str`): ``"8bit"``, ``"4bit"`` or ``"none"``.
        device (`str`): ``"cuda"``: 8-bit layers run bitsandbytes' LLM.int8 matmul, which keeps its input for
            the backward pass; ``"cpu"``: they run `trainer_ext.modeling.int8_cpu`'s weight-only int8
            matmul, which
            does not (neither do 4-bit layers).
        method (`str`): The training method.
        lora_rank (`int`): LoRA rank.
        lora_dropout (`float`): Dropout on the LoRA input (its mask and output are kept).
        seq_len (`int`): Tokens per example.
        gradient_checkpointing (`bool`): Keep only block inputs, recompute the rest in the backward pass.
    """

    compute_bytes: int
    quantization: str
    device: str
    method: str
    lora_rank: int
    lora_dropout: float
    seq_len: int
    gradient_checkpointing: bool


def _mask_bytes(o: ActivationOptions, input_bytes: int) -> int:
    """Bytes per element of a dropout mask: CUDA keeps a bool mask, the CPU one in the dtype of the input."""
    return 1 if o.device == "cuda" else input_bytes


def _norm_saved(shape: ModelShape, e: int) -> int:
    h = shape.hidden_size
    # Llama's RMSNorm computes in fp32 and keeps that copy and 1/rms; LayerNorm keeps input, mean and 1/std.
    return 4 * h + 4 if shape.norm == "rmsnorm" else e * h + 8


def _lora_input_saved(width: int, o: ActivationOptions) -> int:
    """Per token, what one LoRA adapter keeps of its input: the dropout mask and output, or an fp32 copy."""
    if o.lora_dropout > 0:
        # PEFT casts the input to the adapter dtype (fp32) before the dropout
        return (_mask_bytes(o, ADAPTER_BYTES) + ADAPTER_BYTES) * width + ADAPTER_BYTES * o.lora_rank
    copy = ADAPTER_BYTES * width if o.compute_bytes != ADAPTER_BYTES else 0
    return copy + ADAPTER_BYTES * o.lora_rank


def _int8_keeps_inputs(o: ActivationOptions) -> bool:
    return o.quantization == "8bit" and o.device == "cuda"


def _linear_inputs_saved(shape: ModelShape, o: ActivationOptions) -> int:
    e, targets = o.compute_bytes, {lin.name for lin in lora_targets(shape, o.method)}
    total = 0
    for group in dict.fromkeys(lin.group for lin in shape.linears):
        width = shape.group_width(group)
        adapted = [lin for lin in shape.linears if lin.group == group and lin.name in targets]
        keep = (
            _int8_keeps_inputs(o)  # bitsandbytes' int8 matmul keeps its input A
            or o.method == "full"  # a trained weight needs its input
            or (group == "mlp_mid" and shape.activation == "relu")  # ReLU keeps its output
            or (bool(adapted) and o.lora_dropout == 0 and e == ADAPTER_BYTES)  # LoRA A reads the input itself
        )
        total += e * width * keep + sum(_lora_input_saved(width, o) for _ in adapted)
    return total


def _attention_saved(shape: ModelShape, o: ActivationOptions) -> int:
    e, h, heads, seq = o.compute_bytes, shape.hidden_size, shape.num_heads, o.seq_len
    if shape.eager_attention:
        # GPT-J: fp32 query and key, fp32 softmax output (and its cast back), value.
        return 8 * h + heads * seq * (4 + (e if e != 4 else 0)) + e * h
    # SDPA keeps query, key, value, its output and the log-sum-exp, and the padding mask as a float bias.
    return e * (shape.attention_saved_width + shape.group_width("attn_out") + seq) + 4 * heads


def block_activation_bytes(shape: ModelShape, o: ActivationOptions) -> int:
    """Bytes autograd keeps per token in one decoder block during training."""
    e, inner = o.compute_bytes, shape.intermediate_size
    total = shape.norm_inputs * _norm_saved(shape, e)
    if o.method in ("norms", "full") and shape.norm == "rmsnorm":  # the norm weight's gradient needs x / rms
        total += shape.norms_per_block * e * shape.hidden_size
    total += _attention_saved(shape, o)
    total += (3 if shape.gated_mlp else ACTIVATION_SAVED[shape.activation]) * e * inner
    total += _linear_inputs_saved(shape, o)
    return total + shape.block_dropouts * _mask_bytes(o, e) * shape.hidden_size


def _head_saved(shape: ModelShape, o: ActivationOptions, tokens: int, logit_rows: int) -> int:
    """What the embedding, final norm and output layer keep; the output layer only sees the logit rows."""
    h, e = shape.hidden_size, o.compute_bytes
    per_token = _norm_saved(shape, e) + 8 + shape.embedding_dropout * _mask_bytes(o, e) * h  # + int64 ids
    per_row = 0
    if o.method == "lora-all":
        per_token += ADAPTER_BYTES * o.lora_rank  # embedding adapter: the (tokens, r) lookup
        if not shape.tied:
            keep = o.lora_dropout == 0 and e == ADAPTER_BYTES
            per_row = e * h * keep + _lora_input_saved(h, o)
    elif o.method == "full":
        per_row = e * h
    return tokens * per_token + logit_rows * per_row


def _largest_linear(shape: ModelShape) -> int:
    return max(lin.in_features * lin.out_features for lin in shape.linears)


def activation_bytes(
    shape: ModelShape, tokens: int, o: ActivationOptions, logit_rows: int | None = None
) -> int:
    """Peak activation bytes of a training step over `tokens` tokens (batch size x sequence length).

    What the blocks and the head keep, plus the larger of two peaks that come on top: the logits and the
    loss (log-softmax output, its gradient and the logits' gradient, fp32) and one block's backward
    (gradients of its activations, and the dequantized weight of a quantized layer). `logit_rows` is the
    number of positions whose logits are computed: all `tokens` for a plain causal-LM loss (the default),
    the completion tokens for `trainer_ext.training.trainer.completion_loss`.
    """
    e, inner = o.compute_bytes, shape.intermediate_size
    logit_rows = tokens if logit_rows is None else logit_rows
    if o.method == "none":  # inference: nothing is kept, the logits and one block's tensors are the peak
        return logit_rows * e * shape.vocab_size + tokens * 2 * e * max(inner, shape.attention_saved_width)
    per_block = block_activation_bytes(shape, o)
    recomputed = 0
    if o.gradient_checkpointing:
        # Checkpointing keeps each block's input and recomputes one block at a time in the backward pass.
        # bitsandbytes' int8 matmul keeps its input as an attribute of its autograd context, out of
        # checkpointing's reach, so the inputs of 8-bit layers stay for every block (measured on GPT-J-6B).
        kept = e * shape.hidden_size
        if _int8_keeps_inputs(o):
            groups = dict.fromkeys(lin.group for lin in shape.linears)
            kept += sum(e * shape.group_width(group) for group in groups)
        blocks, recomputed = shape.num_layers * kept, per_block * tokens
    else:
        blocks = shape.num_layers * per_block
    loss_peak = 12 * shape.vocab_size * logit_rows
    if o.method == "lora-all" and not shape.tied and e != ADAPTER_BYTES:
        # The output layer's adapter adds an fp32 update to e-byte logits: the base logits, the update, the
        # update promoted and the fp32 sum are alive together (measured: CPU and CUDA), before the loss.
        loss_peak = (e + 12) * shape.vocab_size * logit_rows
    dequantized = _largest_linear(shape) * e if o.quantization != "none" else 0
    block_peak = recomputed + 2 * e * (inner + shape.hidden_size) * tokens + dequantized
    return tokens * blocks + _head_saved(shape, o, tokens, logit_rows) + max(loss_peak, block_peak)
