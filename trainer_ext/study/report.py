"""What a study writes: `compare.md` (tables, targets, notes), `compare.json` and the chart `compare.png`.

A row run over several training seeds shows the mean ± the standard deviation of each score (the runs
of every seed are in `compare.json`, and points on the chart); the transfer results likewise.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from trainer_ext.study.runner import Study
from trainer_ext.study.scoring import TransferResult, combine_scores, standard_error
from trainer_ext.study.settings import HEAD_ROW, SEEDED_ROWS

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


def _cell(scores: dict[str, float] | None, std: dict[str, float] | None, key: str) -> str:
    """A score, with ``± std`` when it is a mean over seeds."""
    if not scores or scores.get(key) is None:
        return "—"
    spread = (std or {}).get(key)
    return _fmt(scores[key]) + (f" ± {spread:.3f}" if spread is not None else "")


def _scores(scores: dict[str, float] | None, std: dict[str, float] | None = None) -> list[str]:
    return [_cell(scores, std, key) for key in ("accuracy", "macro_f1", "invalid_rate")]


def transfer_summary(study: Study) -> list[tuple[TransferResult, dict[str, dict[str, float] | None]]]:
    """The transfer results by model and prompt: the mean over seeds and the standard deviations.

    Returns:
        `list[tuple[TransferResult, dict]]`: per model and prompt, in order of appearance, a `TransferResult`
        of the mean scores (no seed) and the standard deviation of each part (``"constrained"``,
        ``"calibrated"``, ``"generate"``; `None` for a single run).
    """
    groups: dict[tuple[str, str], list[TransferResult]] = {}
    for result in study.transfer:
        groups.setdefault((result.model, result.prompt), []).append(result)
    summary = []
    parts = ("constrained", "calibrated", "generate")
    for (model, prompt), runs in groups.items():
        combined = {part: combine_scores([getattr(r, part) for r in runs]) for part in parts}
        mean = TransferResult(model, prompt, *(combined[part][0] for part in parts))
        summary.append((mean, {part: combined[part][1] for part in parts}))
    return summary


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
            *_scores(row.constrained, (row.std or {}).get("constrained")),
            *_scores(row.generate, (row.std or {}).get("generate")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heldout_table(study: Study) -> str:
    """The rows on the study's test set (`test_file`): accuracy, macro-F1 and invalid rate, constrained
    decoding."""
    lines = ["| row | accuracy | macro-F1 | invalid |", "|---|---|---|---|"]
    for row in (r for r in study.rows if r.status == "ok" and r.test):
        lines.append(f"| {row.name} | " + " | ".join(_scores(row.test, (row.std or {}).get("test"))) + " |")
    n = study.test_samples
    rates = [row.test["accuracy"] for row in study.rows if row.status == "ok" and row.test]
    if rates:
        at = sorted({max(rates), min(rates)}, reverse=True)
        errors = " and ".join(f"{standard_error(p, n):.3f} at p = {p:.2f}" for p in at)
        lines += ["", f"Standard error of an accuracy on these {n} examples: {errors}."]
    return "\n".join(lines)


def spread_notes(study: Study) -> list[str]:
    """What the table's ± means, and the sampling noise of an accuracy on this evaluation set."""
    seeds = ", ".join(map(str, study.settings.get("seeds") or []))
    seeded = [row.name for row in study.rows if row.name in SEEDED_ROWS]
    notes = []
    if seeded and "," in seeds:
        notes.append(
            f"{', '.join(seeded)}: mean ± standard deviation over the training seeds {seeds} (per-seed "
            "values in `compare.json`); the other rows are single runs."
        )
    elif seeded:
        notes.append(f"One training seed ({seeds}): no spread over seeds is measured.")
    n = study.eval_samples
    done = [row for row in study.rows if row.status == "ok" and row.constrained]
    accuracies = sorted((row.constrained["accuracy"], row.name) for row in done)
    if n and accuracies:
        shown = sorted({accuracies[-1], accuracies[0]}, reverse=True)
        at = [f"{standard_error(p, n):.3f} at p = {p:.2f} ({name})" for p, name in shown]
        notes.append(
            f"Sampling noise of the evaluation set: an accuracy p measured on {n} examples has a standard "
            f"error of sqrt(p(1-p)/{n}), here {' and '.join(at)}; a 95% interval reaches about two standard "
            "errors either side, and gaps between rows within that are not resolved by this evaluation set."
        )
    return notes


