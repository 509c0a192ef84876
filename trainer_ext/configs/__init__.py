"""Configs shipped with the package: training recipes, accelerate launch configs, model configs.

>>> from trainer_ext.configs import config_path
>>> config_path("recipes/moderation_lora_all.yaml").name
'moderation_lora_all.yaml'
"""

from __future__ import annotations

from pathlib import Path

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
