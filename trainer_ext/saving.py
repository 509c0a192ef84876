"""The run directory: what a training run writes, and loading it back as a ready model.

A run directory holds

- the trained weights, safetensors only: ``adapter_model.safetensors`` + ``adapter_config.json`` (LoRA
  methods, PEFT's format) or ``trained_weights.safetensors`` (``norms`` and ``full``: only the tensors the
  method trained, under the base model's parameter names);
- the tokenizer files and ``task.json`` (labels, verbalizers, template);
- ``run.json``: base model, quantization, method, LoRA and training settings, parameter counts, versions.

Training also writes ``metrics.json``, ``predictions.csv`` and ``confusion_matrix.png`` there (see
`trainer_ext.cli.train`).
"""

from __future__ import annotations

import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer_ext.embedded import EMBEDDED_MODELS
from trainer_ext.loading import LoadedModel, load_model
from trainer_ext.tasks import LabelTask

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
ADAPTER_CONFIG = "adapter_config.json"
TRAINED_WEIGHTS = "trained_weights.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "pytorch_model.bin", "trained_weights.bin")
VERSIONED = ("trainer-ext", "torch", "transformers", "peft", "accelerate", "bitsandbytes")


class RunDirError(ValueError):
    """A directory that is not a usable run directory."""


def framework_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def base_model_hub_id(name: str) -> str | None:
    """The Hub id a base model name stands for (embedded short names map to their Hub checkpoint)."""
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name].hub_id
    return name if "/" in name and not Path(name).exists() else None


def save_run(output_dir: str | Path, model, tokenizer, task: LabelTask, run_info: dict[str, Any]) -> Path:
    """Write the trained weights, tokenizer, task and `run.json` into `output_dir`.

    Args:
        output_dir (`str` or `Path`): The run directory (created if needed).
        model (`PreTrainedModel` or `PeftModel`): The trained model.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        task (`LabelTask`): The task it was trained on.
        run_info (`dict`): At least `base_model`, `quantization` and `method`; saved as `run.json` with
            the framework versions added.

    Returns:
        `Path`: the run directory.
    """
    missing = [key for key in ("base_model", "quantization", "method") if key not in run_info]
    if missing:
        raise ValueError(f"run_info lacks {missing}; save_run needs them to load the run back.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(output_dir, safe_serialization=True)
    elif run_info["method"] != "none":
        trained = {
            name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad
        }
        save_file(trained, str(output_dir / TRAINED_WEIGHTS), metadata={"format": "pt"})
    tokenizer.save_pretrained(output_dir)
    task.save(output_dir)
    info = {"base_model_hub_id": base_model_hub_id(run_info["base_model"]), **run_info}
    info["versions"] = framework_versions()
    (output_dir / RUN_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return output_dir


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """`run.json` of a run directory; for a plain PEFT adapter directory, what its adapter config tells."""
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).is_file():
        return json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    if (run_dir / ADAPTER_CONFIG).is_file():
        config = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        return {"base_model": config["base_model_name_or_path"], "quantization": "8bit", "method": "lora"}
    raise RunDirError(
        f"{str(run_dir)!r} is not a run directory: it has neither {RUN_FILE} nor {ADAPTER_CONFIG}. Pass the "
        "output_dir of a training run (or a Hub repo it was pushed to)."
    )


def _check_weights_format(run_dir: Path, allow_pickle: bool) -> None:
    pickled = [name for name in PICKLED_WEIGHTS if (run_dir / name).is_file()]
    safe = any(run_dir.glob("*.safetensors"))
    if pickled and not safe and not allow_pickle:
        raise RunDirError(
            f"{str(run_dir)!r} holds only pickled weights ({', '.join(pickled)}), which can run code "
            "when loaded. "
            "Convert them to safetensors, or pass allow_pickle=True if you trust their source."
        )


def load_run(
    run_dir: str | Path,
    quantization: str | None = None,
    device: str | None = None,
    dtype: Any = "auto",
    allow_pickle: bool = False,
) -> tuple[LoadedModel, LabelTask, dict[str, Any]]:
    """Load a run directory: base model (as `run.json` names it), trained weights on top, the task.

    Args:
        run_dir (`str` or `Path`): A run directory.
        quantization (`str`, *optional*): Override the run's quantization (e.g. ``"none"`` on a machine
            without bitsandbytes support).
        device (`str`, *optional*): Defaults to CUDA when available.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): See `loading.resolve_dtype`.
        allow_pickle (`bool`, *optional*, defaults to `False`): Accept pickled `.bin` weights.

    Returns:
        `(LoadedModel, LabelTask, run_info)` with the model in eval mode.
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    _check_weights_format(run_dir, allow_pickle)
    quantization = quantization or info["quantization"]
    loaded = load_model(
        info["base_model"], quantization=quantization, method="none", dtype=dtype, device=device
    )
    model = loaded.model
    if (run_dir / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(run_dir), is_trainable=False)
    elif (run_dir / TRAINED_WEIGHTS).is_file():
        _load_trained_weights(model, run_dir / TRAINED_WEIGHTS)
    task = LabelTask.load(run_dir)
    model.eval()
    loaded.model = model
    return loaded, task, info


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