def transfer_table(study: Study) -> str:
    """The transfer table: one line per model and prompt."""
    lines = [
        "| model | prompt | accuracy | macro-F1 | accuracy, calibrated | macro-F1, calibrated "
        "| accuracy (generate) | invalid (generate) |",
        "|" + "---|" * 8,
    ]
    for result, std in transfer_summary(study):
        cells = [
            _cell(result.constrained, std["constrained"], "accuracy"),
            _cell(result.constrained, std["constrained"], "macro_f1"),
            _cell(result.calibrated, std["calibrated"], "accuracy"),
            _cell(result.calibrated, std["calibrated"], "macro_f1"),
            _cell(result.generate, std["generate"], "accuracy"),
            _cell(result.generate, std["generate"], "invalid_rate"),
        ]
        lines.append(f"| {result.model} | {result.prompt} | " + " | ".join(cells) + " |")
    head = study.row(HEAD_ROW)
    if head and head.status == "ok":
        lines.append(f"| {HEAD_ROW} | — | no transfer: its linear head has a fixed label set |" + " |" * 5)
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
    transfer = [result for result, _ in transfer_summary(study)]
    for prompt in dict.fromkeys(r.prompt for r in transfer):
        base = next((r for r in transfer if r.model == "base" and r.prompt == prompt), None)
        if base is None:
            continue
        found.append(
            _target(
                f"calibrated zero-shot beats zero-shot on the topics ({prompt} prompt)",
                f"{_fmt(base.calibrated['accuracy'])} vs {_fmt(base.constrained['accuracy'])}",
                base.calibrated["accuracy"] > base.constrained["accuracy"],
            )
        )
        for trained in (r for r in transfer if r.model != "base" and r.prompt == prompt):
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


def _seed_note(study: Study) -> str:
    s = study.settings
    note = f"Seed {s['seed']} for every sample (training subsample, few-shot draw, transfer sample) and the "
    note += "baseline solver"
    seeded = [f"`{r.name}`" for r in study.rows if r.name in SEEDED_ROWS]
    if not seeded:
        return note + "."
    return (
        f"{note}; training seeds {', '.join(map(str, s.get('seeds') or []))} for {', '.join(seeded)} (each "
        "seed a separate run; time and throughput are means, peak memory the largest)."
    )


def _notes(study: Study) -> list[str]:
    s = study.settings
    info = study.info
    epochs = {r.name: r.epochs for r in study.rows if r.epochs}
    notes = [
        f"Model `{info.get('model')}`, {info.get('quantization')} weights (the `full` row trains unquantized "
        f"weights); recipe `{info.get('recipe')}`; {study.train_samples} training and {study.eval_samples} "
        "evaluation examples.",
        _seed_note(study),
        "Epochs per trained row: " + ", ".join(f"{k} {v:g}" for k, v in epochs.items()) + "."
        if epochs
        else "No trained rows.",
        f"Few-shot: {s['shots']} example(s) per label drawn from the training split, in shuffled order.",
        "Constrained decoding scores every label's completion and takes the most probable: never invalid. "
        "Generate decoding is greedy; an answer that is not a label counts as invalid (and wrong).",
        "Calibrated rows divide the label probabilities by those of content-free inputs (`N/A`, an empty "
        "message, `[MASK]`) and renormalise (Zhao et al. 2021); they reuse the uncalibrated row's scores.",
        "Peak memory: peak resident set size of the process that produced the row (a `trainer-ext train` "
        "subprocess per trained row and seed, a fresh process for `embedding-logreg` and each seed of "
        "`classification-head`; the study process, after loading the frozen model and scoring all frozen "
        "rows, for the zero-/few-shot rows); `tfidf-logreg`'s is its traced allocations.",
    ]
    if study.transfer:
        notes.append(
            "Transfer rows are the models that write their label, so they can be asked for new labels; "
            "`tfidf-logreg`, `embedding-logreg` and `classification-head` learn a fixed label set."
        )
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
    sittings = info.get("sittings") or []
    for i, sitting in enumerate(sittings, 1):  # a study combined with --combine
        minutes = (sitting.get("wall_seconds") or 0) / 60
        seeds = ", ".join(map(str, sitting["seeds"]))
        cpu = f", {sitting['cpu']}" if sitting.get("cpu") else ""
        notes.append(
            f"Sitting {i} of {len(sittings)} ({sitting.get('date')}{cpu}, {minutes:.0f} min, seeds {seeds}): "
            f"`{sitting['command']}`."
        )
    what = "the sittings together" if sittings else "this run (reused rows not retrained)"
    cpu = "" if sittings else f"{info.get('cpu') or platform.machine()}, "  # the sittings' own are above
    notes.append(
        f"Wall time of {what}: {info.get('wall_seconds', 0) / 60:.1f} min; "
        f"{cpu}{info.get('cpus')} CPU(s), device {info.get('device')}."
    )
    return notes


