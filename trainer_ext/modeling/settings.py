"""The settings of a model and of its training method (recipe keys), and what loading returns.

No heavy import here, so recipes and `--help` are read without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer_ext.modeling.embedded import EMBEDDED_MODELS
from trainer_ext.vocabulary import DTYPE_NAMES, METHODS, QUANTIZATIONS, choice_error


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded because of the name, files or options given."""


@dataclass
class ModelSettings:
    """Which model to load and how (the `model` part of a recipe)."""

    model_name_or_path: str = field(
        default="smollm2-135m",
        metadata={"help": f"Embedded model ({', '.join(EMBEDDED_MODELS)}), local directory or Hub id."},
    )
    quantization: str = field(
        default="8bit",
        metadata={"help": "Weight quantization: 8bit (LLM.int8), 4bit (NF4, QLoRA) or none."},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the non-quantized weights and compute: auto, float32, bfloat16 or float16."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "The Hub id a local model_name_or_path stands for; recorded in run.json and the "
            "model card."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow running model code from the model's repository (only for repositories you trust)."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path.strip():
            raise ValueError("ModelSettings.model_name_or_path: give a model name, directory or Hub id.")
        for option, allowed in (("quantization", QUANTIZATIONS), ("dtype", DTYPE_NAMES)):
            error = choice_error(option, getattr(self, option), allowed)
            if error:
                raise ValueError(f"ModelSettings.{error}")


@dataclass
class LoadedModel:
    """A model ready to train, with its tokenizer and what was chosen for it.

    Args:
        model (`PreTrainedModel` or `PeftModel`): The model, trainable parameters set by the method.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer, with a pad token, padding on the right.
        trainable_params (`int`): Number of trainable parameters.
        total_params (`int`): Number of parameters (tied tensors once).
        quantization (`str`): ``"8bit"``, ``"4bit"`` or ``"none"``.
        method (`str`): The training method.
        dtype (`torch.dtype`): dtype of the non-quantized weights.
        device (`str`): Where the model lives (``"cpu"``, ``"cuda"``, ...).
    """

    model: Any
    tokenizer: Any
    trainable_params: int
    total_params: int
    quantization: str
    method: str
    dtype: Any
    device: str


@dataclass
class LoraSettings:
    """How a model is trained: the method and, for the LoRA methods, the adapter shape."""

    method: str = field(
        default="lora-all",
        metadata={"help": f"Training method, one of {', '.join(METHODS)}."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (the inner dimension of the adapters)."})
    lora_alpha: float = field(
        default=16, metadata={"help": "LoRA scaling numerator: the update is scaled by alpha / r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the input of the LoRA adapters."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names (or name suffixes such as `q_proj`) to adapt; default: found per "
            "architecture from the method.",
            "nargs": "+",
        },
    )

    def __post_init__(self) -> None:
        error = choice_error("method", self.method, METHODS)
        if error:
            raise ValueError(f"LoraSettings.{error}")
        if not isinstance(self.lora_r, int) or isinstance(self.lora_r, bool) or self.lora_r < 1:
            raise ValueError(
                f"LoraSettings.lora_r: the LoRA rank must be a positive integer, got {self.lora_r!r}."
            )
        if not self.lora_alpha > 0:
            raise ValueError(f"LoraSettings.lora_alpha: must be positive, got {self.lora_alpha!r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraSettings.lora_dropout: must be in [0, 1), got {self.lora_dropout!r}.")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise ValueError(
                "LoraSettings.lora_target_modules: give at least one module name, or leave it unset."
            )
