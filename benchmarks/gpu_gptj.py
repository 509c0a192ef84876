"""Peak GPU memory and step time of 8-bit LoRA training of a GPT-J-6B-shaped model, against the estimate.

The model is `GPTJConfig()` (the GPT-J-6B shapes) with random weights: nothing is downloaded. It is built
in float16 directly on the GPU, saved as a regular checkpoint, and loaded back through the project's own
path, `trainer_ext.modeling.loading.load_model(..., quantization="8bit", method="lora-all")`, so the int8
weights
come from bitsandbytes' quantization at load time, as for a user's checkpoint. Training uses
bitsandbytes' `Adam8bit` on random token batches (sequence length 128, batch 2 by default), first without
and then with gradient checkpointing. Reported per run: `torch.cuda.max_memory_allocated` (and the
allocator's reserved peak) over the steps, the median step time, and `trainer_ext.memory.estimate`'s figure
for
the same configuration. Two variants: the non-quantized weights (embeddings, norms, output layer) in
bfloat16, or in float16, which `trainer_ext.modeling.methods` has PEFT upcast to fp32 for training, as on GPUs
without bf16 (the 11 GB GTX 1080 Ti / RTX 2080 Ti of the study).
``--trace`` adds, per run, what is live at the peak of one step, grouped by the code that allocated it.
Needs a CUDA GPU with about 14 GB free and 13 GB of disk for the checkpoint.

    python -m benchmarks.gpu_gptj --trace          # results: docs/benchmarks/gpu_gptj.json and .md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import sys
import time
from pathlib import Path

logger = logging.getLogger("gpu_gptj")
from benchmarks.common import DATA_DIR, REPO_ROOT  # noqa: E402


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokenizer",
        default=str(DATA_DIR.parent / "tokenizers" / "gptj"),
        help="Directory of the GPT-J tokenizer (saved beside the random checkpoint).",
    )
    parser.add_argument(
        "--checkpoint_dir",
        default="/tmp/gptj-6b-random",
        help="Where the random float16 checkpoint is written (about 12 GB); reused if present.",
    )
    parser.add_argument(
        "--out",
        default=str(REPO_ROOT / "docs" / "benchmarks" / "gpu_gptj.json"),
        help="JSON file for the results (rewritten after each stage).",
    )
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per example.")
    parser.add_argument("--batch_size", type=int, default=2, help="Examples per step.")
    parser.add_argument(
        "--steps", type=int, default=6, help="Training steps per run (the first is not timed)."
    )
    parser.add_argument("--lora_r", type=int, default=8, help="LoRA rank.")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="dtype of the non-quantized weights: bf16, or fp16 (upcast to fp32 for training).",
    )
    parser.add_argument(
        "--reestimate",
        action="store_true",
        help="Only recompute the estimates in the --out file (no GPU needed).",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="Also record one step per run and report what is live at its peak, by allocation site.",
    )
    return parser


def _gib(num_bytes: float) -> float:
    return round(num_bytes / 2**30, 3)


def build_checkpoint(path: Path, tokenizer_dir: str) -> None:
    """Save a GPT-J-6B-shaped model with random float16 weights, built on the GPU (no host copy in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTJConfig

    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        logger.info("reusing the random checkpoint in %s", path)
        return
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(GPTJConfig(), dtype=torch.float16)
    model.save_pretrained(path, max_shard_size="2GB")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def _batch(vocab_size: int, batch_size: int, seq_len: int):
    import torch

    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), device="cuda")
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, seq_len - seq_len // 8 :] = 0  # right padding on all but the first example
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_steps(model, optimizer, batch: dict, steps: int) -> dict:
    """Run `steps` training steps; peak memory over all of them, median time of all but the first."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(round(loss.item(), 4))
        # As in Trainer.training_step, the graph goes with the step: bitsandbytes keeps its inputs in
        # autograd context attributes, which a live `loss` would hold into the next step.
        del loss
    tokens = batch["input_ids"].numel()
    step_s = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_allocated_gib": _gib(torch.cuda.max_memory_allocated()),
        "peak_reserved_gib": _gib(torch.cuda.max_memory_reserved()),
        "step_seconds_median": round(step_s, 4),
        "step_seconds_all": [round(t, 4) for t in times],
        "tokens_per_second": round(tokens / step_s, 1),
        "losses": losses,
    }


def _site(frames: list[dict]) -> str:
    """The innermost frame of an allocation's stack that lies in model code rather than in torch itself."""
    for frame in frames:
        name = frame.get("filename", "")
        if name.endswith(".py") and "/torch/" not in name:
            return f"{'/'.join(name.split('/')[-2:])}:{frame.get('line')} {frame.get('name')}"
    return "torch internals"


