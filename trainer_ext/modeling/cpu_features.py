"""What the CPU computes natively, for the choices that depend on it (dtype, autocast, int8 matmul path).

Kept apart from `trainer_ext.modeling.loading` so that `trainer_ext.modeling.int8_cpu`, which loading
imports, can ask too.
"""

from __future__ import annotations


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), making bf16 faster than fp32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_capability() -> str:
    """The vector instruction set PyTorch's CPU kernels dispatch to here: ``"AVX512"``, ``"AVX2"``, or
    another name on other CPUs (`torch.backends.cpu.get_cpu_capability`)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_supports_avx512() -> bool:
    """Whether this CPU has AVX-512 (PyTorch's check of the hardware, `torch.cpu._is_avx512_supported`)."""
    import torch

    return getattr(torch.cpu, "_is_avx512_supported", lambda: False)()


def cpu_bf16_is_slow() -> bool:
    """Whether bf16 matmuls on this CPU are so slow that float32 should be computed instead.

    True without native bf16 and without AVX-512: AVX2-only x86 CPUs, which most laptops have, where
    PyTorch 2.13 has no fast bf16 matmul, and CPUs of other architectures (ARM), which were not measured and
    get float32 as the safe choice. On a 2-core AMD EPYC with AVX2 only, a
    2048x576 @ 576x1536 product ran at 13.1 GFLOP/s in bf16 against 113.8 in float32, and a step of the
    main job took 83.1 s with bf16 autocast against 9.1 s in float32 (``python -m benchmarks.speed --only
    ours-8bit ours-8bit-bf16``; README, "Precision on CPUs without AVX-512").
    With AVX-512 but no native bf16 the conversion is vectorized: float32 trained 1.4x faster there, but
    bf16 keeps the peak memory lower, so it stays the default.

    Returns:
        `bool`: True where neither `cpu_supports_bf16` nor AVX-512 is available.
    """
    return not (cpu_supports_bf16() or cpu_supports_avx512())
