"""Loading a causal LM and its tokenizer, ready to train: quantization, dtype, device, pad token, method.

`load_model` accepts an embedded short name (``smollm2-135m``), a local directory written by
``save_pretrained`` or a Hugging Face Hub id, and returns a `LoadedModel`:

```python
from trainer_ext.modeling.loading import load_model
loaded = load_model("smollm2-135m", quantization="8bit", method="lora-all")
loaded.trainable_params, loaded.dtype
```

Pad token: a tokenizer without one gets its EOS token as pad token. EOS is in every vocabulary, so no
embedding row has to be added (and trained). Since the same id then also ends each completion, padding
must be masked by the attention mask, never by comparing ids with ``pad_token_id``. Padding is on the right.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer_ext.modeling.cpu_features import cpu_bf16_is_slow, cpu_supports_bf16
from trainer_ext.modeling.embedded import EMBEDDED_MODELS, EmbeddedModelError, resolve_model_path
from trainer_ext.modeling.methods import apply_method, count_parameters
from trainer_ext.modeling.settings import LoadedModel, LoraSettings, ModelLoadError
from trainer_ext.vocabulary import (
    DTYPE_NAMES,
    QUANTIZATIONS,
    choice_error,
    is_local_path,
    method_quantization_error,
)

logger = logging.getLogger(__name__)

# bitsandbytes backends: int8 and NF4 layers run on these device types only.
_BNB_DEVICE_TYPES = ("cuda", "cpu", "xpu")
# On the CPU, 8-bit layers run as weight-only int8 in the model dtype (see `trainer_ext.modeling.int8_cpu`).
CPU_8BIT_DTYPE = "bfloat16"


def default_device() -> str:
    """``"cuda"`` when a CUDA device is available, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(
    dtype: Any = "auto", quantization: str = "8bit", device: str = "cpu", method: str = "lora-all"
):
    """Choose the dtype of the non-quantized weights (and of the compute).

    ``"auto"`` picks, in order:

    - `float32` when base weights are trained without quantization (`full`, `norms`): Adam updates of
      bf16 weights lose most small steps; the Trainer can still compute in bf16 with autocast.
    - on CUDA: `bfloat16` where the GPU supports it, else `float16`;
    - on the CPU: `float32` where bf16 matmuls are slow (no AVX-512, see `cpu_bf16_is_slow`); else
      `CPU_8BIT_DTYPE` for 8-bit (see ``benchmarks/loading.py``), `bfloat16` where the CPU has native
      bf16 (AVX-512 BF16, AMX), else `float32`.

    Args:
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): A `DTYPE_NAMES` key or a dtype.
        quantization (`str`, *optional*, defaults to `"8bit"`): The quantization.
        device (`str`, *optional*, defaults to `"cpu"`): The target device.
        method (`str`, *optional*, defaults to `"lora-all"`): The training method.

    Returns:
        `torch.dtype`: The dtype.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ModelLoadError(f"dtype: unknown value {dtype!r}; choose one of {', '.join(DTYPE_NAMES)}.")
    if DTYPE_NAMES[dtype] != "auto":
        return getattr(torch, DTYPE_NAMES[dtype])
    if quantization == "none" and method in ("full", "norms"):
        return torch.float32
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device_type == "cpu" and cpu_bf16_is_slow():
        return torch.float32
    if device_type == "cpu" and quantization == "8bit":
        return getattr(torch, CPU_8BIT_DTYPE)
    if device_type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return torch.float32


# Files that make a directory loadable: a model needs its config; a tokenizer any of its own files.
_REQUIRED_FILES = {
    "model": ("config.json",),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "config.json"),
}


def _local_dir(name: str, path: Path, what: str) -> str:
    if path.is_file():
        raise ModelLoadError(
            f"{what} {name!r} is a file, not a directory: pass the directory that holds config.json "
            "and the weights (as written by save_pretrained)."
        )
    required = _REQUIRED_FILES[what]
    known = ", ".join(EMBEDDED_MODELS)
    if not any((path / file).is_file() for file in required):
        hint = ""
        if (path / "adapter_config.json").is_file():
            hint = " It holds a LoRA adapter (a training output): load it with Classifier.from_pretrained."
        raise ModelLoadError(
            f"directory {str(path)!r} is not a {what}: it has no {' or '.join(required)}. Pass a directory "
            f"written by save_pretrained, a Hub id, or an embedded model ({known}).{hint}"
        )
    return str(path)


def resolve_source(name_or_path: str, what: str = "model") -> str:
    """Turn a model name into something `from_pretrained` accepts, or say clearly why it cannot be.

    Args:
        name_or_path (`str`): Embedded short name, local directory or Hub id.
        what (`str`, *optional*, defaults to `"model"`): ``"model"`` (a local directory needs config.json)
            or ``"tokenizer"`` (it needs tokenizer files).

    Returns:
        `str`: A local directory (embedded models and local paths) or the Hub id.

    Raises:
        `ModelLoadError`: For a missing package of an embedded model, a file, a directory that is not a model,
            a path that does not exist, or a name that cannot be a Hub id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelLoadError(f"model name must be a non-empty string, got {name_or_path!r}.")
    try:
        resolved = resolve_model_path(name_or_path)
    except EmbeddedModelError as error:
        raise ModelLoadError(str(error)) from error
    path = Path(resolved).expanduser()
    if path.exists():
        return _local_dir(name_or_path, path, what)
    known = f"embedded models: {', '.join(EMBEDDED_MODELS)}"
    if is_local_path(resolved):
        raise ModelLoadError(f"model directory {resolved!r} does not exist ({known}).")
    try:
        validate_repo_id(resolved)
    except HFValidationError as error:
        raise ModelLoadError(
            f"unknown model {name_or_path!r}: not an embedded model ({known}), not a local directory, "
            f"and not a valid Hub id ({error})."
        ) from error
    return resolved


