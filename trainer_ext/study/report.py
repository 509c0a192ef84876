"""What a study writes: `compare.md` (tables, targets, notes), `compare.json` and the chart `compare.png`."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from trainer_ext.study.runner import Study

MARKDOWN_FILE = "compare.md"
JSON_FILE = "compare.json"
CHART_FILE = "compare.png"
#: "Clearly above" the base model, for the transfer target: an accuracy gain of at least this much.
TRANSFER_MARGIN = 0.10
LORA_ALL_TARGET = 0.80


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _scores(scores: dict[str, float] | None) -> list[str]:
    if not scores:
        return ["—", "—", "—"]
    return [_fmt(scores["accuracy"]), _fmt(scores["macro_f1"]), _fmt(scores["invalid_rate"])]


def rows_table(study: Study) -> str:
    """The main table: one line per row."""
    header = (
        "| row | trainable params | epochs | train time (s) | train samples/s | peak memory (MiB) "
        "| accuracy | macro-F1 | invalid | accuracy (generate) | macro-F1 (generate) | invalid (generate) |"
    )
    lines = [header, "|" + "---|" * 12]
    for row in study.rows:
        if row.status != "ok":
            lines.append(f"| {row.name} | {row.status}: {row.note} |" + " |" * 10)
            continue
        cells = [
            row.name,
            _fmt(row.trainable_params),
            _fmt(row.epochs, 2) if row.epochs else "—",
            _fmt(row.train_runtime, 1),
            _fmt(row.train_samples_per_second, 2) if row.train_runtime else "—",
            _fmt(row.peak_memory_mb, 0),
            *_scores(row.constrained),
            *_scores(row.generate),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def transfer_table(study: Study) -> str:
    """The transfer table: one line per model and prompt."""
    lines = [
        "| model | prompt | accuracy | macro-F1 | accuracy, calibrated | macro-F1, calibrated "
        "| accuracy (generate) | invalid (generate) |",
        "|" + "---|" * 8,
    ]
    for result in study.transfer:
        generate = result.generate or {}
        lines.append(
            f"| {result.model} | {result.prompt} | {_fmt(result.constrained['accuracy'])} "
            f"| {_fmt(result.constrained['macro_f1'])} | {_fmt(result.calibrated['accuracy'])} "
            f"| {_fmt(result.calibrated['macro_f1'])} | {_fmt(generate.get('accuracy'))} "
            f"| {_fmt(generate.get('invalid_rate'))} |"
        )
    return "\n".join(lines)


def _acc(scores: dict[str, float] | None) -> float | None:
    return None if not scores else scores["accuracy"]


def _target(name: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": met}


def targets(study: Study) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figures and whether it is met (`None`: not measured)."""
    found = []
    lora = study.row("lora-all")
    acc = _acc(lora.constrained) if lora and lora.status == "ok" else None
    found.append(
        _target(
            f"lora-all accuracy >= {LORA_ALL_TARGET:.2f}",
            f"{_fmt(acc)} (constrained), {_fmt(_acc(lora.generate) if lora else None)} (generate)",
            None if acc is None else acc >= LORA_ALL_TARGET,
        )
    )
    zero, calibrated = study.row("zero-shot"), study.row("zero-shot-calibrated")
    a, b = (_acc(zero.constrained) if zero else None), (_acc(calibrated.constrained) if calibrated else None)
    found.append(
        _target(
            "calibrated zero-shot beats zero-shot on moderation",
            f"{_fmt(b)} vs {_fmt(a)}",
            None if a is None or b is None else b > a,
        )
    )
    for prompt in dict.fromkeys(r.prompt for r in study.transfer):
        base = next((r for r in study.transfer if r.model == "base" and r.prompt == prompt), None)
        if base is None:
            continue
        found.append(
            _target(
                f"calibrated zero-shot beats zero-shot on the topics ({prompt} prompt)",
                f"{_fmt(base.calibrated['accuracy'])} vs {_fmt(base.constrained['accuracy'])}",
                base.calibrated["accuracy"] > base.constrained["accuracy"],
            )
        )
        for trained in (r for r in study.transfer if r.model != "base" and r.prompt == prompt):
            gain = trained.constrained["accuracy"] - base.constrained["accuracy"]
            found.append(
                _target(
                    f"{trained.model} on the topics clearly above the base model ({prompt} prompt, "
                    f"gain >= {TRANSFER_MARGIN:.2f})",
                    f"{_fmt(trained.constrained['accuracy'])} vs {_fmt(base.constrained['accuracy'])} "
                    f"(calibrated: {_fmt(trained.calibrated['accuracy'])} vs "
                    f"{_fmt(base.calibrated['accuracy'])})",
                    gain >= TRANSFER_MARGIN,
                )
            )
    return found


