"""trainer_ext: fine-tune a causal LM into a text classifier that generates the label.

The public API is re-exported here lazily, so that ``import trainer_ext`` stays cheap (no torch import)
until one of these names is used.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _drop_4bit_kernel_notice(record: logging.LogRecord) -> bool:
    """False for bitsandbytes' import-time warning, on CPUs with AVX-512 BF16, that its optional 4-bit CPU
    kernel could not be loaded because the ``kernels`` package (which fetches it from the Hub) is not
    installed. It was printed by every command, 8-bit and unquantized ones included; 4-bit layers on the CPU
    run bitsandbytes' own fallback without it, and `load_model` says so when 4-bit is asked for on such a
    CPU. Any other failure to load the kernel (``kernels`` installed, the Hub unreachable) is still shown."""
    missing_package = "No module named 'kernels'" in " ".join(str(arg) for arg in record.args or ())
    return not (str(record.msg).startswith("Failed to load CPU gemm_4bit_forward") and missing_package)


# Here, before anything imports bitsandbytes (transformers and PEFT do), so that the warning meets the filter.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_4bit_kernel_notice)

_EXPORTS: dict[str, str] = {
    "load_model": "modeling.loading",
    "load_tokenizer": "modeling.loading",
    "LabelTask": "tasks",
    "LabelTrainer": "training.trainer",
    "LabelTrainingArguments": "training.trainer",
    "Classifier": "inference.classifier",
    "LabelCollator": "training.collator",
    "load_examples": "data",
    "classification_metrics": "evaluation.metrics",
    "estimate_memory": "memory",
    "RunInfo": "runs",
}

__all__ = [
    "Classifier",
    "LabelCollator",
    "LabelTask",
    "LabelTrainer",
    "LabelTrainingArguments",
    "RunInfo",
    "__version__",
    "classification_metrics",
    "estimate_memory",
    "load_examples",
    "load_model",
    "load_tokenizer",
]

if TYPE_CHECKING:
    from .data import load_examples
    from .evaluation.metrics import classification_metrics
    from .inference.classifier import Classifier
    from .memory import estimate_memory
    from .modeling.loading import load_model, load_tokenizer
    from .runs import RunInfo
    from .tasks import LabelTask
    from .training.collator import LabelCollator
    from .training.trainer import LabelTrainer, LabelTrainingArguments


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainer_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
