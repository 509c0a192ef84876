"""Model configs and memory sizes for the estimator: shipped configs of well-known models, local
`config.json` files or Hub ids, and sizes such as ``"11GB"``. Nothing here reads weights.
"""

from __future__ import annotations

import difflib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from trainer_ext.memory.shapes import SUPPORTED_MODEL_TYPES
from trainer_ext.vocabulary import is_local_path

GB, GIB = 10**9, 2**30


class EstimateError(ValueError):
    """A model config, size or option the estimator cannot use."""


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
# "kb".."tb" are powers of 1000, "kib".."tib" powers of 1024.
_SIZE_UNITS = {
    "b": 1,
    **{f"{prefix}b": 1000 ** (i + 1) for i, prefix in enumerate("kmgt")},
    **{f"{prefix}ib": 1024 ** (i + 1) for i, prefix in enumerate("kmgt")},
}


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
    from trainer_ext.modeling.embedded import EMBEDDED_MODELS

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

    shipped_names = [names[0] for names in SHIPPED_CONFIGS.values()]
    known = ", ".join(shipped_names)
    if is_local_path(name):
        raise EstimateError(
            f"config {name!r} does not exist; pass a config.json, a model directory or: {known}."
        )
    # A name without an owner that is close to a shipped one is a typo, not a Hub id worth a network try.
    # 0.9 takes one dropped or doubled character ("gpt-j-6", "smolm2-135m"), not another model ("gpt2-large").
    close = [] if "/" in name else difflib.get_close_matches(name.lower(), shipped_names, n=1, cutoff=0.9)
    if close:
        raise EstimateError(f"{name!r} is not a shipped model; did you mean {close[0]!r}? Shipped: {known}.")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise EstimateError(
            f"cannot get the config of {name!r} from the Hub ({str(error).splitlines()[0]}). "
            f"Offline, pass a local config.json or model directory, or a shipped model: {known}."
        ) from error
