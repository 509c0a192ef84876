"""Peak memory of training a causal LM, estimated from its config alone (no weights are read).

`estimate_memory` splits the peak of one training step into five parts:

- **weights**: the base model. 8-bit (LLM.int8) linear layers take 1 byte per weight plus one fp32 scale
  per output row; 4-bit (NF4, double quantization, blocks of 64) half a byte plus the block scales. The
  token embedding, the norms, the biases and the output layer are never quantized. A quantized model
  trained in float16 is prepared by PEFT, which upcasts those non-quantized weights to fp32 (and the
  activations follow them); in bfloat16 they stay bf16. That is what `trainer_ext.methods.apply_method` does.
- **adapters**: the LoRA matrices (fp32), on the targets `trainer_ext.methods` picks: every linear layer of
  the blocks, the input embedding and an untied output layer for `lora-all`; the attention projections
  for `lora-attention`.
- **optimizer states**: two moments per trained weight; 32-bit AdamW keeps them in the weight's dtype,
  bitsandbytes' 8-bit Adam in 1 byte each plus one fp32 scale per block of 256 (tensors under 4096
  elements stay 32-bit).
- **gradients**: one per trained weight, in its dtype. They are counted as alive with the activations (as
  with gradient accumulation), so the total is an upper bound for `full` training.
- **activations**: what autograd keeps from the forward pass for the backward pass, per block and per
  token, from the layer types of the architecture (`trainer_ext.model_shapes`), plus the peak of the loss
  over the logits (the log-softmax, its gradient and the logits' gradient in fp32) or of one block's
  backward (dequantized weight and activation gradients), whichever is larger.

Fused attention kernels (SDPA) are assumed where the architecture uses them; GPT-J's own attention keeps
its probabilities. Not counted: the CUDA context and the allocator's cache (see `MemoryEstimate.fits`), and
buffers such as rotary tables. `scripts/bench_memory.py` compares the estimate with measured peaks.

>>> estimate = estimate_memory("gpt-j-6b", quantization="none", method="none", dtype="float16")
>>> round(estimate.weights / 1e9, 1)
12.1
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .memory_parts import (
    ActivationOptions,
    activation_bytes,
    optimizer_bytes,
    trained_tensors,
    weight_bytes,
)
from .model_shapes import SUPPORTED_MODEL_TYPES, model_shape

GB, GIB = 10**9, 2**30
QUANTIZATIONS: tuple[str, ...] = ("8bit", "4bit", "none")
METHODS: tuple[str, ...] = ("lora-all", "lora-attention", "norms", "full", "none")
# Optimizer names (as `TrainingArguments.optim` spells them) -> how they store their two moments.
OPTIMIZERS: dict[str, str] = {
    **dict.fromkeys(("adamw_torch", "adamw_torch_fused", "adamw"), "adamw"),
    **dict.fromkeys(("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "adam8bit"), "adam8bit"),
    "sgd": "sgd",
}
DTYPE_NAMES: dict[str, str] = {
    **dict.fromkeys(("float32", "fp32"), "float32"),
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    **dict.fromkeys(("float16", "fp16"), "float16"),
}
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
# Shipped configs (trainer_ext/configs/models) -> the names that find them (short name first, then Hub ids).
SHIPPED_CONFIGS: dict[str, tuple[str, ...]] = {
    "gpt-j-6b.json": ("gpt-j-6b", "EleutherAI/gpt-j-6B"),
    "gpt-neox-20b.json": ("gpt-neox-20b", "EleutherAI/gpt-neox-20b"),
    "llama-2-7b.json": ("llama-2-7b", "meta-llama/Llama-2-7b-hf"),
    "rugpt3-large.json": (
        "rugpt3-large",
        "ai-forever/rugpt3large_based_on_gpt2",
        "sberbank-ai/rugpt3large_based_on_gpt2",
    ),
    "smollm2-135m.json": ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
# CUDA context, cuBLAS workspace and allocator slack that a GPU needs beside the tensors counted here.
CUDA_RESERVE_BYTES = 1 * GIB
# "kb".."tb" are powers of 1000, "kib".."tib" powers of 1024.
_SIZE_UNITS = {
    "b": 1,
    **{f"{prefix}b": 1000 ** (i + 1) for i, prefix in enumerate("kmgt")},
    **{f"{prefix}ib": 1024 ** (i + 1) for i, prefix in enumerate("kmgt")},
}


class EstimateError(ValueError):
    """A model config, size or option the estimator cannot use."""


def parse_size(text: str | int) -> int:
    """Parse a memory size such as ``"11GB"`` (10^9 bytes), ``"11GiB"`` (2^30 bytes) or ``"8000MB"``.

    Args:
        text (`str` or `int`): A number with a unit (B, KB, MB, GB, TB or KiB, MiB, GiB, TiB; any case), or
            an integer number of bytes.

    Returns:
        `int`: The size in bytes.

    Raises:
        `EstimateError`: For a missing or unknown unit, or a size that is not positive.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), "b"
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or not match.group(2) or match.group(2).lower() not in _SIZE_UNITS:
            raise EstimateError(
                f"memory size {text!r} not understood: give a number and a unit, e.g. 11GB (10^9 bytes), "
                "11GiB (2^30 bytes) or 8000MB."
            )
        value, unit = float(match.group(1)), match.group(2).lower()
    if value <= 0:
        raise EstimateError(f"memory size {text!r} must be positive.")
    return int(round(value * _SIZE_UNITS[unit]))


def format_size(num_bytes: float) -> str:
    """``"6.52 GB (6.07 GiB)"``: decimal gigabytes, binary gibibytes in brackets."""
    return f"{num_bytes / GB:.2f} GB ({num_bytes / GIB:.2f} GiB)"