def peak_breakdown(model, optimizer, batch: dict, top: int = 12) -> dict:
    """Record one training step's allocations; what is live at the step's peak, grouped by allocation site."""
    import collections

    import torch

    torch.cuda.memory._record_memory_history(max_entries=500_000)
    train_steps(model, optimizer, batch, 1)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    events = [e for e in snapshot["device_traces"][0] if e["action"] in ("alloc", "free_completed")]
    current = peak = peak_index = 0
    for index, event in enumerate(events):  # first pass: when is the peak
        current += event["size"] if event["action"] == "alloc" else -event["size"]
        if current > peak:
            peak, peak_index = current, index
    live: dict[int, dict] = {}
    for event in events[: peak_index + 1]:  # second pass: what is live then
        if event["action"] == "alloc":
            live[event["addr"]] = event
        else:
            live.pop(event["addr"], None)
    sites = collections.Counter()
    for event in live.values():
        sites[_site(event.get("frames", []))] += event["size"]
    return {
        "step_peak_above_start_gib": _gib(peak),
        "live_at_peak_by_site_gib": {site: _gib(size) for site, size in sites.most_common(top)},
    }


def _estimate(args, gradient_checkpointing: bool, dtype: str) -> dict:
    from transformers import GPTJConfig

    from trainer_ext.memory.estimate import estimate_memory

    estimate = estimate_memory(
        GPTJConfig(),
        quantization="8bit",
        method="lora-all",
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lora_r=args.lora_r,
        optimizer="adamw_8bit",
        gradient_checkpointing=gradient_checkpointing,
        device="cuda",
        dtype=dtype,
    )
    return {**estimate.to_dict(), "total_gib": _gib(estimate.total)}


def _environment() -> dict:
    import bitsandbytes
    import peft
    import torch
    import transformers

    props = torch.cuda.get_device_properties(0)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": props.name,
        "gpu_memory_gib": _gib(props.total_memory),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }


