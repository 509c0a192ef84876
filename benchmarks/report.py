"""The report of `make bench`: derived figures (speed-ups, share of the matmul rate), ``speed.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.training import MAIN_JOB, MATMUL_SHAPES, PRECISIONS

TRAIN_TARGET = 3.0  # the main job against TRL's faster mode (issue 17; 2.0 before)
DECODING_TARGET = 3.0  # constrained scoring against generate-based evaluation
REFERENCE_SHAPE = next(iter(MATMUL_SHAPES))  # the model-shaped product
COMPUTE_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "8bit": "bfloat16", "8bit-bf16": "bfloat16"}


def compute_dtype(result: dict[str, Any]) -> str:
    """The dtype a training configuration's matmuls ran in: bf16 under bf16 autocast or with bf16 weights,
    else float32 (results from before ``bf16_autocast`` was recorded: by their precision mode)."""
    if "bf16_autocast" not in result:
        return COMPUTE_DTYPE[result["precision"]]
    return "bfloat16" if result["bf16_autocast"] or result.get("dtype") == "bfloat16" else "float32"


def _ok(result: dict[str, Any] | None) -> bool:
    return bool(result) and "error" not in result


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def matmul_shares(report: dict[str, Any]) -> dict[str, float]:
    """Each configuration's estimated FLOP rate over the measured matmul rate of its compute dtype."""
    rates = (report.get("matmul") or {}).get("gflops")
    if not rates:
        return {}
    return {
        name: round(r["estimated_gflops_per_second"] / rates[compute_dtype(r)][REFERENCE_SHAPE], 3)
        for name, r in report["training"].items()
        if _ok(r)
    }


