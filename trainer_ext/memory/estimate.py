"""Peak memory of training a causal LM, estimated from its config alone (no weights are read).

`estimate_memory` splits the peak of one training step into five parts:

- **weights**: the base model. 8-bit (LLM.int8) linear layers take 1 byte per weight plus one fp32 scale
  per output row; 4-bit (NF4, double quantization, blocks of 64) half a byte plus the block scales. The
  token embedding, the norms, the biases and the output layer are never quantized. A quantized model
  trained in float16 is prepared by PEFT, which upcasts those non-quantized weights to fp32 (and the
  activations follow them); in bfloat16 they stay bf16. That is what
  `trainer_ext.modeling.methods.apply_method` does.
- **adapters**: the LoRA matrices (fp32), on the targets `trainer_ext.modeling.methods` picks: every linear
layer of
  the blocks, the input embedding and an untied output layer for `lora-all`; the attention projections
  for `lora-attention`.
- **optimizer states**: two moments per trained weight; 32-bit AdamW keeps them in the weight's dtype,
  bitsandbytes' 8-bit Adam in 1 byte each plus one fp32 scale per block of 256 (tensors under 4096
  elements stay 32-bit).
- **gradients**: one per trained weight, in its dtype. They are counted as alive with the activations (as
  with gradient accumulation), so the total is an upper bound for `full` training.
- **activations**: what autograd keeps from the forward pass for the backward pass, per block and per
  token, from the layer types of the architecture (`trainer_ext.memory.shapes`), plus the peak of the loss
  over the logits (the log-softmax, its gradient and the logits' gradient in fp32) or of one block's
  backward (dequantized weight and activation gradients), whichever is larger.

Fused attention kernels (SDPA) are assumed where the architecture uses them; GPT-J's own attention keeps
its probabilities. Not counted: the CUDA context and the allocator's cache (see `MemoryEstimate.fits`), and
buffers such as rotary tables. `benchmarks/memory.py` compares the estimate with measured peaks.

>>> estimate = estimate_memory("gpt-j-6b", quantization="none", method="none", dtype="float16")
>>> round(estimate.weights / 1e9, 1)
12.1
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trainer_ext.memory.configs import GB, GIB, EstimateError, format_size, load_model_config
from trainer_ext.memory.parts import (
    ActivationOptions,
    activation_bytes,
    optimizer_bytes,
    trained_tensors,
    weight_bytes,
)
from trainer_ext.memory.shapes import model_shape
from trainer_ext.vocabulary import (
    DTYPE_NAMES,
    METHODS,
    QUANTIZATIONS,
    choice_error,
    method_quantization_error,
)
from trainer_ext.vocabulary import OPTIMIZER_STATES as OPTIMIZERS

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
# CUDA context, cuBLAS workspace and allocator slack that a GPU needs beside the tensors counted here.
CUDA_RESERVE_BYTES = 1 * GIB


@dataclass
class MemoryEstimate:
    """Estimated peak memory of a training step, in bytes, split into parts.

    Args:
        model (`str`): The model's name or type.
        quantization, method, optimizer, dtype (`str`): The options estimated.
        seq_len, batch_size, lora_r (`int`): Tokens per example, examples per step, LoRA rank.
        gradient_checkpointing (`bool`): Whether activations are recomputed in the backward pass.
        num_params, trainable_params (`int`): Parameters of the model, and those trained.
        weights, adapters, optimizer_states, gradients, activations (`int`): The parts, in bytes.
    """

    model: str
    quantization: str
    method: str
    optimizer: str
    dtype: str
    seq_len: int
    batch_size: int
    lora_r: int
    gradient_checkpointing: bool
    num_params: int
    trainable_params: int
    weights: int
    adapters: int
    optimizer_states: int
    gradients: int
    activations: int

    PARTS = ("weights", "adapters", "optimizer_states", "gradients", "activations")

    @property
    def total(self) -> int:
        """Sum of the parts, in bytes."""
        return sum(getattr(self, part) for part in self.PARTS)

    def fits(self, gpu_bytes: int, reserve: int = CUDA_RESERVE_BYTES) -> bool:
        """Whether the step fits a device of `gpu_bytes`, keeping `reserve` bytes for the CUDA context."""
        return self.total + reserve <= gpu_bytes

    def to_dict(self) -> dict:
        """The fields and the total, JSON-ready."""
        return {**asdict(self), "total": self.total}

    def format(self, gpu_bytes: int | None = None) -> str:
        """A table of the parts in GB (10^9 bytes) and GiB (2^30 bytes), and the verdict for `gpu_bytes`."""
        title = (
            f"{self.model}: {self.quantization}, {self.method}, {self.optimizer}, seq_len {self.seq_len}, "
            f"batch {self.batch_size}"
            + (f", LoRA r={self.lora_r}" if self.method.startswith("lora") else "")
            + (", gradient checkpointing" if self.gradient_checkpointing else "")
        )
        rows = [(part.replace("_", " "), getattr(self, part)) for part in self.PARTS] + [
            ("total", self.total)
        ]
        lines = [
            title,
            f"parameters: {self.num_params:,} ({self.trainable_params:,} trained); dtype {self.dtype}",
            f"{'part':<18}{'GB':>10}{'GiB':>10}",
        ]
        lines += [f"{name:<18}{value / GB:>10.3f}{value / GIB:>10.3f}" for name, value in rows]
        if gpu_bytes is not None:
            verdict = "fits" if self.fits(gpu_bytes) else "does NOT fit"
            lines.append(
                f"{verdict} in {format_size(gpu_bytes)} "
                f"(keeping {format_size(CUDA_RESERVE_BYTES)} for the CUDA context and allocator)"
            )
        return "\n".join(lines)


def _resolve_dtype(
    dtype: str, quantization: str, method: str, device: str, kbit_upcast: bool | None
) -> tuple[str, int, int]:
    """dtype name, bytes per non-quantized weight, bytes per activation (as `trainer_ext.modeling.loading`
    picks)."""
    if dtype == "auto":
        if quantization == "none" and method in ("full", "norms"):
            name = "float32"
        elif device == "cpu":  # depends on this machine's CPU (native bf16 or not)
            from trainer_ext.modeling.loading import resolve_dtype

            name = str(resolve_dtype("auto", quantization, "cpu", method)).removeprefix("torch.")
        else:
            name = "bfloat16"  # bf16 or fp16 on a GPU: the same size
    elif dtype in DTYPE_NAMES:  # "auto" is handled above
        name = DTYPE_NAMES[dtype]
    else:
        raise EstimateError(
            f"dtype: unknown value {dtype!r}; choose auto or one of {', '.join(DTYPE_NAMES)}."
        )
    if kbit_upcast is None:
        kbit_upcast = (
            name == "float16"
        )  # as trainer_ext.modeling.methods: bf16 has fp32's range and needs no upcast
    if quantization != "none" and method != "none" and kbit_upcast:
        # PEFT's prepare_model_for_kbit_training upcasts every non-quantized weight to fp32: the embeddings,
        # norms and output layer, and with them the activations.
        return name, 4, 4
    return name, DTYPE_BYTES[name], DTYPE_BYTES[name]


def _check_options(
    quantization: str, method: str, optimizer: str, device: str, lora_dropout: float, **positive: int
) -> None:
    for option, value, allowed in (
        ("quantization", quantization, QUANTIZATIONS),
        ("method", method, METHODS),
        ("optimizer", optimizer, tuple(OPTIMIZERS)),
        ("device", device, ("cuda", "cpu")),
    ):
        error = choice_error(option, value, allowed)
        if error:
            raise EstimateError(error)
    if not 0 <= lora_dropout < 1:
        raise EstimateError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}.")
    for option, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EstimateError(f"{option} must be a positive integer, got {value!r}.")
    error = method_quantization_error(method, quantization)
    if error:
        raise EstimateError(error)


def estimate_memory(
    config_or_name: Any,
    quantization: str = "8bit",
    method: str = "lora-all",
    seq_len: int = 128,
    batch_size: int = 2,
    lora_r: int = 8,
    optimizer: str = "adamw_8bit",
    gradient_checkpointing: bool = False,
    dtype: str = "auto",
    lora_dropout: float = 0.05,
    device: str = "cuda",
    kbit_upcast: bool | None = None,
    loss_tokens: int | None = None,
) -> MemoryEstimate:
    """Estimate the peak memory of one training step from a model config (see the module docstring).

    Args:
        config_or_name (`str`, `dict` or `PretrainedConfig`): A shipped model name, a local ``config.json`` or
            model directory, a Hub id (needs the network), or a config (see `load_model_config`).
        quantization (`str`, *optional*, defaults to `"8bit"`): ``"8bit"``, ``"4bit"`` or ``"none"``.
        method (`str`, *optional*, defaults to `"lora-all"`): A method of `trainer_ext.modeling.methods`.
        seq_len (`int`, *optional*, defaults to 128): Tokens per example (padded length).
        batch_size (`int`, *optional*, defaults to 2): Examples per step.
        lora_r (`int`, *optional*, defaults to 8): LoRA rank.
        optimizer (`str`, *optional*, defaults to `"adamw_8bit"`): A key of `OPTIMIZERS`.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`): Recompute activations in backward.
        dtype (`str`, *optional*, defaults to `"auto"`): dtype of the non-quantized weights, as for
            `trainer_ext.modeling.loading.load_model`; ``"auto"`` picks what it picks on `device` (bfloat16
            on a
            GPU; pass ``"float16"`` for GPUs without bf16, such as the 11 GB GTX 1080 Ti or RTX 2080 Ti).
        lora_dropout (`float`, *optional*, defaults to 0.05): LoRA dropout (its masks are kept).
        device (`str`, *optional*, defaults to `"cuda"`): ``"cuda"`` or ``"cpu"`` (dropout masks and the
            ``"auto"`` dtype differ).
        kbit_upcast (`bool`, *optional*): Whether a quantized model that is trained has its non-quantized
            weights (and so its activations) upcast to fp32 by PEFT's `prepare_model_for_kbit_training`.
            Defaults to what `trainer_ext.modeling.methods` does: upcast in float16, not in bfloat16.
        loss_tokens (`int`, *optional*): Tokens per example whose logits are computed: the completion
            (label) tokens with `trainer_ext.training.trainer.LabelTrainer`, which computes no other
            logits. Defaults
            to every position, as a plain causal-LM loss does (an upper bound for `LabelTrainer`).

    Returns:
        `MemoryEstimate`: The parts in bytes.

    Raises:
        `EstimateError`: For a config that cannot be found or read, or an unknown option.
    """
    lengths = dict(seq_len=seq_len, batch_size=batch_size, lora_r=lora_r)
    if loss_tokens is not None:
        lengths["loss_tokens"] = loss_tokens
    _check_options(quantization, method, optimizer, device, lora_dropout, **lengths)
    config = load_model_config(config_or_name)
    try:
        shape = model_shape(config)
    except ValueError as error:
        raise EstimateError(str(error)) from error
    dtype_name, itemsize, compute_bytes = _resolve_dtype(dtype, quantization, method, device, kbit_upcast)
    tensors = trained_tensors(shape, method, lora_r, itemsize)
    options = ActivationOptions(
        compute_bytes=compute_bytes,
        quantization=quantization,
        device=device,
        method=method,
        lora_rank=lora_r,
        lora_dropout=lora_dropout,
        seq_len=seq_len,
        gradient_checkpointing=gradient_checkpointing,
    )
    name = (
        config_or_name
        if isinstance(config_or_name, str)
        else getattr(config, "name_or_path", "") or shape.model_type
    )
    return MemoryEstimate(
        model=name,
        quantization=quantization,
        method=method,
        optimizer=optimizer,
        dtype=dtype_name if compute_bytes == DTYPE_BYTES[dtype_name] else f"{dtype_name} (upcast to float32)",
        seq_len=seq_len,
        batch_size=batch_size,
        lora_r=lora_r,
        gradient_checkpointing=gradient_checkpointing,
        num_params=shape.num_params,
        trainable_params=sum(t.numel for t in tensors),
        weights=weight_bytes(shape, quantization, itemsize),
        adapters=sum(t.nbytes for t in tensors if t.adapter),
        optimizer_states=optimizer_bytes(tensors, OPTIMIZERS[optimizer]),
        gradients=sum(t.nbytes for t in tensors),
        activations=activation_bytes(
            shape, seq_len * batch_size, options, None if loss_tokens is None else loss_tokens * batch_size
        ),
    )
