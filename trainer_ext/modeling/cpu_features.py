"""What the CPU computes natively, for the choices that depend on it (dtype, int8 matmul path).

Kept apart from `trainer_ext.modeling.loading` so that `trainer_ext.modeling.int8_cpu`, which loading
imports, can ask too.
"""

from __future__ import annotations


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), making bf16 faster than fp32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