def training_pairs(training: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours against TRL at each precision (both with their default samplers)."""
    pairs = []
    for precision in PRECISIONS:
        trl, ours = training.get(f"trl-{precision}"), training.get(f"ours-{precision}")
        if _ok(trl) and _ok(ours):
            pairs.append(
                {
                    "precision": precision,
                    "trl_samples_per_second": trl["samples_per_second"],
                    "ours_samples_per_second": ours["samples_per_second"],
                    "speedup_samples": _ratio(ours["samples_per_second"], trl["samples_per_second"]),
                    "speedup_real_tokens": _ratio(
                        ours["real_tokens_per_second"], trl["real_tokens_per_second"]
                    ),
                    "memory_ratio": _ratio(ours["peak_memory_mb"], trl["peak_memory_mb"]),
                    "speedup_whole_run": _whole_run_ratio(ours, trl),
                }
            )
    return pairs


def _whole_run_ratio(ours: dict[str, Any], trl: dict[str, Any]) -> float | None:
    """Ours over TRL in whole-run samples/s (start-up included); `None` for reports without them."""
    key = "whole_run_samples_per_second"
    return _ratio(ours[key], trl[key]) if key in ours and key in trl else None


def main_job_vs_trl(training: dict[str, Any]) -> dict[str, Any] | None:
    """The main job against TRL's faster mode (fp32 or bf16) and against the fastest TRL run of any kind."""
    main = training.get(MAIN_JOB)
    modes = {n: r for n, r in training.items() if _ok(r) and n in ("trl-fp32", "trl-bf16")}
    if not _ok(main) or not modes:
        return None
    faster = max(modes, key=lambda n: modes[n]["samples_per_second"])
    every = {n: r for n, r in training.items() if _ok(r) and r["trainer"] == "trl"}
    fastest = max(every, key=lambda n: every[n]["samples_per_second"])
    speedup = _ratio(main["samples_per_second"], modes[faster]["samples_per_second"])
    return {
        "main_job": MAIN_JOB,
        "trl_faster_mode": faster,
        "speedup": speedup,
        "target": TRAIN_TARGET,
        "met": speedup is not None and speedup >= TRAIN_TARGET,
        "trl_fastest_any": fastest,
        "speedup_vs_fastest_any": _ratio(main["samples_per_second"], every[fastest]["samples_per_second"]),
        "speedup_whole_run": _whole_run_ratio(main, modes[faster]),
    }


def decoding_summary(decoding: dict[str, Any] | None) -> dict[str, Any] | None:
    """Constrained scoring against batched generation and the plain loop: speed-up and accuracy."""
    modes = (decoding or {}).get("modes") or {}
    ours = modes.get("constrained")
    if not ours:
        return None
    summary: dict[str, Any] = {"target": DECODING_TARGET}
    for other in ("generate", "plain_generate_loop"):
        if other in modes:
            summary[f"speedup_vs_{other}"] = _ratio(
                ours["samples_per_second"], modes[other]["samples_per_second"]
            )
            summary[f"accuracy_delta_vs_{other}"] = round(ours["accuracy"] - modes[other]["accuracy"], 4)
    speedups = [v for k, v in summary.items() if k.startswith("speedup_vs_") and v is not None]
    deltas = [v for k, v in summary.items() if k.startswith("accuracy_delta_vs_")]
    summary["met"] = bool(speedups) and min(speedups) >= DECODING_TARGET and min(deltas) >= 0
    return summary


def same_batches(training: dict[str, Any]) -> dict[str, bool]:
    """For each TRL run, whether the ours run with the same precision and sampler saw batches of the same
    real-token counts (the same samples in the same order, up to tokenization at the prompt boundary)."""
    found = {}
    for name, trl in training.items():
        if not _ok(trl) or trl["trainer"] != "trl":
            continue
        for other, ours in training.items():
            if (
                _ok(ours)
                and ours["trainer"] == "ours"
                and (ours["precision"], ours["sampling"]) == (trl["precision"], trl["sampling"])
            ):
                found[f"{name} / {other}"] = ours.get("batch_real_tokens") == trl.get("batch_real_tokens")
    return found


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Every derived figure of a report (stored under ``summary`` in ``speed.json``)."""
    return {
        "matmul_share": matmul_shares(report),
        "pairs": training_pairs(report["training"]),
        "same_batches": same_batches(report["training"]),
        "main_job_vs_trl": main_job_vs_trl(report["training"]),
        "decoding": decoding_summary(report.get("decoding")),
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _training_table(report: dict[str, Any], shares: dict[str, float]) -> list[str]:
    rows = [
        "| configuration | trainer | precision | sampler | samples/s | real tokens/s "
        "| real / padded tokens per batch | s/step | peak MB | est. GFLOP/s | share of matmul rate "
        "| others' CPU | start-up s | whole-run samples/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["training"].items():
        precision = r["precision"]
        if _ok(r) and compute_dtype(r) != COMPUTE_DTYPE[precision]:  # `bf16: auto` chose float32
            precision += f" ({compute_dtype(r)})"
        head = f"| {name} | {r['trainer']} | {precision} | {r['sampling']} |"
        if not _ok(r):
            rows.append(head + " failed (see speed.json) |" + " |" * 9)
            continue
        rows.append(
            f"{head} {_fmt(r['samples_per_second'])} | {_fmt(r['real_tokens_per_second'], 0)} "
            f"| {_fmt(r['mean_real_tokens_per_batch'], 0)} / {_fmt(r['mean_padded_tokens_per_batch'], 0)} "
            f"| {_fmt(r['seconds_per_step'])} | {_fmt(r['peak_memory_mb'], 0)} "
            f"| {_fmt(r['estimated_gflops_per_second'], 1)} | {_fmt(100 * shares[name], 1)}% "
            f"| {_percent(r.get('others_cpu_share'))} | {_fmt(r.get('startup_seconds'), 1)} "
            f"| {_fmt(r.get('whole_run_samples_per_second'))} |"
        )
    return rows


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def _summary_lines(report: dict[str, Any]) -> list[str]:
    summary, lines = report["summary"], []
    main = summary["main_job_vs_trl"]
    if main:
        verdict = "met" if main["met"] else "not met"
        lines.append(
            f"- **Training**: the main job (`{main['main_job']}`) runs **{main['speedup']}x** the "
            f"samples/s of TRL's faster mode (`{main['trl_faster_mode']}`); target {main['target']}x: "
            f"**{verdict}**. Against the fastest TRL configuration measured (`{main['trl_fastest_any']}`): "
            f"{main['speedup_vs_fastest_any']}x. Start-up and all {report['warmup_steps'] + report['steps']} "
            f"steps from the process's launch (what a user waits for; the warm-up steps also count FLOPs): "
            f"{_fmt(main['speedup_whole_run'])}x."
        )
    for pair in summary["pairs"]:
        lines.append(
            f"- {pair['precision']}: ours {_fmt(pair['ours_samples_per_second'])} samples/s, TRL "
            f"{_fmt(pair['trl_samples_per_second'])}: {pair['speedup_samples']}x (real tokens/s "
            f"{pair['speedup_real_tokens']}x), start-up and all steps {_fmt(pair['speedup_whole_run'])}x, "
            f"peak memory {pair['memory_ratio']}x TRL's."
        )
    decoding = summary["decoding"]
    if decoding:
        verdict = "met" if decoding["met"] else "not met"
        lines.append(
            f"- **Decoding**: constrained scoring runs {decoding.get('speedup_vs_generate')}x batched "
            f"`generate` decoding and {decoding.get('speedup_vs_plain_generate_loop')}x a plain "
            f"`model.generate` loop; accuracy difference {decoding.get('accuracy_delta_vs_generate')} / "
            f"{decoding.get('accuracy_delta_vs_plain_generate_loop')}; target {decoding['target']}x at "
            f"equal or better accuracy: **{verdict}**."
        )
    return lines


def _decoding_table(decoding: dict[str, Any]) -> list[str]:
    rows = [
        "| decoding | samples/s | seconds | accuracy | macro-F1 | invalid answers | others' CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in decoding["modes"].items():
        rows.append(
            f"| {name} | {_fmt(m['samples_per_second'])} | {_fmt(m['seconds'], 1)} "
            f"| {_fmt(m['accuracy'], 3)} | {_fmt(m['macro_f1'], 3)} | {_percent(m['invalid_rate'])} "
            f"| {_percent(m.get('others_cpu_share'))} |"
        )
    return rows


def _profile_lines(training: dict[str, Any], top: int = 8) -> list[str]:
    lines = []
    for name, r in training.items():
        if not _ok(r) or not r.get("profile"):
            continue
        lines += [
            f"`{name}`:",
            "",
            "| operator | self ms per step | share | calls per step |",
            "|---|---|---|---|",
        ]
        for op in r["profile"][:top]:
            lines.append(
                f"| `{op['name']}` | {_fmt(op['self_ms_per_step'], 1)} | {_percent(op['share'])} "
                f"| {op['calls_per_step']} |"
            )
        lines.append("")
    return lines


def _matmul_lines(matmul: dict[str, Any]) -> list[str]:
    rows = ["| product | fp32 GFLOP/s | bf16 GFLOP/s |", "|---|---|---|"]
    for shape in matmul["gflops"]["float32"]:
        rows.append(
            f"| {shape} | {matmul['gflops']['float32'][shape]} | {matmul['gflops']['bfloat16'][shape]} |"
        )
    return [f"torch threads: {matmul['torch_threads']}.", "", *rows]


HOW_MEASURED = """\
How it is measured:

- Every configuration runs in a fresh process: the model is loaded with
`trainer_ext.modeling.loading.load_model`
  (fp32: `--quantization none --dtype float32`; bf16: `--quantization none --dtype bfloat16` with bf16
  autocast; 8bit: the main job's setting, 8-bit weights run as weight-only int8, in bf16 with bf16
  autocast where the CPU runs bf16 well (native bf16 or AVX-512: `bf16: auto`), else in float32;
  8bit-bf16: the same weights in bf16 with bf16 autocast on any CPU, the setting before `bf16: auto`).
  *ours* is `LabelTrainer` exactly as `trainer-ext train` builds it; *trl* is `SFTTrainer` with
  `completion_only_loss=True` on the same loaded (frozen) model, the same LoRA targets, rank, alpha and
  dropout through `peft_config`, the same prompt and completion strings (`task.prompt`, `task.completion`),
  batch size, optimizer, learning-rate schedule, precision and seed, and no gradient checkpointing in either.
- A step is a whole optimizer step (collation, forward, backward, optimizer). The clock starts at the end
  of the last warm-up step and stops at the end of the last timed step. *Real tokens* are the non-padding
  tokens of the batches; *padded* tokens what the model computed on. The samplers differ (ours groups
  samples of similar length, TRL draws them at random by default); the `-grouped` / `-random` ablations
  swap them, so the loss head and the batching can be judged apart.
- Peak memory = bytes of the parameters and buffers + the peak resident set size the steps add (`VmHWM`
  during training minus the resident size before it), as in `benchmarks/memory.py`. The memory of
  8-bit / 4-bit / bf16 / fp32 weights and of 8-bit Adam against AdamW is in [memory.md](memory.md).
- Share of matmul rate: matmul FLOPs per padded token counted with `torch.utils.flop_counter` on the
  warm-up steps, times the timed steps' padded tokens, per second, over the measured rate of a
  model-shaped product (first row of the matmul table) in the step's compute dtype.
- Decoding: the recipe's eval texts (HTML decoded as in training), one model, each mode warmed up on 4
  prompts first. *constrained*: `trainer_ext.inference.scoring.score_labels` (one prompt pass, the labels
  scored
  on a copy of the KV cache; the ids all prompts start with run once, their cache copied into each
  batch); *constrained_unshared*: the same with `share_prefix=False`; *generate*:
  `trainer_ext.inference.scoring.generate_labels` (batched greedy `generate`); *plain_generate_loop*: one
  prompt at
  a time, the tokenizer-encoded prompt, greedy `model.generate` with max_new_tokens = longest label + 1,
  parsed with `LabelTask.label_from_completion`.
- *start-up s*: from the launch of the measuring process (timed by the parent) to the first step: imports,
  loading, data and building the trainer. *whole-run samples/s*: the samples of the warm-up and timed
  steps over the seconds from that launch to the end of the last timed step, start-up included.
- *others' CPU*: the share of the machine's cores that other processes used while the timed steps ran
  (from `/proc/stat`); above a few percent the figures of that row are not worth much.
"""


def write_markdown(path: str | Path, report: dict[str, Any]) -> Path:
    """Write ``speed.md`` from a finished report (with its ``summary``)."""
    machine, versions = report["machine"], report["versions"]
    lines = [
        "# Training and decoding speed on the CPU",
        "",
        f"Written by `{report['command']}` on {report['date']}.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, native bf16 matmuls: "
        f"{'yes' if machine['native_bf16'] else 'no'}. "
        + ", ".join(f"{name} {v}" for name, v in versions.items())
        + ".",
        f"1-minute load average before the run: {report['load_before']}, after: {report.get('load_after')}.",
    ]
    if report["load_before"] > report["max_load"]:
        lines.append(
            f"**The machine was busy (load above {report['max_load']}); the run was forced and its timings "
            "are not reliable.**"
        )
    lines += [
        "",
        f"Main job: recipe `{Path(report['recipe']).name}`"
        + (f" with `{' '.join(report['recipe_overrides'])}`" if report["recipe_overrides"] else "")
        + f", model `{report['model']}`, {report['method']} r={report['lora_r']} "
        f"alpha={report['lora_alpha']}, batch {report['batch_size']} (accumulated over "
        f"{report.get('gradient_accumulation_steps', 1)}), optimizer `{report['optimizer']}`; "
        f"{report['warmup_steps']} warm-up + {report['steps']} timed optimizer steps per configuration.",
        "",
        "## Summary",
        "",
        *_summary_lines(report),
        "",
        "## Training steps",
        "",
        *_training_table(report, report["summary"]["matmul_share"]),
        "",
    ]
    if report["summary"].get("same_batches"):
        lines += [
            "Same batches (real tokens of every timed batch equal): "
            + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in report["summary"]["same_batches"].items())
            + ".",
            "",
        ]
    profiles = _profile_lines(report["training"])
    if profiles:
        lines += [
            "## Where the time goes",
            "",
            f"Top operators by self CPU time (torch.profiler, {report.get('profile_steps')} steps after the "
            "timed ones; matmuls show as `aten::mm` / `aten::addmm` / `aten::bmm`):",
            "",
            *profiles,
        ]
    if _ok(report.get("matmul")):
        lines += ["## Matmul rate of the machine", "", *_matmul_lines(report["matmul"]), ""]
    decoding = report.get("decoding")
    if _ok(decoding):
        lines += [
            "## Label decoding",
            "",
            f"{decoding['samples']} eval prompts, batch {decoding['batch_size']}, "
            f"model: {decoding['model']}.",
            "",
            *_decoding_table(decoding),
            "",
        ]
    elif decoding:
        lines += ["## Label decoding", "", "Failed: see `speed.json`.", ""]
    lines += ["## Method", "", HOW_MEASURED]
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
