"""`trainer-ext estimate`: the peak memory of a training step, from a model config alone (no weights).

    trainer-ext estimate --model gpt-j-6b --quantization 8bit --method lora-all --seq-len 128 \\
        --batch-size 2 --gpu-memory 11GB

`--model` takes a shipped config (gpt-j-6b, gpt-neox-20b, llama-2-7b, rugpt3-large, smollm2-135m, or
their Hub ids), a local config.json or model directory, or a Hub id (needs the network). Prints the
parts (weights, adapters, optimizer states, gradients, activations) in GB and GiB and, with
`--gpu-memory`, whether the step fits. `--json` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from trainer_ext.estimate import (
    METHODS,
    OPTIMIZERS,
    QUANTIZATIONS,
    SHIPPED_CONFIGS,
    EstimateError,
    estimate_memory,
    parse_size,
)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of `trainer-ext estimate`."""
    shipped = ", ".join(names[0] for names in SHIPPED_CONFIGS.values())
    parser = argparse.ArgumentParser(
        prog="trainer-ext estimate",
        description="Estimate the peak memory of a training step from a model config (no weights are read).",
    )
    parser.add_argument(
        "--model", required=True, help=f"shipped model ({shipped}), config.json, model directory or Hub id"
    )
    parser.add_argument("--quantization", default="8bit", choices=QUANTIZATIONS, help="weight quantization")
    parser.add_argument("--method", default="lora-all", choices=METHODS, help="training method")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per example (padded length)")
    parser.add_argument("--batch-size", type=int, default=2, help="examples per step")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    parser.add_argument(
        "--loss-tokens",
        type=int,
        help="tokens per example whose logits are computed (the label tokens with LabelTrainer); "
        "default: every position",
    )
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout")
    parser.add_argument("--optimizer", default="adamw_8bit", choices=sorted(OPTIMIZERS), help="optimizer")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="dtype of the non-quantized weights: auto, float32, bfloat16 or float16 (GPUs without bf16)",
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="where the model trains")
    parser.add_argument("--gpu-memory", help="memory of the device, e.g. 11GB (10^9 bytes) or 11GiB (2^30)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `trainer-ext estimate`; returns the exit status (2 for a user error)."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        gpu_bytes = parse_size(args.gpu_memory) if args.gpu_memory is not None else None
        estimate = estimate_memory(
            args.model,
            quantization=args.quantization,
            method=args.method,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            lora_r=args.lora_r,
            optimizer=args.optimizer,
            gradient_checkpointing=args.gradient_checkpointing,
            dtype=args.dtype,
            lora_dropout=args.lora_dropout,
            device=args.device,
            loss_tokens=args.loss_tokens,
        )
    except EstimateError as error:
        print(f"trainer-ext estimate: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        report = estimate.to_dict()
        if gpu_bytes is not None:
            report.update(gpu_memory=gpu_bytes, fits=estimate.fits(gpu_bytes))
        print(json.dumps(report, indent=2))
    else:
        print(estimate.format(gpu_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
