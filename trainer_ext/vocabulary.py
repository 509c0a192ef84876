"""The words every part of the package shares, and the rules on them, defined once.

Settings classes, the estimator, the study and the command lines all take their choices and checks
from here, so that a new quantization or method is added in one place.

>>> method_quantization_error("full", "8bit") is not None
True
>>> is_local_path("./my-model"), is_local_path("HuggingFaceTB/SmolLM2-135M-Instruct")
(True, False)
"""

from __future__ import annotations

from pathlib import Path

#: Weight quantizations: bitsandbytes LLM.int8, NF4 (QLoRA), unquantized.
QUANTIZATIONS: tuple[str, ...] = ("8bit", "4bit", "none")
#: Training methods (see `trainer_ext.modeling.methods`).
METHODS: tuple[str, ...] = ("lora-all", "lora-attention", "norms", "full", "none")
LORA_METHODS: tuple[str, ...] = ("lora-all", "lora-attention")
#: How a label is read from the model: scored among the labels, or generated greedily and parsed.
DECODINGS: tuple[str, ...] = ("constrained", "generate")
#: What evaluation during training may run: one decoding or both.
EVAL_DECODINGS: tuple[str, ...] = (*DECODINGS, "both")
#: What to keep of a message too long for `max_length`: its start (the end is cut), its end, or both ends.
TRUNCATION_SIDES: tuple[str, ...] = ("right", "left", "both")
#: dtype names a user may write -> the torch dtype name; `auto` picks per device.
DTYPE_NAMES: dict[str, str] = {
    "auto": "auto",
    **dict.fromkeys(("float32", "fp32"), "float32"),
    **dict.fromkeys(("bfloat16", "bf16"), "bfloat16"),
    **dict.fromkeys(("float16", "fp16"), "float16"),
}
#: Optimizers as `TrainingArguments.optim` spells them -> how they store Adam's two moments.
OPTIMIZER_STATES: dict[str, str] = {
    **dict.fromkeys(("adamw_torch", "adamw_torch_fused", "adamw"), "adamw"),
    **dict.fromkeys(("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "adam8bit"), "adam8bit"),
    "sgd": "sgd",
}


def choice_error(option: str, value: object, allowed) -> str | None:
    """The message for a value outside `allowed`, or `None` when it is one of them."""
    if value in allowed:
        return None
    named = ", ".join(str(choice) for choice in allowed if choice is not None)  # None: the option left out
    return f"{option}: unknown value {value!r}; choose one of {named}."


def method_quantization_error(method: str, quantization: str) -> str | None:
    """The message when `method` cannot train a model quantized as `quantization`, else `None`.

    Only `full` is refused: it trains every weight, and int8/NF4 weights cannot take gradient updates.
    """
    if method == "full" and quantization != "none":
        return (
            f"method 'full' trains every weight, which a {quantization} model cannot do: use quantization "
            "'none' with 'full', or a LoRA method (lora-all, lora-attention) with quantization."
        )
    return None


def is_local_path(name: str | Path) -> bool:
    """Whether a model or run name means a local path rather than a Hub id.

    A name that exists on disk, is absolute, starts with ``.``, ``~`` or a path separator, or has more
    than one ``/`` is a path; anything else (``NAMESPACE/NAME`` or ``NAME``) that does not exist is a Hub id.
    """
    text = str(name)
    if Path(text).expanduser().exists():
        return True
    return text.startswith((".", "/", "~", "\\")) or Path(text).is_absolute() or text.count("/") > 1
