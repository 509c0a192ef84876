""" "Does it fit on my GPU?": the cards users have, and the cheapest changes that make a step fit.

A card's memory and whether it computes in bf16 decide the answer: the reference study's GTX 1080 Ti
(Pascal) has no bf16, so its activations and non-quantized weights are fp16, and PEFT upcasts the
non-quantized weights of a quantized model to fp32 there. Memory sizes are the cards' nominal ones
(vendor specification sheets, in GiB as the drivers report them).

>>> GPUS["gtx-1080-ti"].dtype, GPUS["a100-40gb"].dtype
('float16', 'bfloat16')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trainer_ext.memory.configs import GIB, EstimateError
from trainer_ext.memory.estimate import MemoryEstimate, estimate_memory


@dataclass(frozen=True)
class GPU:
    """A graphics card: its memory and whether it computes in bfloat16.

    Args:
        name (`str`): The card's name.
        memory (`int`): Its memory in bytes.
        bf16 (`bool`): Native bfloat16 (NVIDIA Ampere and newer); without it training runs in float16.
    """

    name: str
    memory: int
    bf16: bool

    @property
    def dtype(self) -> str:
        """The dtype training computes in on this card."""
        return "bfloat16" if self.bf16 else "float16"


GPUS: dict[str, GPU] = {
    "gtx-1080-ti": GPU("NVIDIA GeForce GTX 1080 Ti", 11 * GIB, False),
    "rtx-2080-ti": GPU("NVIDIA GeForce RTX 2080 Ti", 11 * GIB, False),
    "rtx-3060": GPU("NVIDIA GeForce RTX 3060 12 GB", 12 * GIB, True),
    "rtx-3090": GPU("NVIDIA GeForce RTX 3090", 24 * GIB, True),
    "rtx-4090": GPU("NVIDIA GeForce RTX 4090", 24 * GIB, True),
    "t4": GPU("NVIDIA T4", 16 * GIB, False),
    "v100-16gb": GPU("NVIDIA V100 16 GB", 16 * GIB, False),
    "a10g": GPU("NVIDIA A10G", 24 * GIB, True),
    "l4": GPU("NVIDIA L4", 24 * GIB, True),
    "a100-40gb": GPU("NVIDIA A100 40 GB", 40 * GIB, True),
    "a100-80gb": GPU("NVIDIA A100 80 GB", 80 * GIB, True),
    "h100": GPU("NVIDIA H100 80 GB", 80 * GIB, True),
}


def find_gpu(name: str) -> GPU:
    """The card called `name` (case, spaces and dashes ignored: ``"GTX 1080 Ti"``, ``"a100-40gb"``).

    Raises:
        `EstimateError`: for a card not in `GPUS`, listing those that are.
    """
    key = "-".join(name.lower().replace("_", " ").replace("-", " ").split())
    key = key.removeprefix("nvidia-").removeprefix("geforce-")
    if key in GPUS:
        return GPUS[key]
    raise EstimateError(
        f"GPU {name!r} is not in the table; choose one of {', '.join(GPUS)}, or give its memory with "
        "--gpu_memory (e.g. 11GB) and the dtype it computes in with --dtype (float16 without bf16)."
    )


@dataclass
class Change:
    """One change to the estimated configuration and what the step then needs.

    Args:
        description (`str`): What to change, as the recipe key to set.
        estimate (`MemoryEstimate`): The estimate with the change.
    """

    description: str
    estimate: MemoryEstimate


def _candidates(options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Single changes that save memory, cheapest in speed or quality first."""
    out: list[tuple[str, dict[str, Any]]] = []
    if not options.get("gradient_checkpointing"):
        out.append(("gradient_checkpointing: true (about a third slower)", {"gradient_checkpointing": True}))
    if options.get("quantization") == "8bit" and options.get("method") != "full":
        out.append(("quantization: 4bit (NF4)", {"quantization": "4bit"}))
    batch = options.get("batch_size", 1)
    if batch > 1:
        half = batch // 2
        out.append(
            (
                f"per_device_train_batch_size: {half} with gradient_accumulation_steps doubled",
                {"batch_size": half},
            )
        )
    seq_len = options.get("seq_len", 128)
    if seq_len > 64:
        out.append((f"max_length: {seq_len // 2}", {"seq_len": seq_len // 2}))
    lora_r = options.get("lora_r", 8)
    if lora_r > 2 and options.get("method", "").startswith("lora"):
        out.append(("lora_r: 2", {"lora_r": 2}))
    return out


def cheapest_fits(options: dict[str, Any], memory: int, limit: int = 5) -> list[Change]:
    """The single changes, then pairs of them, that make a step fit into `memory` bytes.

    Args:
        options (`dict`): Keyword arguments of `estimate_memory` (model included as `config_or_name`).
        memory (`int`): The card's memory in bytes.
        limit (`int`, *optional*, defaults to 5): At most this many changes are returned.

    Returns:
        `list[Change]`: changes that fit, single changes first, each with its estimate.
    """
    candidates = _candidates(options)
    combos: list[tuple[str, dict[str, Any]]] = list(candidates)
    for i, (first, a) in enumerate(candidates):
        for second, b in candidates[i + 1 :]:
            combos.append((f"{first} and {second}", {**a, **b}))
    found: list[Change] = []
    for description, change in combos:
        estimate = estimate_memory(**{**options, **change})
        if estimate.fits(memory):
            found.append(Change(description, estimate))
        if len(found) >= limit:
            break
    return found


def assumptions(estimate: MemoryEstimate, gpu: GPU | None, device: str) -> str:
    """The assumptions of an answer, in one paragraph."""
    where = f"{gpu.name} ({'bf16' if gpu.bf16 else 'no bf16: fp16'})" if gpu else device
    fields = dataclasses.asdict(estimate)
    return (
        f"Assumed: {where}; {fields['dtype']} compute; sequences of {estimate.seq_len} tokens padded, batch "
        f"{estimate.batch_size}; the optimizer's states and the gradients of the trained weights alive with "
        "the activations; 1 GiB kept for the CUDA context and allocator. Estimates were within a few percent "
        "of measured peaks (docs/benchmarks/README.md)."
    )
