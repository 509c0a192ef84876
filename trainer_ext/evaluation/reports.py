"""Files a run writes for people: metrics.json, predictions.csv, the confusion-matrix picture."""

from __future__ import annotations

import csv
import json
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer_ext.inference.scoring import LabelScores
from trainer_ext.training.host_memory import status_kib

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"


def peak_memory_mb(device: str | torch.device = "cpu") -> float:
    """Peak memory of this process so far, in MiB: CUDA allocations on a GPU, else the peak resident set size.

    On Linux the peak is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this process's own
    memory. Not ``ru_maxrss``, because Linux carries that one over ``fork`` and ``exec``: a training run
    started by a big process (`trainer-ext compare`, holding a loaded model) would report its parent's
    resident size as its own peak. Elsewhere (macOS, no ``/proc``) ``ru_maxrss``.
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return status_kib("VmHWM") / 2**10
    except (OSError, RuntimeError):  # no /proc
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write the flat metrics dict as `metrics.json` (sorted keys)."""
    path = Path(output_dir) / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def write_predictions(
    output_dir: str | Path, examples: Sequence[Any], scores: LabelScores, labels: Sequence[str]
) -> Path:
    """Write `predictions.csv`: text, gold, predicted (empty when invalid), a probability per label."""
    path = Path(output_dir) / PREDICTIONS_FILE
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "gold", "predicted", *[f"prob_{label}" for label in labels]])
        for i, example in enumerate(examples):
            probs = scores.probs[i].tolist() if scores.probs is not None else [""] * len(labels)
            writer.writerow(
                [
                    example.text,
                    example.label or "",
                    scores.labels[i] or "",
                    *[f"{p:.6f}" if p != "" else "" for p in probs],
                ]
            )
    return path


def plot_confusion_matrix(
    output_dir: str | Path, matrix: Sequence[Sequence[int]], labels: Sequence[str]
) -> Path:
    """Draw the confusion matrix to `confusion_matrix.png`: rows gold, columns predicted then invalid; each
    cell shows its count and its share of the row (the recall of the gold class on the diagonal), and is
    shaded by that share, so that a rare class's row reads as clearly as a common one's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*labels, "invalid"]
    rates = [[value / max(sum(row), 1) for value in row] for row in matrix]  # row-normalised
    fig, ax = plt.subplots(figsize=(1.4 * len(columns) + 2, 1.0 * len(labels) + 1.8))
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(
        range(len(labels)), [f"{label} ({sum(row)})" for label, row in zip(labels, matrix, strict=True)]
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold (rows)")
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            colour = "white" if rates[r][c] > 0.5 else "black"
            ax.text(c, r, f"{value}\n{rates[r][c]:.0%}", ha="center", va="center", color=colour, fontsize=9)
    fig.tight_layout()
    path = Path(output_dir) / CONFUSION_FILE
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