def _notes(study: Study) -> list[str]:
    s = study.settings
    info = study.info
    epochs = {r.name: r.epochs for r in study.rows if r.epochs}
    notes = [
        f"Model `{info.get('model')}`, {info.get('quantization')} weights (the `full` row trains unquantized "
        f"weights); recipe `{info.get('recipe')}`; {study.train_samples} training and {study.eval_samples} "
        "evaluation examples.",
        f"Seed {s['seed']} for training and every sample (few-shot draw, transfer sample, baseline solver).",
        "Epochs per trained row: " + ", ".join(f"{k} {v:g}" for k, v in epochs.items()) + "."
        if epochs
        else "No trained rows.",
        f"Few-shot: {s['shots']} example(s) per label drawn from the training split, in shuffled order.",
        "Constrained decoding scores every label's completion and takes the most probable: never invalid. "
        "Generate decoding is greedy; an answer that is not a label counts as invalid (and wrong).",
        "Calibrated rows divide the label probabilities by those of content-free inputs (`N/A`, an empty "
        "message, `[MASK]`) and renormalise (Zhao et al. 2021); they reuse the uncalibrated row's scores.",
        "Peak memory: peak resident set size of the process that produced the row (a `trainer-ext train` "
        "subprocess per trained row; the study process, after loading the frozen model and scoring all "
        "frozen rows, for the zero-/few-shot rows); the baseline's is its traced allocations.",
    ]
    if study.transfer:
        notes.append(
            f"Transfer: {study.transfer_samples} headlines of `{s['transfer_file']}` (column "
            f"`{s['transfer_text_column']}`), balanced over {', '.join(study.transfer_labels)}; chance is "
            f"{1 / len(study.transfer_labels):.2f}. Prompts: "
            + "; ".join(f"`{name}`" for name in s["transfer_prompts"])
            + " (see `trainer_ext.study.settings`)."
        )
    for row in study.rows:
        if row.status == "ok" and row.note:
            notes.append(f"`{row.name}`: {row.note}.")
    notes.append(
        f"Wall time of this run (reused rows not retrained): {info.get('wall_seconds', 0) / 60:.1f} min; "
        f"{platform.machine()}, {info.get('cpus')} CPU(s), device {info.get('device')}."
    )
    return notes


def render_markdown(study: Study, command: str) -> str:
    """The whole report as Markdown."""
    parts = [
        "# Study: ways to turn a causal LM into a classifier",
        f"Command: `{command}`",
        "## Moderation (hate / offensive / neutral)",
        rows_table(study),
    ]
    if study.transfer:
        parts += ["## Transfer to unseen labels (news topics, zero-shot)", transfer_table(study)]
    parts += [
        "## Targets",
        "\n".join(
            f"- {'met' if t['met'] else 'MISSED' if t['met'] is False else 'not measured'}: {t['target']}: "
            f"{t['measured']}"
            for t in targets(study)
        ),
    ]
    parts += ["## Notes", "\n".join(f"- {note}" for note in _notes(study)), f"![chart]({CHART_FILE})"]
    return "\n\n".join(parts) + "\n"


def plot_chart(study: Study, path: Path) -> Path:
    """Bar chart: moderation accuracy and macro-F1 per row; topic accuracy per model and prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in study.rows if r.status == "ok"]
    panels = 2 if study.transfer else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    series = [("accuracy", "constrained"), ("macro_f1", "constrained"), ("accuracy", "generate")]
    width = 0.8 / len(series)
    for i, (metric, mode) in enumerate(series):
        values = [(getattr(r, mode) or {}).get(metric, 0.0) for r in rows]
        label = f"{metric.replace('_', '-')} ({mode})"
        ax.bar([x + (i - 1) * width for x in range(len(rows))], values, width, label=label)
    ax.axhline(1 / max(len(study.info.get("labels", [])), 1), color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=35, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"Moderation, {study.eval_samples} validation tweets")
    ax.legend(fontsize=8)
    if study.transfer:
        ax = axes[0][1]
        names = list(dict.fromkeys(r.model for r in study.transfer))
        keys = [(p, c) for p in dict.fromkeys(r.prompt for r in study.transfer) for c in (False, True)]
        width = 0.8 / len(keys)
        for i, (prompt, calibrated) in enumerate(keys):
            values = []
            for name in names:
                hit = next((r for r in study.transfer if r.model == name and r.prompt == prompt), None)
                values.append((hit.calibrated if calibrated else hit.constrained)["accuracy"] if hit else 0.0)
            offset = (i - (len(keys) - 1) / 2) * width
            label = f"{prompt}{', calibrated' if calibrated else ''}"
            ax.bar([x + offset for x in range(len(names))], values, width, label=label)
        ax.axhline(1 / len(study.transfer_labels), color="grey", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"Unseen topics, {study.transfer_samples} headlines (accuracy)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(study: Study, output_dir: str | Path, command: str) -> dict[str, Path]:
    """Write `compare.md`, `compare.json` and `compare.png` into `output_dir`; returns their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": output_dir / MARKDOWN_FILE,
        "json": output_dir / JSON_FILE,
        "chart": output_dir / CHART_FILE,
    }
    paths["markdown"].write_text(render_markdown(study, command), encoding="utf-8")
    data = study.to_dict() | {"command": command, "targets": targets(study)}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    plot_chart(study, paths["chart"])
    return paths
