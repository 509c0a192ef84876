"""The run directory: what a training run writes, and loading it back as a ready model.

A run directory holds

- the trained weights, safetensors only: ``adapter_model.safetensors`` + ``adapter_config.json`` (LoRA
  methods, PEFT's format) or ``trained_weights.safetensors`` (``norms`` and ``full``: only the tensors the
  method trained, under the base model's parameter names);
- the tokenizer files and ``task.json`` (labels, verbalizers, template);
- ``run.json``: base model, quantization, method, LoRA and training settings, parameter counts, versions.

Training also writes ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png`` there (see
`trainer_ext.training.pipeline`). The record `run.json` is described by `trainer_ext.runs.info.RunInfo`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer_ext.modeling.embedded import EMBEDDED_MODELS
from trainer_ext.modeling.loading import LoadedModel, default_device, load_model
from trainer_ext.modeling.methods import handled_peft_warnings
from trainer_ext.runs.info import ADAPTER_CONFIG, RunDirError, RunInfo
from trainer_ext.tasks import LabelTask
from trainer_ext.vocabulary import is_local_path

logger = logging.getLogger(__name__)

TRAINED_WEIGHTS = "trained_weights.safetensors"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")  # PEFT's, for the LoRA methods
PICKLED_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin", "trained_weights.bin")


def base_model_hub_id(name: str, hub_id: str | None = None) -> str | None:
    """The Hub id a base model stands for: `hub_id` when given; an embedded model's Hub checkpoint; a Hub id
    as is; for a local directory, its config's `_name_or_path` when that is a Hub id; else `None`."""
    if hub_id:
        return hub_id
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name].hub_id
    if not is_local_path(name):
        return name if name.count("/") == 1 else None
    config = Path(name) / "config.json"
    if config.is_file():
        try:
            origin = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or ""
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if origin.count("/") == 1 and not is_local_path(origin):
            return origin
    return None


def recorded_base_model(name: str) -> str:
    """How `run.json` records a base model: a local directory as an absolute path, anything else as given."""
    resolved = Path(name).expanduser()
    if name not in EMBEDDED_MODELS and is_local_path(name):
        return str(resolved.resolve())
    return name


def save_run(output_dir: str | Path, model, tokenizer, task: LabelTask, info: RunInfo) -> Path:
    """Write the trained weights, tokenizer, task and `run.json` into `output_dir`.

    Args:
        output_dir (`str` or `Path`): The run directory (created if needed).
        model (`PreTrainedModel` or `PeftModel`): The trained model.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        task (`LabelTask`): The task it was trained on.
        info (`RunInfo`): The run's record; a local base model is stored as an absolute path.

    Returns:
        `Path`: the run directory.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Weights of the other format, left by an earlier run in this directory, would be loaded instead.
    stale = [TRAINED_WEIGHTS] if hasattr(model, "peft_config") else list(ADAPTER_FILES)
    stale += [TRAINED_WEIGHTS] if info.method == "none" else []
    for name in stale:
        if (output_dir / name).is_file():
            logger.warning("Removing %s left in %s by an earlier run.", name, output_dir)
            (output_dir / name).unlink()
    if hasattr(model, "peft_config"):
        model.save_pretrained(output_dir, safe_serialization=True)
    elif info.method != "none":
        trained = {
            name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad
        }
        save_file(trained, str(output_dir / TRAINED_WEIGHTS), metadata={"format": "pt"})
    tokenizer.save_pretrained(output_dir)
    task.save(output_dir)
    info.base_model = recorded_base_model(info.base_model)
    info.base_model_hub_id = base_model_hub_id(info.base_model, info.base_model_hub_id)
    info.save(output_dir)
    return output_dir


def _check_weights_format(run_dir: Path, allow_pickle: bool) -> None:
    pickled = [name for name in PICKLED_WEIGHTS if (run_dir / name).is_file()]
    safe = any(run_dir.glob("*.safetensors"))
    if pickled and not safe and not allow_pickle:
        raise RunDirError(
            f"{str(run_dir)!r} holds only pickled weights ({', '.join(pickled)}), which can run code "
            "when loaded. "
            "Convert them to safetensors, or pass allow_pickle=True if you trust their source."
        )


def _base_model_source(info: RunInfo, base_model: str | None) -> str:
    """The base model to load: the override, else the recorded one, checked to still exist when local."""
    if base_model:
        return base_model
    if is_local_path(info.base_model) and not Path(info.base_model).expanduser().is_dir():
        raise RunDirError(
            f"The run's base model directory {info.base_model!r} does not exist any more (moved or deleted). "
            "Point to where it is now with base_model= (Classifier.from_pretrained), --base_model (predict, "
            "the Space)"
            + (f", or use the Hub checkpoint {info.base_model_hub_id!r}" if info.base_model_hub_id else "")
            + "."
        )
    return info.base_model


def _run_dtype(info: RunInfo, device: str | None, dtype: Any) -> Any:
    """The dtype to reload in: `dtype` when given, else the run's own unless this device cannot compute it."""
    if dtype is not None:
        return dtype
    import torch

    from trainer_ext.modeling.cpu_features import cpu_bf16_is_slow

    on_cuda = torch.device(device or default_device()).type == "cuda"
    if info.dtype == "bfloat16" and on_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        logger.warning("The run computed in bfloat16, which this GPU does not; reloading with dtype auto.")
        return "auto"
    if "bfloat16" in (info.dtype, info.autocast) and not on_cuda and cpu_bf16_is_slow():
        logger.warning(
            "This run was evaluated in bf16, which this CPU (no native bf16, no AVX-512) computes in a slow "
            "fallback; it is reloaded in bf16 as evaluated. Float32 is faster here: quantization='none', "
            "dtype='auto', merge_adapter=True (trainer-ext predict --quantization none --dtype auto "
            "--merge_adapter true) answered batches 2x as fast as an 8-bit run in bf16 on such a CPU "
            "(README, 'Precision on CPUs without AVX-512'), with probabilities that may differ a little."
        )
    return info.dtype