def _write(out: Path, results: dict) -> None:
    """Write the JSON results and, beside them, the Markdown table (same name, ``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")


def markdown(results: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        "# GPT-J-6B-shaped model, 8-bit + LoRA (lora-all) + Adam8bit on a GPU\n",
        f"Written by `python -m benchmarks.gpu_gptj` on {results['date']}, {results['gpu']} "
        f"({results['gpu_memory_gib']} GiB); torch {results['torch']} (CUDA {results['cuda']}), transformers "
        f"{results['transformers']}, peft {results['peft']}, bitsandbytes {results['bitsandbytes']}. "
        f"{results['model']}; sequence length {results['seq_len']}, batch {results['batch_size']}, "
        f"LoRA r={results['lora_r']}. Peak = `torch.cuda.max_memory_allocated` over the steps; "
        "GB = 10^9 bytes, GiB = 2^30 bytes. Error = (estimate - measured) / measured.\n",
        "| non-quantized weights | gradient checkpointing | peak GB (GiB) | estimate GB | error "
        "| weights after loading GiB | step s | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        dtype = "fp16, upcast to fp32" if run["variant"] == "fp16" else run["variant"]
        lines.append(
            f"| {dtype} | {'yes' if run['gradient_checkpointing'] else 'no'} "
            f"| {run['peak_allocated_bytes'] / 1e9:.2f} ({run['peak_allocated_gib']:.2f}) "
            f"| {run['estimate']['total'] / 1e9:.2f} | {run['estimate_error_percent']:+.1f}% "
            f"| {run['loaded_allocated_gib']:.2f} | {run['step_seconds_median']:.3f} "
            f"| {run['tokens_per_second']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _add_estimate(run: dict, args) -> dict:
    run["estimate"] = _estimate(args, run["gradient_checkpointing"], VARIANTS[run["variant"]])
    measured = run["peak_allocated_bytes"]
    run["estimate_error_percent"] = round(100 * (run["estimate"]["total"] - measured) / measured, 1)
    return run


def load(path: str, lora_r: int, dtype: str):
    """The project's path: `load_model`, int8 weights, `lora-all` adapters, the other weights in `dtype`."""
    from trainer_ext.modeling.loading import load_model
    from trainer_ext.modeling.methods import LoraSettings

    return load_model(
        path, quantization="8bit", lora=LoraSettings(lora_r=lora_r), dtype=dtype, device="cuda"
    ).model


# Variant -> dtype of the non-quantized weights. In float16, `trainer_ext.modeling.methods` lets PEFT
# upcast them
# (and so the activations) to fp32, as on GPUs without bf16 such as the 11 GB cards; bfloat16 stays bf16.
VARIANTS = {"bf16": "bfloat16", "fp16": "float16"}
ESTIMATE_KEYS = ("seq_len", "batch_size", "lora_r")


def run_variant(name: str, args, results: dict, out: Path) -> None:
    """Load one variant, train without and with gradient checkpointing, record both runs."""
    import bitsandbytes as bnb
    import torch

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = load(args.checkpoint_dir, args.lora_r, VARIANTS[name])
    torch.cuda.synchronize()
    loading = {
        "load_seconds": round(time.perf_counter() - start, 1),
        "loaded_allocated_gib": _gib(torch.cuda.memory_allocated()),
        "load_peak_allocated_gib": _gib(torch.cuda.max_memory_allocated()),
    }
    model.train()
    optimizer = bnb.optim.Adam8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = _batch(model.config.vocab_size, args.batch_size, args.seq_len)
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        run = {
            "variant": name,
            "gradient_checkpointing": checkpointing,
            **loading,
            **train_steps(model, optimizer, batch, args.steps),
        }
        if args.trace:
            run["peak_breakdown"] = peak_breakdown(model, optimizer, batch)
        results["runs"].append(_add_estimate(run, args))
        logger.info("%s, gradient checkpointing %s: %s", name, checkpointing, json.dumps(run)[:600])
        _write(out, results)
    del model, optimizer
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # bitsandbytes warns on every int8 matmul that it casts fp32 inputs to fp16 for quantization.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.reestimate:
        results = json.loads(Path(args.out).read_text(encoding="utf-8"))
        for run in results["runs"]:
            _add_estimate(run, argparse.Namespace(**{**vars(args), **{k: results[k] for k in ESTIMATE_KEYS}}))
        _write(Path(args.out), results)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_gptj.py: no CUDA device; this benchmark needs a GPU.", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = {
        **_environment(),
        "model": "GPTJConfig() (GPT-J-6B shapes), random weights",
        "quantization": "8bit",
        "method": "lora-all",
        "optimizer": "bitsandbytes Adam8bit",
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "lora_r": args.lora_r,
        "runs": [],
    }
    start = time.perf_counter()
    build_checkpoint(Path(args.checkpoint_dir), args.tokenizer)
    results["build_seconds"] = round(time.perf_counter() - start, 1)
    for name in args.variants:
        run_variant(name, args, results, out)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
