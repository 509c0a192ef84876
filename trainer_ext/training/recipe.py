"""Recipes: one YAML file of settings, overridden on the command line.

A recipe is flat: every key is a field of one of the settings dataclasses (model, method/LoRA, data,
task, `LabelTrainingArguments`), and the same name is the command-line flag (``--lora_r 8``). Values
given on the command line override the file; an unknown key in either is an error that names it.

>>> recipe = parse_recipe(["--model_name_or_path", "smollm2-135m", "--lora_r", "4", "--output_dir", "/tmp/x"])
>>> recipe.model.model_name_or_path, recipe.lora.lora_r, recipe.training.optim.value
('smollm2-135m', 4, 'adamw_bnb_8bit')
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_ext.configs import load_yaml_mapping
from trainer_ext.data import DataSettings
from trainer_ext.modeling.settings import LoraSettings, ModelSettings
from trainer_ext.tasks import TaskSettings
from trainer_ext.training.arguments import LabelArguments

#: The settings classes whose fields are the project's own keys (light: no torch import).
LIGHT_SETTINGS = (ModelSettings, LoraSettings, DataSettings, TaskSettings, LabelArguments)


def settings_classes() -> tuple[type, ...]:
    """Every settings class of a recipe, `LabelTrainingArguments` (which imports torch) last."""
    from trainer_ext.training.trainer import LabelTrainingArguments

    return (*LIGHT_SETTINGS[:-1], LabelTrainingArguments)


class RecipeError(ValueError):
    """A recipe file or command line that cannot be used as given."""


@dataclass
class Recipe:
    """The settings of one training run, one dataclass per concern."""

    model: ModelSettings
    lora: LoraSettings
    data: DataSettings
    task: TaskSettings
    training: LabelTrainingArguments  # noqa: F821 (imported on first use, see settings_classes)
    bf16_auto: bool = False  # `bf16: auto` chose `training.bf16` for this machine (see `resolve_auto_bf16`)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as flat YAML-ready values (the training arguments that differ from their defaults)."""
        values: dict[str, Any] = {}
        for part in (self.model, self.lora, self.data, self.task):
            values.update(dataclasses.asdict(part))
        arguments = type(self.training)
        defaults = arguments(output_dir=self.training.output_dir)
        for f in dataclasses.fields(arguments):
            value = getattr(self.training, f.name, None)
            if (
                f.init
                and value != getattr(defaults, f.name, None)
                and isinstance(value, (str, int, float, bool))
            ):
                values[f.name] = value
        values["output_dir"] = self.training.output_dir
        return values


def known_keys() -> dict[str, type]:
    """Every recipe key and the settings class it belongs to."""
    return {f.name: cls for cls in settings_classes() for f in dataclasses.fields(cls) if f.init}