def load_run(
    run_dir: str | Path,
    quantization: str | None = None,
    device: str | None = None,
    dtype: Any = None,
    allow_pickle: bool = False,
    base_model: str | None = None,
    merge_adapter: bool = False,
) -> tuple[LoadedModel, LabelTask, RunInfo]:
    """Load a run directory: base model (as `run.json` names it), trained weights on top, the task.

    Args:
        run_dir (`str` or `Path`): A run directory.
        quantization (`str`, *optional*): Override the run's quantization (e.g. ``"none"`` on a machine
            without bitsandbytes support).
        device (`str`, *optional*): Defaults to CUDA when available.
        dtype (`str` or `torch.dtype`, *optional*): Override the dtype; by default the run's own (the dtype
            it was trained and evaluated in), so the reloaded model reproduces the run's predictions.
        allow_pickle (`bool`, *optional*, defaults to `False`): Accept pickled `.bin` weights.
        base_model (`str`, *optional*): Load this base model instead of the recorded one (a run whose local
            base model directory has moved).
        merge_adapter (`bool`, *optional*, defaults to `False`): Fold a LoRA adapter into the base weights
            (PEFT's `merge_and_unload`): the same model up to float rounding, without the adapter's extra
            matmuls at every layer. Needs unquantized base weights (``quantization="none"``).

    Returns:
        `(LoadedModel, LabelTask, RunInfo)` with the model in eval mode.

    Raises:
        `RunDirError`: for a directory that is not a run, pickled weights without `allow_pickle`, a
            recorded base model directory that no longer exists, or `merge_adapter` with quantized weights;
        `TypeError`: for a `merge_adapter` that is not a `bool` (a string such as ``"no"`` would be true).
    """
    if not isinstance(merge_adapter, bool):
        raise TypeError(f"merge_adapter must be True or False, got {merge_adapter!r}.")
    run_dir = Path(run_dir)
    info = RunInfo.load(run_dir)
    _check_weights_format(run_dir, allow_pickle)
    quantization = quantization or info.quantization
    if merge_adapter and quantization != "none":
        raise RunDirError(
            f"merge_adapter needs unquantized base weights, but the run loads in {quantization}: pass "
            "quantization='none' too (--quantization none), or leave the adapter unmerged."
        )
    loaded = load_model(
        _base_model_source(info, base_model),
        quantization=quantization,
        method="none",
        dtype=_run_dtype(info, device, dtype),
        device=device,
    )
    model = loaded.model
    if (run_dir / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        with handled_peft_warnings():
            model = PeftModel.from_pretrained(model, str(run_dir), is_trainable=False)
        if merge_adapter:
            model = _merge_adapter(model)
        how = "merged into the base weights" if merge_adapter else "kept separate from the base weights"
        logger.info("Loaded the trained adapter of %s (%s), %s.", run_dir, info.method, how)
    else:
        if merge_adapter:
            # Not a fault: its trained weights are the model's own, as merged weights would be.
            logger.info(
                "merge_adapter: %s has no LoRA adapter (method %s); nothing to merge.", run_dir, info.method
            )
        if (run_dir / TRAINED_WEIGHTS).is_file():
            _load_trained_weights(model, run_dir / TRAINED_WEIGHTS)
    task = LabelTask.load(run_dir)
    model.eval()
    loaded.model = model
    return loaded, task, info


def _merge_adapter(model):
    """PEFT's `merge_and_unload`, with tied output embeddings given their own copy of the weight first.

    `lora-all` adapts the input embeddings of a model with tied embeddings (SmolLM2, GPT-2) and leaves the
    output layer on the frozen weight they share (`trainer_ext.modeling.methods`). Merging in place would
    add the embedding adapter to the output layer too and change every logit; untied first, the merged
    model computes what the adapter did (up to float rounding).
    """
    base = model.get_base_model()
    output = base.get_output_embeddings()
    tied = output is not None and any(p is output.weight for p in base.get_input_embeddings().parameters())
    if tied:
        output.weight = torch.nn.Parameter(output.weight.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
    return model.merge_and_unload()


def _load_trained_weights(model: torch.nn.Module, path: Path) -> None:
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    unknown = [name for name in tensors if name not in params]
    if unknown:
        raise RunDirError(
            f"{str(path)!r} has tensors the base model lacks ({unknown[:3]}...); was it trained on another "
            "base model?"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].dtype))
    logger.info("Loaded %d trained tensors from %s", len(tensors), path)
