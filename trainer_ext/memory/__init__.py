"""The memory estimator: how much memory a training step of a model needs, from its config alone."""

from trainer_ext.memory.configs import (
    GB,
    GIB,
    SHIPPED_CONFIGS,
    EstimateError,
    format_size,
    load_model_config,
    parse_size,
)
from trainer_ext.memory.estimate import MemoryEstimate, estimate_memory

__all__ = [
    "GB",
    "GIB",
    "SHIPPED_CONFIGS",
    "EstimateError",
    "MemoryEstimate",
    "estimate_memory",
    "format_size",
    "load_model_config",
    "parse_size",
]
