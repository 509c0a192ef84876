"""Configs shipped with the package (training recipes, study presets, accelerate launch configs, model
configs), and the one reader of YAML settings files.

>>> from trainer_ext.configs import config_path
>>> config_path("recipes/moderation_lora_all.yaml").name
'moderation_lora_all.yaml'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIGS_DIR = Path(__file__).resolve().parent
SUFFIXES = (".yaml", ".yml", ".json")


def available_configs() -> list[str]:
    """The shipped configs, as paths relative to this directory (``"recipes/moderation_lora_all.yaml"``)."""
    return sorted(
        path.relative_to(CONFIGS_DIR).as_posix()
        for path in CONFIGS_DIR.rglob("*")
        if path.is_file() and path.suffix in SUFFIXES
    )


def config_path(name: str) -> Path:
    """The path of a shipped config.

    Args:
        name (`str`): Its path relative to ``trainer_ext/configs`` (``"recipes/moderation_lora_all.yaml"``).

    Returns:
        `Path`: The file.

    Raises:
        `FileNotFoundError`: When no shipped config has that name; the message lists those that exist.
    """
    path = (CONFIGS_DIR / name).resolve()
    if CONFIGS_DIR not in path.parents or path.suffix not in SUFFIXES or not path.is_file():
        raise FileNotFoundError(
            f"no shipped config {name!r} in {CONFIGS_DIR}; available: {', '.join(available_configs())}"
        )
    return path


def load_yaml_mapping(path: str | Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping of keys to values (a recipe, a study preset).

    Args:
        path (`str` or `Path`): The file.
        what (`str`): What the file is, for messages (``"Recipe file"``, ``"Preset"``).
        error (`type[Exception]`): The error class to raise.

    Returns:
        `dict`: the mapping (empty for an empty file).

    Raises:
        `error`: for a missing file, invalid YAML, or a file that does not hold a mapping.
    """
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist; check the path.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise error(f"{what} {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise error(
            f"{what} {str(path)!r} must hold a mapping of keys to values, not {type(values).__name__}."
        )
    return values