def _load_error(name: str, error: Exception, what: str) -> ModelLoadError:
    message = str(error)
    if "trust_remote_code" in message:
        return ModelLoadError(
            f"{name!r} needs to run code from its repository to load its {what}. Pass trust_remote_code=True "
            "(--trust_remote_code true) only if you trust that code."
        )
    if isinstance(error, OSError):
        first_line = (message.splitlines()[0] if message else type(error).__name__).rstrip(". ")
        return ModelLoadError(
            f"cannot load the {what} of {name!r}: {first_line}. "
            f"It is not an embedded model ({', '.join(EMBEDDED_MODELS)}) nor a local model directory, and "
            "the Hub did not provide it: check the name, and the network (offline, use a local directory)."
        )
    return ModelLoadError(f"cannot load the {what} of {name!r}: {message}")


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load a tokenizer with a pad token (EOS when it has none) and padding on the right.

    Args:
        name_or_path (`str`): Embedded short name, local directory or Hub id.
        revision (`str`, *optional*): Hub revision.
        trust_remote_code (`bool`, *optional*, defaults to `False`): Allow the repository's tokenizer code.

    Returns:
        `PreTrainedTokenizerBase`: The tokenizer.

    Raises:
        `ModelLoadError`: When the tokenizer cannot be loaded, or has neither a pad nor an EOS token.
    """
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise _load_error(name_or_path, error, "tokenizer") from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer of {name_or_path!r} has neither a pad nor an EOS token: set one in its "
                "tokenizer_config.json (eos_token), or use another tokenizer."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def quantization_config(quantization: str, dtype, device: str):
    """The `BitsAndBytesConfig` of a quantization, after checking the machine can run it."""
    import importlib.util

    import torch

    if quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"quantization {quantization!r} needs bitsandbytes, which is not installed: "
            "`pip install bitsandbytes`, or use quantization 'none'."
        )
    device_type = torch.device(device).type
    if device_type not in _BNB_DEVICE_TYPES:
        raise ModelLoadError(
            f"quantization {quantization!r} is not available on device {device!r}: bitsandbytes runs on "
            f"{', '.join(_BNB_DEVICE_TYPES)}. Use quantization 'none' there."
        )
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if device_type == "cpu" and cpu_supports_bf16() and importlib.util.find_spec("kernels") is None:
        logger.info(  # bitsandbytes' own notice of this is filtered out in trainer_ext/__init__.py
            "4-bit on the CPU: bitsandbytes' fused 4-bit CPU kernel comes from the Hub through the `kernels` "
            "package (pip install 'kernels>=0.11.1'); without it the 4-bit layers use its slower fallback."
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def _check_options(quantization: str, lora: LoraSettings) -> None:
    error = choice_error("quantization", quantization, QUANTIZATIONS) or method_quantization_error(
        lora.method, quantization
    )
    if error:
        raise ModelLoadError(error)


def load_model(
    model_name_or_path: str = "smollm2-135m",
    quantization: str = "8bit",
    method: str | None = None,
    lora: LoraSettings | None = None,
    dtype: Any = "auto",
    device: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, quantized and with the parameters of a training method trainable.

    Args:
        model_name_or_path (`str`, *optional*, defaults to `"smollm2-135m"`): Embedded short name, local
            directory or Hub id.
        quantization (`str`, *optional*, defaults to `"8bit"`): ``"8bit"`` (bitsandbytes LLM.int8), ``"4bit"``
            (NF4 with double quantization, as in QLoRA) or ``"none"``.
        method (`str`, *optional*): The training method (see `trainer_ext.modeling.methods`); overrides
            ``lora.method``. Defaults to ``lora.method``, i.e. ``"lora-all"``.
        lora (`LoraSettings`, *optional*): Method and LoRA shape; defaults to `LoraSettings()`.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): See `resolve_dtype`.
        device (`str`, *optional*): ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; defaults to CUDA when available.
        revision (`str`, *optional*): Hub revision.
        trust_remote_code (`bool`, *optional*, defaults to `False`): Allow the repository's own model code.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`): Trade compute for activation memory.

    Returns:
        `LoadedModel`: The model, its tokenizer and the choices made.

    Raises:
        `ModelLoadError`: For an unknown model, a directory that is not a model, a quantization this machine
            cannot run, `full` with quantization, or a model that needs `trust_remote_code`.
    """
    from dataclasses import replace

    from transformers import AutoConfig, AutoModelForCausalLM

    lora = lora or LoraSettings()
    if method is not None and method != lora.method:
        lora = replace(lora, method=method)
    _check_options(quantization, lora)
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, quantization, device, lora.method)
    source = resolve_source(model_name_or_path)
    try:  # the config first: it decides whether remote code would be needed, before anything else loads
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise _load_error(model_name_or_path, error, "config") from error
    bnb_config = quantization_config(quantization, torch_dtype, device)
    tokenizer = load_tokenizer(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            revision=revision,
            trust_remote_code=trust_remote_code,
            dtype=torch_dtype,
            quantization_config=bnb_config,
            device_map={"": device},
        )
    except (OSError, ValueError) as error:
        raise _load_error(model_name_or_path, error, "model") from error
    # PEFT records `name_or_path` as the adapter's base model: keep the name the user gave (e.g. the
    # embedded short name), not the cache directory it resolved to.
    model.config.name_or_path = model_name_or_path
    model.config.pad_token_id = tokenizer.pad_token_id
    if quantization == "8bit":
        from trainer_ext.modeling.int8_cpu import release_checkpoint_pages, use_weight_only_int8

        if use_weight_only_int8(model):  # CPU layers only: bitsandbytes' fp16 LLM.int8 path is slow on CPUs
            release_checkpoint_pages(model)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    try:
        model = apply_method(model, lora, gradient_checkpointing=gradient_checkpointing)
    except ValueError as error:
        raise ModelLoadError(str(error)) from error
    trainable, total = count_parameters(model)
    logger.info(
        "Loaded %s (%s, %s, %s) with method %s: %s trainable of %s parameters.",
        model_name_or_path,
        quantization,
        str(torch_dtype).replace("torch.", ""),
        device,
        lora.method,
        f"{trainable:,}",
        f"{total:,}",
    )
    return LoadedModel(model, tokenizer, trainable, total, quantization, lora.method, torch_dtype, device)