def render_markdown(study: Study, command: str) -> str:
    """The whole report as Markdown."""
    parts = [
        "# Study: ways to turn a causal LM into a classifier",
        f"Command: `{command}`",
        "## Moderation (hate / offensive / neutral)",
        rows_table(study),
        "\n".join(f"- {note}" for note in spread_notes(study)),
    ]
    if study.test_samples:
        s = study.settings
        parts += [
            f"## Moderation, test set ({study.test_samples} examples)",
            f"`{s['test_file']}`: "
            + (
                f"a sample (seed {s['seed']}), balanced as far as the data allows, of the rows"
                if s.get("test_samples")
                else "the rows"
            )
            + " whose text is in neither the training nor the evaluation split; constrained decoding (the "
            "calibrated rows calibrated).",
            heldout_table(study),
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


def _bars(ax, names: list[str], series: list[tuple[str, list, list, list]]) -> None:
    """Grouped bars of means, with the standard deviation as error bars and one point per seed.

    `series` holds ``(label, means, stds, per_seed_values)``, each list one entry per name.
    """
    width = 0.8 / len(series)
    pointed = False
    for i, (label, means, stds, points) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(names))]
        spread = [float("nan") if s is None else s for s in stds]  # no error bar for a single run
        ax.bar(xs, means, width, label=label, yerr=spread, capsize=2, ecolor="dimgrey")
        for x, values in zip(xs, points, strict=True):
            if len(values) > 1:
                ax.scatter([x] * len(values), values, s=7, color="black", zorder=3,
                           label=None if pointed else "one seed")  # fmt: skip
                pointed = True
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylim(0, 1)


def _row_series(rows: list) -> list[tuple[str, list, list, list]]:
    series = []
    for metric, mode in (("accuracy", "constrained"), ("macro_f1", "constrained"), ("accuracy", "generate")):
        means = [(getattr(r, mode) or {}).get(metric, 0.0) for r in rows]
        stds = [((r.std or {}).get(mode) or {}).get(metric) for r in rows]
        points = [
            [getattr(run, mode)[metric] for run in r.per_seed if run.status == "ok" and getattr(run, mode)]
            for r in rows
        ]
        series.append((f"{metric.replace('_', '-')} ({mode})", means, stds, points))
    return series


def _transfer_series(study: Study, names: list[str]) -> list[tuple[str, list, list, list]]:
    summary = {(mean.model, mean.prompt): (mean, std) for mean, std in transfer_summary(study)}
    series = []
    for prompt in dict.fromkeys(r.prompt for r in study.transfer):
        for part in ("constrained", "calibrated"):
            found = [summary.get((name, prompt)) for name in names]
            means = [getattr(hit[0], part)["accuracy"] if hit else 0.0 for hit in found]
            stds = [(hit[1][part] or {}).get("accuracy") if hit else None for hit in found]
            runs = [r for r in study.transfer if r.prompt == prompt]
            points = [[getattr(r, part)["accuracy"] for r in runs if r.model == name] for name in names]
            label = f"{prompt}{', calibrated' if part == 'calibrated' else ''}"
            series.append((label, means, stds, points))
    return series


def plot_chart(study: Study, path: Path) -> Path:
    """Bar chart: moderation accuracy and macro-F1 per row; topic accuracy per model and prompt. Bars are
    means over seeds, with the standard deviation as error bars and a point per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in study.rows if r.status == "ok"]
    panels = 2 if study.transfer else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    _bars(ax, [r.name for r in rows], _row_series(rows))
    ax.axhline(1 / max(len(study.info.get("labels", [])), 1), color="grey", ls="--", lw=1, label="chance")
    ax.set_title(f"Moderation, {study.eval_samples} validation tweets")
    ax.legend(fontsize=8)
    if study.transfer:
        ax = axes[0][1]
        names = list(dict.fromkeys(r.model for r in study.transfer))
        _bars(ax, names, _transfer_series(study, names))
        ax.axhline(1 / len(study.transfer_labels), color="grey", ls="--", lw=1, label="chance")
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