def _check_keys(keys, where: str) -> None:
    known = known_keys()
    own = [f.name for cls in LIGHT_SETTINGS for f in dataclasses.fields(cls)]
    for key in keys:
        if key not in known:
            # The project's own keys are suggested first: `lora_rank` means `lora_r`, not `local_rank`.
            close = difflib.get_close_matches(key, own, n=1, cutoff=0.6) or difflib.get_close_matches(
                key, known, n=1
            )
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(
                f"{where}: unknown key {key!r}.{hint} See `trainer-ext train --help` for the keys."
            )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a flat dict, checking that it is a mapping of known keys."""
    path = Path(path)
    values = load_yaml_mapping(path, "Recipe file", RecipeError)
    _check_keys(values, f"Recipe file {str(path)!r}")
    known = known_keys()
    for key, value in values.items():
        field = next(f for f in dataclasses.fields(known[key]) if f.name == key)
        if value is None and field.default is not None:  # a key that has a value unless set
            raise RecipeError(
                f"Recipe file {str(path)!r}: {key} is empty (null); give it a value or delete the line to "
                "keep its default."
            )
    return values


def _parser():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(settings_classes(), prog="trainer-ext train")

    def error(message: str):  # argparse would print the whole usage of every TrainingArguments key
        raise RecipeError(f"{message.rstrip('.')}; see `trainer-ext train --help`.")

    parser.error = error
    return parser


def parse_recipe(argv: list[str] | None = None) -> Recipe:
    """Parse ``[--config FILE.yaml] [--key value ...]`` into a `Recipe`.

    Args:
        argv (`list[str]`, *optional*): Command-line arguments; defaults to `sys.argv[1:]`.

    Returns:
        `Recipe`: the file's values overridden by the command line's.

    Raises:
        `RecipeError`: naming an unknown key, an unreadable file or a bad value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    file_values: dict[str, Any] = {}
    config = None
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise RecipeError("--config needs a YAML file path.")
        config = argv[at + 1]
        file_values = load_yaml(config)
        del argv[at : at + 2]
    flags = [a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")]
    _check_keys(flags, "Command line")
    bf16_auto = resolve_auto_bf16(file_values, argv, recipe_file=config)
    parser = _parser()
    parser.set_defaults(**{k: _as_flag_value(v) for k, v in file_values.items()})
    try:
        parts = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except (ValueError, TypeError) as error:
        raise RecipeError(f"Invalid recipe value: {error}") from None
    except ImportError as error:
        raise RecipeError(
            f"The launch configuration needs a package that is not installed: {error}"
        ) from None
    recipe = Recipe(*parts, bf16_auto=bf16_auto)
    check_launch(recipe)
    return recipe


def resolve_auto_bf16(
    file_values: dict[str, Any],
    argv: list[str],
    environ: dict[str, str] | None = None,
    recipe_file: str | None = None,
) -> bool:
    """Replace a ``bf16`` value of ``auto`` (``bf16: auto`` in the file, ``--bf16 auto`` or ``--bf16=auto``
    on the command line, every occurrence) by ``True`` or ``False`` for this machine, in place; the command
    line's last value wins, as for any key.

    ``auto`` turns bf16 autocast on where the device computes bf16 natively: on a CUDA GPU with bf16
    (`torch.cuda.is_bf16_supported` without emulation: not the T4, V100 or GTX 10xx), and on a CPU (no
    CUDA, ``use_cpu``, or an ``accelerate launch`` on the CPU) unless
    `trainer_ext.modeling.cpu_features.cpu_bf16_is_slow` (no native bf16 and no AVX-512). Without CUDA it
    also sets ``use_cpu`` unless the recipe gives it, as ``bf16: true`` always did there: the models load on
    the CPU (`trainer_ext.modeling.loading.default_device`), so the Trainer must not pick MPS or XPU.

    Args:
        file_values (`dict[str, Any]`): The recipe file's values, changed in place.
        argv (`list[str]`): The command line (without ``--config``), changed in place.
        environ (`dict[str, str]`, *optional*): The environment (defaults to `os.environ`).
        recipe_file (`str`, *optional*): The recipe file the values come from, named in errors.

    Returns:
        `bool`: Whether the value that applies was ``auto``.

    Raises:
        `RecipeError`: for a ``bf16`` value that is none of true, false or auto.
    """
    import os

    places, bf16 = _flag(argv, "bf16", file_values.get("bf16"))
    file_named = f"recipe file {recipe_file!r}" if recipe_file else "recipe file"
    if not _is_auto(bf16):
        _as_bool("bf16", bf16, "command line" if places else file_named)
        _replace_auto(file_values, argv, places, bf16)  # an earlier `auto` the last value overrides
        return False
    import torch

    from trainer_ext.modeling.cpu_features import cpu_bf16_is_slow

    environ = os.environ if environ is None else environ
    cpu_places, use_cpu = _flag(argv, "use_cpu", file_values.get("use_cpu"))
    on_cpu = bool(_as_bool("use_cpu", use_cpu, "command line" if cpu_places else file_named))
    on_cpu = on_cpu or environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes")
    if torch.cuda.is_available() and not on_cpu:
        chosen = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        chosen = not cpu_bf16_is_slow()
        if not torch.cuda.is_available() and use_cpu is None:
            file_values["use_cpu"] = True
    _replace_auto(file_values, argv, places, chosen)
    return True


def _replace_auto(file_values: dict[str, Any], argv: list[str], places: list[int], value: Any) -> None:
    """Put `value` in place of every ``auto`` of ``bf16`` (argparse converts every occurrence it reads)."""
    if _is_auto(file_values.get("bf16")):
        file_values["bf16"] = value
    for at in reversed(places):
        if _is_auto(_value_at(argv, at)):
            argv[at : at + (1 if "=" in argv[at] else 2)] = ["--bf16", str(value)]


def _flag(argv: list[str], key: str, default: Any) -> tuple[list[int], Any]:
    """Where ``--key`` (or ``--key`` with dashes) is in `argv`, and the value its last occurrence gives
    (``--key value``, ``--key=value``, or a bare ``--key``, which argparse reads as true); `default` when
    absent."""
    names = {f"--{key}", f"--{key.replace('_', '-')}"}
    places = [i for i, a in enumerate(argv) if a.split("=", 1)[0] in names]
    return places, _value_at(argv, places[-1]) if places else default


def _value_at(argv: list[str], at: int) -> str:
    """The value of the flag at `argv[at]`: ``--key=value``, ``--key value``, ``"true"`` for a bare flag."""
    if "=" in argv[at]:
        return argv[at].split("=", 1)[1]
    following = argv[at + 1] if at + 1 < len(argv) else "--"
    return "true" if following.startswith("--") else following


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _as_bool(key: str, value: Any, where: str) -> bool | None:
    """`value` of `key` (given in `where`) read as the parser reads a bool; `None` stays `None`.

    Raises:
        `RecipeError`: for a value that is no bool, naming where it was given and what to give.
    """
    from transformers.hf_argparser import string_to_bool

    if value is None or isinstance(value, bool):
        return value
    try:
        return string_to_bool(str(value).strip())
    except Exception:  # argparse's own error would not name `auto`
        choices = "true, false or auto" if key == "bf16" else "true or false"
        raise RecipeError(f"{where.capitalize()}: {key} is {value!r}; give {choices}.") from None


def check_launch(recipe: Recipe, environ: dict[str, str] | None = None) -> None:
    """Refuse recipe + launcher combinations that cannot work, before any model is loaded.

    `accelerate launch` tells the processes its distributed mode through environment variables.
    """
    import os

    environ = os.environ if environ is None else environ
    fsdp = environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    deepspeed = environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if fsdp and recipe.model.quantization == "8bit":
        raise RecipeError(
            "FSDP cannot shard 8-bit (LLM.int8) base weights. Use quantization 4bit (QLoRA) or none with "
            "FSDP, "
            "or keep 8bit with a DDP or DeepSpeed ZeRO-2 launch config."
        )
    optim = str(getattr(recipe.training.optim, "value", recipe.training.optim))
    if (fsdp or deepspeed) and ("bnb" in optim or "8bit" in optim):
        raise RecipeError(
            f"optim {optim} (bitsandbytes 8-bit) does not work under "
            f"{'FSDP' if fsdp else 'DeepSpeed'}; set optim adamw_torch for this launch config."
        )


def _as_flag_value(value: Any) -> Any:
    """A YAML value as the command line would give it, so that the parser checks and converts it alike.

    argparse converts a default only when it is a string: a YAML ``pad_to_multiple_of: 2.5`` would otherwise
    reach training as the float 2.5. Scalars become their text (``true`` -> ``"True"``, which the parser
    reads back as a bool), mappings JSON; lists (``nargs`` fields) and ``null`` stay as they are.
    """
    if isinstance(value, dict):
        import json

        return json.dumps(value)
    if isinstance(value, bool | int | float):
        return str(value)
    return value