def _shipped_file(name: str) -> str | None:
    wanted = name.strip().lower()
    for filename, names in SHIPPED_CONFIGS.items():
        if wanted in (n.lower() for n in names):
            return filename
    return None


def _embedded_hub_id(name: str) -> str | None:
    from .embedded import EMBEDDED_MODELS

    entry = EMBEDDED_MODELS.get(name)
    return entry.hub_id if entry is not None else None


def _config_from_dict(data: dict, where: str):
    from transformers import AutoConfig

    model_type = data.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise EstimateError(
            f"{where}: model_type {model_type!r} is not supported by the memory estimator; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    fields = {key: value for key, value in data.items() if key != "model_type"}
    return AutoConfig.for_model(model_type, **fields)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EstimateError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "pass a model's config.json."
        ) from error


def load_model_config(name_or_path: Any):
    """Find a model config without downloading weights.

    Tried in order: a config object or dict; a shipped config (`SHIPPED_CONFIGS`: ``gpt-j-6b``,
    ``EleutherAI/gpt-j-6B``, ...; the embedded ``smollm2-135m`` too); a local ``config.json`` or a directory
    holding one; a Hub id (fetched by `AutoConfig.from_pretrained`, which needs the network).

    Args:
        name_or_path (`str`, `dict` or `PretrainedConfig`): What to read.

    Returns:
        `PretrainedConfig`: The config.

    Raises:
        `EstimateError`: When nothing is found: not shipped, not a local config, and the Hub did not answer.
    """
    if isinstance(name_or_path, dict):
        return _config_from_dict(name_or_path, "config dict")
    if not isinstance(name_or_path, str):
        return name_or_path
    name = name_or_path.strip()
    shipped = _shipped_file(name) or _shipped_file(_embedded_hub_id(name) or "")
    if shipped:
        text = (
            resources.files("trainer_ext").joinpath("configs", "models", shipped).read_text(encoding="utf-8")
        )
        return _config_from_dict(json.loads(text), f"trainer_ext/configs/models/{shipped}")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EstimateError(
                f"directory {str(path)!r} has no config.json: pass a model directory or config file."
            )
        path = path / "config.json"
    if path.is_file():
        return _config_from_dict(_read_json(path), str(path))
    return _hub_config(name)


def _hub_config(name: str):
    from transformers import AutoConfig

    known = ", ".join(names[0] for names in SHIPPED_CONFIGS.values())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise EstimateError(
            f"config {name!r} does not exist; pass a config.json, a model directory or: {known}."
        )
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise EstimateError(
            f"cannot get the config of {name!r} from the Hub ({str(error).splitlines()[0]}). "
            f"Offline, pass a local config.json or model directory, or a shipped model: {known}."
        ) from error


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
    """dtype name, bytes per non-quantized weight, bytes per activation (as `trainer_ext.loading` picks)."""
    if dtype == "auto":
        if quantization == "none" and method in ("full", "norms"):
            name = "float32"
        elif device == "cpu":  # depends on this machine's CPU (native bf16 or not)
            from .loading import resolve_dtype

            name = str(resolve_dtype("auto", quantization, "cpu", method)).removeprefix("torch.")
        else:
            name = "bfloat16"  # bf16 or fp16 on a GPU: the same size
    elif dtype in DTYPE_NAMES:
        name = DTYPE_NAMES[dtype]
    else:
        raise EstimateError(
            f"dtype: unknown value {dtype!r}; choose auto or one of {', '.join(DTYPE_NAMES)}."
        )
    if kbit_upcast is None:
        kbit_upcast = name == "float16"  # as trainer_ext.methods: bf16 has fp32's range and needs no upcast
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
        if value not in allowed:
            raise EstimateError(f"{option}: unknown value {value!r}; choose one of {', '.join(allowed)}.")
    if not 0 <= lora_dropout < 1:
        raise EstimateError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}.")
    for option, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EstimateError(f"{option} must be a positive integer, got {value!r}.")
    if method == "full" and quantization != "none":
        raise EstimateError(
            f"method 'full' trains every weight, which a {quantization} model cannot do: "
            "use quantization 'none' with 'full', or a LoRA method with quantization."
        )


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
        method (`str`, *optional*, defaults to `"lora-all"`): A method of `trainer_ext.methods`.
        seq_len (`int`, *optional*, defaults to 128): Tokens per example (padded length).
        batch_size (`int`, *optional*, defaults to 2): Examples per step.
        lora_r (`int`, *optional*, defaults to 8): LoRA rank.
        optimizer (`str`, *optional*, defaults to `"adamw_8bit"`): A key of `OPTIMIZERS`.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`): Recompute activations in backward.
        dtype (`str`, *optional*, defaults to `"auto"`): dtype of the non-quantized weights, as for
            `trainer_ext.loading.load_model`; ``"auto"`` picks what it picks on `device` (bfloat16 on a
            GPU; pass ``"float16"`` for GPUs without bf16, such as the 11 GB GTX 1080 Ti or RTX 2080 Ti).
        lora_dropout (`float`, *optional*, defaults to 0.05): LoRA dropout (its masks are kept).
        device (`str`, *optional*, defaults to `"cuda"`): ``"cuda"`` or ``"cpu"`` (dropout masks and the
            ``"auto"`` dtype differ).
        kbit_upcast (`bool`, *optional*): Whether a quantized model that is trained has its non-quantized
            weights (and so its activations) upcast to fp32 by PEFT's `prepare_model_for_kbit_training`.
            Defaults to what `trainer_ext.methods` does: upcast in float16, not in bfloat16.
        loss_tokens (`int`, *optional*): Tokens per example whose logits are computed: the completion
            (label) tokens with `trainer_ext.trainer.LabelTrainer`, which computes no other logits. Defaults
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
