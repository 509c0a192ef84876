"""Logging of the command lines: one format, and the known, harmless warnings of the libraries silenced.

Only the entry points call `setup_logging`. The library itself changes global logging and warnings only
narrowly: a filter on one bitsandbytes record (`trainer_ext/__init__.py`), and PEFT's warnings about what
it handles while adapters are added or loaded (`trainer_ext.modeling.methods.handled_peft_warnings`).
"""

from __future__ import annotations

import logging
import re
import warnings

from trainer_ext.modeling.methods import HANDLED_PEFT_WARNINGS

#: Warnings every command met on a CPU machine that say nothing a user can act on, with the reason.
KNOWN_HARMLESS_WARNINGS = (
    # bitsandbytes looks for optional fused CPU kernels; the int8 path here does not use them.
    r".*Failed to load CPU gemm_4bit_forward.*",
    # DataLoader asks for pinned memory, which has no meaning without an accelerator.
    r".*'pin_memory' argument is set as true but no accelerator is found.*",
    # PEFT's warnings about what modeling.methods handles (also silenced there, while adapters load).
    *(re.escape(start) for start in HANDLED_PEFT_WARNINGS),
)
KNOWN_HARMLESS_LOGGERS = {
    # bitsandbytes logs the same missing-kernel note at import.
    "bitsandbytes.cextension": logging.ERROR,
}


def setup_logging(main_process: bool = True) -> None:
    """Log INFO from the main process (WARNING from others) and hide the known, harmless warnings.

    Args:
        main_process (`bool`, *optional*, defaults to `True`): Whether this is the main (rank 0) process.
    """
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO if main_process else logging.WARNING,
    )
    transformers.utils.logging.set_verbosity_warning()
    for pattern in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, level in KNOWN_HARMLESS_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
