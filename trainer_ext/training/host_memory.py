"""Host memory of CPU training: hand freed tensor memory back to the system instead of keeping it in the heap;
read a process's resident sizes (`status_kib`).

glibc's malloc serves a request of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB to start with) with a
mapping of its own, returned to the system on free. But the threshold is dynamic: each time such a block
is freed, the threshold rises to its size (up to 32 MiB on 64-bit), so after the first step of training
most activation and gradient tensors come from the heap instead, and freed heap memory stays resident.
bf16 matmuls over 109 sequence lengths (as length-grouped batches make them) grew the resident set by 245
MB with the dynamic threshold and by 31 MB with it fixed at 128 KiB. Fixing the threshold turns the
dynamic adjustment off (glibc manual, "Memory Allocation Tunables"; mallopt(3)).

The threshold is a trade, which is why `release_host_memory` is off by default in `LabelArguments`:
every mapping is zero-filled page by page by the kernel when first touched. Over 10 steps
(`docs/benchmarks/training_memory_malloc/`) 128 KiB made a step 50% slower for 218 MB less peak, and 1 MiB
7% slower for 59 MB less. Alone, over the whole 250-step job, 1 MiB still peaked at 1,779 MB
(`docs/benchmarks/job_memory.md`), against 1,759 MB for a run with the dynamic threshold; together with
``pad_to_multiple_of: 16`` (fewer distinct batch shapes) the whole job peaked at 1,454 MB
(`docs/benchmarks/job_memory_pad16/`), so the main recipe sets both.

Blocks under the threshold still come from the heap, whose freed pages stay resident after a long batch.
`release_host_memory` therefore also trims the heap after every optimizer step (`trim_heap`): over the
whole job on a 2-core AMD EPYC the peak went from 1,628 to 1,569 MB, and the training time from 545 to
534 s (`docs/benchmarks/job_memory_epyc/`, `job_memory_epyc_trim/`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from pathlib import Path

logger = logging.getLogger(__name__)

#: ``M_MMAP_THRESHOLD`` of ``<malloc.h>``.
M_MMAP_THRESHOLD = -3
#: Requests of this many bytes or more get a mapping of their own (glibc starts at 128 KiB).
DEFAULT_THRESHOLD = 1024 * 1024
ENVIRONMENT_VARIABLE = "MALLOC_MMAP_THRESHOLD_"


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc, loaded once (`find_library` runs ``ldconfig``), else None."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold of this process at `threshold` bytes (see the module docstring).

    Does nothing where the C library is not glibc, or when the environment sets the threshold already
    (``MALLOC_MMAP_THRESHOLD_``, or ``mmap_threshold`` in ``GLIBC_TUNABLES``: the user's own choice). The
    setting holds for the whole process until it exits; nothing here undoes it.

    Args:
        threshold (`int`, *optional*, defaults to 1048576): Bytes from which a request gets its own mapping.

    Returns:
        `bool`: whether the threshold was set.
    """
    user_set = ENVIRONMENT_VARIABLE in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")
    libc = _glibc()
    if user_set or libc is None:
        return False
    try:
        done = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except AttributeError:
        return False
    if done:
        logger.debug("glibc mmap threshold fixed at %d bytes", threshold)
    return done


def trim_heap() -> bool:
    """Give the free memory of glibc's heap back to the system (``malloc_trim(0)``), now.

    The fixed mmap threshold sends only blocks of 1 MiB or more to mappings of their own. Smaller tensors
    come from the heap, and after a long batch the heap keeps the pages its freed tensors used: the main job's
    resident memory rose in steps after each of its longest batches and stayed there. Since glibc 2.8,
    ``malloc_trim`` also releases whole free pages inside the heap, not only at its top (malloc_trim(3)).
    The pages are faulted in again, zero-filled, when the next step needs them.

    Returns:
        `bool`: whether memory was given back (False where the C library is not glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    try:
        return bool(libc.malloc_trim(0))
    except AttributeError:
        return False


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` field (``VmRSS``, ``VmHWM``) in KiB, of this process by default.

    Raises:
        `FileNotFoundError`: when process `pid` is gone, or there is no ``/proc`` (not Linux);
        `RuntimeError`: when the field is missing (memory is measured on Linux only).
    """
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}; memory is measured on Linux only.")
