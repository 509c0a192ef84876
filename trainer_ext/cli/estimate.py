"""``trainer-ext estimate``: the peak memory of a training step, from a model config alone (no weights).

    trainer-ext estimate --model_name_or_path gpt-j-6b --gpu "GTX 1080 Ti"
    trainer-ext estimate --config trainer_ext/configs/recipes/gptj6b_8bit_lora_all.yaml --gpu t4
    trainer-ext estimate --model_name_or_path gpt-j-6b --max_length 128 --per_device_train_batch_size 2 \\
        --gpu_memory 11GB --dtype float16

The keys are those of a training recipe (`--config` reads model, quantization, method, LoRA, batch,
sequence length and checkpointing from one); `--gpu` picks a card's memory and the dtype it computes in.
When the step does not fit, the cheapest changes that make it fit are listed with their estimates.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from trainer_ext.memory.configs import SHIPPED_CONFIGS

SHIPPED = ", ".join(names[0] for names in SHIPPED_CONFIGS.values())


@dataclass
class EstimateArguments:
    """The keys of `trainer-ext estimate` (the recipe keys that decide memory, and the card)."""

    config: str | None = field(
        default=None, metadata={"help": "A training recipe (YAML) to read the keys below from."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": f"Shipped model ({SHIPPED}), config.json, model directory or Hub id."}
    )
    quantization: str = field(default="8bit", metadata={"help": "Weight quantization: 8bit, 4bit or none."})
    method: str = field(
        default="lora-all", metadata={"help": "Training method (lora-all, norms, full, ...)."}
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per example (padded length)."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Examples per step."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (its masks are kept)."})
    optim: str = field(default="adamw_bnb_8bit", metadata={"help": "Optimizer, as TrainingArguments.optim."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass."}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Compute dtype: auto (the card's, else bf16), float32, bfloat16 or float16."},
    )
    loss_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per example whose logits are computed (the label tokens with LabelTrainer)."
        },
    )
    device: str = field(default="cuda", metadata={"help": "Where the model trains: cuda or cpu."})
    gpu: str | None = field(
        default=None, metadata={"help": "A card (gtx-1080-ti, rtx-3060, rtx-4090, t4, a100-40gb, h100, ...)."}
    )
    gpu_memory: str | None = field(
        default=None, metadata={"help": "Memory of the device, e.g. 11GB (10^9 bytes) or 11GiB (2^30)."}
    )
    json: bool = field(default=False, metadata={"help": "Print the estimate as JSON."})


def parse(argv: list[str]) -> EstimateArguments:
    """Parse the command line over the recipe given by ``--config`` (its other keys are ignored)."""
    from transformers import HfArgumentParser

    from trainer_ext.configs import load_yaml_mapping
    from trainer_ext.memory.configs import EstimateError

    parser = HfArgumentParser(
        EstimateArguments, prog="trainer-ext estimate", description=__doc__.split("\n\n")[0]
    )
    if "--config" in argv[:-1]:
        recipe = load_yaml_mapping(argv[argv.index("--config") + 1], "Recipe file", EstimateError)
        known = {f.name for f in fields(EstimateArguments)}
        parser.set_defaults(**{key: value for key, value in recipe.items() if key in known})
    (args,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    if not args.model_name_or_path:
        raise EstimateError("Give --model_name_or_path (or --config with a recipe that names the model).")
    return args


def _report(args: EstimateArguments) -> str:
    from trainer_ext.memory import estimate_memory, format_size, parse_size
    from trainer_ext.memory.fit import assumptions, cheapest_fits, find_gpu

    gpu = find_gpu(args.gpu) if args.gpu else None
    memory = parse_size(args.gpu_memory) if args.gpu_memory else (gpu.memory if gpu else None)
    dtype = gpu.dtype if gpu and args.dtype == "auto" else args.dtype
    options = dict(
        config_or_name=args.model_name_or_path,
        quantization=args.quantization,
        method=args.method,
        seq_len=args.max_length,
        batch_size=args.per_device_train_batch_size,
        lora_r=args.lora_r,
        optimizer=args.optim,
        gradient_checkpointing=args.gradient_checkpointing,
        dtype=dtype,
        lora_dropout=args.lora_dropout,
        device=args.device,
        loss_tokens=args.loss_tokens,
    )
    estimate = estimate_memory(**options)
    if args.json:
        report = estimate.to_dict()
        if memory is not None:
            report.update(gpu_memory=memory, fits=estimate.fits(memory), gpu=gpu.name if gpu else None)
        return json.dumps(report, indent=2)
    lines = [estimate.format(memory)]
    if memory is not None and not estimate.fits(memory):
        changes = cheapest_fits(options, memory)
        lines.append(
            "\nChanges that make it fit (one change first):"
            if changes
            else "\nNo single or paired change "
            "of checkpointing, 4-bit, batch, sequence or LoRA rank makes it fit; choose a smaller model."
        )
        lines += [f"  - {change.description}: {format_size(change.estimate.total)}" for change in changes]
    lines.append("\n" + assumptions(estimate, gpu, args.device))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `trainer-ext estimate`; returns the exit status (2 for a user error)."""
    from trainer_ext.memory.configs import EstimateError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
        print(_report(args))
    except EstimateError as error:
        print(f"trainer-ext estimate: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse: --help, or a malformed value (its message is printed)
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
