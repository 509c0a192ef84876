"""Settings of the study (`trainer-ext compare`): a preset YAML file, overridden on the command line.

A preset names the training recipe every trained row starts from, the rows, the sizes and seeds, and
per-row recipe overrides (fewer epochs for the secondary methods, a learning rate for `norms`, ...):

```yaml
recipe: moderation_lora_all.yaml   # a shipped recipe name, or a path (relative to this file)
rows: [tfidf-logreg, zero-shot, zero-shot-calibrated, lora-all]
seeds: [42, 1, 2]                  # every seeded row runs once per training seed
transfer_samples: 250
overrides:
  norms: {learning_rate: 1.0e-3, num_train_epochs: 1}
```

Two seeds, two jobs: `seed` draws the data (the recipe's ``sample_seed``, the few-shot examples, the
transfer sample), so every row sees the same examples; `seeds` are the training seeds of the
`SEEDED_ROWS`, each run once per seed, so their spread measures training noise only.

A trained row's recipe arguments are, later ones winning: the recipe file, ``--eval_decoding``, the
command line's extra recipe flags (``--lora_r 2``, same for every row), the preset's overrides of the
row, ``--set ROW.KEY=VALUE`` flags, then what the row itself fixes (method, output directory, seeds,
``--quantization none`` for `full`). `classification-head` trains with lora-all's recipe arguments (its
own overrides on top), so both get the same LoRA shape and budget, and without evaluation or checkpoints
during training (it has no dev-set metrics to select a checkpoint by).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer_ext.configs import CONFIGS_DIR, load_yaml_mapping
from trainer_ext.data.examples import parse_mapping
from trainer_ext.tasks import INSTRUCTION_TEMPLATE

TRAINED_ROWS = ("norms", "lora-attention", "lora-all", "full")
FROZEN_ROWS = ("zero-shot", "few-shot")
CALIBRATED_ROWS = ("zero-shot-calibrated", "few-shot-calibrated")
EMBEDDING_ROW = "embedding-logreg"
HEAD_ROW = "classification-head"
#: Rows run once per training seed (``seeds``); the table shows their mean and standard deviation.
SEEDED_ROWS = (*TRAINED_ROWS, EMBEDDING_ROW, HEAD_ROW)
ROWS = (
    "tfidf-logreg",
    EMBEDDING_ROW,
    "zero-shot",
    "zero-shot-calibrated",
    "few-shot",
    "few-shot-calibrated",
    *TRAINED_ROWS,
    HEAD_ROW,
)
DEFAULT_PRESET = CONFIGS_DIR / "studies" / "compare_smollm2.yaml"

#: Named prompts of the transfer evaluation; any template with `{text}` (and `{labels}`) works too.
TRANSFER_PROMPTS = {
    # The moderation training prompt, word for word, with the topic labels.
    "instruction": INSTRUCTION_TEMPLATE,
    # The same instruction worded for headlines.
    "headline": (
        "Classify the following news headlines into one of the following categories: {labels}"
        "\n\nHeadline: {text}\n\nCategory:"
    ),
}


class StudyError(ValueError):
    """A study preset or command line that cannot be used as given."""


def transfer_template(prompt: str) -> str:
    """The template of a named transfer prompt, or `prompt` itself when it is a template."""
    if prompt in TRANSFER_PROMPTS:
        return TRANSFER_PROMPTS[prompt]
    if "{text}" in prompt:
        return prompt
    raise StudyError(
        f"Transfer prompt {prompt!r} is neither one of {sorted(TRANSFER_PROMPTS)} nor a template with "
        "'{text}'."
    )


@dataclass
class StudyArguments:
    """What the study runs: the preset keys, each also a ``--flag`` of `trainer-ext compare`."""

    recipe: str = field(
        default="moderation_lora_all.yaml",
        metadata={"help": "Training recipe of every row: a path, or the name of a shipped recipe."},
    )
    rows: list[str] = field(
        default_factory=lambda: list(ROWS),
        metadata={"help": "The rows to run, any of `ROWS`; the table keeps this order."},
    )
    output_dir: str = field(
        default="runs/compare",
        metadata={"help": "Where the table (compare.md), compare.json and the chart compare.png go."},
    )
    runs_dir: str | None = field(
        default=None,
        metadata={"help": "Run directories and logs of the trained rows; default: ``output_dir/runs``."},
    )
    seed: int = field(
        default=42,
        metadata={
            "help": "Sampling seed of every row (the recipe's sample_seed, few-shot draw, transfer sample) "
            "and seed of the single-run rows (baseline solver)."
        },
    )
    seeds: list[int] = field(
        default_factory=lambda: [42],
        metadata={
            "help": "Training seeds: every trained row, embedding-logreg and classification-head run once "
            "per seed; the table shows mean ± standard deviation."
        },
    )
    embedding_model: str = field(
        default="all-minilm-l6-v2",
        metadata={
            "help": "Sentence-embedding model of embedding-logreg: all-minilm-l6-v2 (the `embeddings` "
            "extra), a sentence-transformers model id, or a local directory."
        },
    )
    shots: int = field(default=1, metadata={"help": "Examples per label in the few-shot prompt."})
    few_shot_max_length: int = field(
        default=1024,
        metadata={
            "help": "Token budget of a few-shot prompt (the examples come first; only the message is "
            "shortened)."
        },
    )
    eval_decoding: str = field(
        default="both",
        metadata={
            "help": "Decoding of every row unless a row override says otherwise: constrained, generate "
            "or both."
        },
    )
    batch_size: int = field(
        default=16,
        metadata={"help": "Prompts per forward pass when this process scores (frozen rows, transfer)."},
    )
    transfer_file: str | None = field(
        default="bbc/bbc_headlines.csv",
        metadata={
            "help": "Labelled texts of unseen topics, relative to the recipe's data_dir; empty: no transfer."
        },
    )
    transfer_text_column: str = field(default="title", metadata={"help": "Column of the transfer texts."})
    transfer_label_column: str = field(
        default="category",
        metadata={"help": "Column of the transfer labels (every distinct value is a label)."},
    )
    transfer_samples: int = field(
        default=250, metadata={"help": "Balanced sample of transfer texts (0: no transfer)."}
    )
    transfer_prompts: list[str] = field(
        default_factory=lambda: ["instruction", "headline"],
        metadata={"help": "Prompts of the transfer evaluation: names of `TRANSFER_PROMPTS` or templates."},
    )
    transfer_decoding: str = field(
        default="constrained",
        metadata={"help": "Transfer decoding: constrained (calibrated comes free) or both."},
    )
    test_file: str | None = field(
        default=None,
        metadata={
            "help": "A second, larger labelled test set, scored by every row beside the recipe's evaluation "
            "split (constrained decoding), relative to the recipe's data_dir; rows whose text is also in the "
            "recipe's training or evaluation data are left out. Empty: none."
        },
    )
    test_text_column: str = field(default="text", metadata={"help": "Column of the test texts."})
    test_label_column: str = field(default="label", metadata={"help": "Column of the test labels."})
    test_label_mapping: dict[str, str] | str | None = field(
        default=None,
        metadata={"help": 'Raw test label -> label, dict or JSON (e.g. {"0": "hate", "1": "offensive"}).'},
    )
    test_samples: int = field(
        default=0, metadata={"help": "Balanced sample of the test set (0: every row that is left)."}
    )
    full_max_params: int = field(
        default=1_000_000_000, metadata={"help": "The `full` row is skipped for models with more parameters."}
    )
    reuse: bool = field(
        default=False,
        metadata={
            "help": "Reuse a trained row's finished run when its command is unchanged, and its test and "
            "transfer scores when what they were measured on is unchanged too (run a seed at a time: "
            "--seeds 42, then --seeds 1 ..., then every seed)."
        },
    )


@dataclass
class StudySettings(StudyArguments):
    """A study's arguments with the per-row recipe overrides and the recipe flags of every row."""

    overrides: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": 'Recipe keys per row, e.g. ``{"norms": {"learning_rate": 1e-3}}``.'},
    )
    recipe_args: list[str] = field(
        default_factory=list,
        metadata={"help": "Recipe flags for every row (``--lora_r 2``); the command line's unknown flags."},
    )
    preset_dir: str = field(
        default=".",
        metadata={"help": "Directory a relative `recipe` path is resolved against (the preset's)."},
    )

    def __post_init__(self) -> None:
        unknown = [r for r in self.rows if r not in ROWS]
        if unknown or not self.rows:
            raise StudyError(f"rows: unknown or no rows {unknown}; choose from {', '.join(ROWS)}.")
        if len(set(self.rows)) != len(self.rows):
            raise StudyError(f"rows: {self.rows} names a row twice.")
        for row in CALIBRATED_ROWS:
            source = row.removesuffix("-calibrated")
            if row in self.rows and source not in self.rows:
                raise StudyError(f"rows: {row} is scored in the same pass as {source}; add {source} too.")
        for name in ("eval_decoding", "transfer_decoding"):
            if getattr(self, name) not in ("constrained", "generate", "both"):
                raise StudyError(f"{name}: {getattr(self, name)!r} is not constrained, generate or both.")
        if self.transfer_decoding == "generate":
            raise StudyError("transfer_decoding: use constrained or both (calibration needs label scores).")
        bad = [row for row in self.overrides if row not in ROWS]
        if bad:
            raise StudyError(f"overrides: unknown row(s) {bad}; choose from {', '.join(ROWS)}.")
        try:
            self.test_label_mapping = parse_mapping(self.test_label_mapping)
        except ValueError as error:
            raise StudyError(f"test_label_mapping: {error}") from None
        for name in ("shots", "transfer_samples", "test_samples", "batch_size", "few_shot_max_length"):
            if getattr(self, name) < (0 if name in ("transfer_samples", "test_samples") else 1):
                least = "0 or more" if name in ("transfer_samples", "test_samples") else "positive"
                raise StudyError(f"{name} must be {least}, got {getattr(self, name)}.")
        for prompt in self.transfer_prompts:
            transfer_template(prompt)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise StudyError(f"seeds: give one or more distinct seeds (--seeds 42 1 2); got {self.seeds}.")

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else self.output_path / "runs"

    @property
    def recipe_path(self) -> Path:
        """The recipe file: a path (relative to the preset), else a shipped recipe of that name."""
        candidates = [Path(self.recipe).expanduser()]
        if not candidates[0].is_absolute():
            candidates = [
                Path(self.preset_dir) / self.recipe,
                Path(self.recipe),
                CONFIGS_DIR / "recipes" / self.recipe,
            ]
        for path in candidates:
            if path.is_file():
                return path
        raise StudyError(
            f"recipe: {self.recipe!r} is neither a file nor a shipped recipe in {CONFIGS_DIR / 'recipes'}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        values = dataclasses.asdict(self)
        values["recipe"] = self.recipe_path.as_posix()
        del values["preset_dir"]
        return values


def as_flags(values: dict[str, Any]) -> list[str]:
    """Recipe values as command-line flags: ``{"lora_r": 2}`` -> ``["--lora_r", "2"]``."""
    flags: list[str] = []
    for key, value in values.items():
        flags.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            flags.extend(str(v) for v in value)
        elif isinstance(value, dict):
            flags.append(json.dumps(value))
        elif isinstance(value, bool):
            flags.append(str(value).lower())
        else:
            flags.append(str(value))
    return flags


def run_path(settings: StudySettings, row: str, seed: int) -> Path:
    """The run directory of one seed of a seeded row: ``runs_path/ROW/seed-SEED``."""
    return settings.runs_path / row / f"seed-{seed}"


def row_argv(settings: StudySettings, row: str, run_dir: Path, seed: int | None = None) -> list[str]:
    """The recipe arguments of a row: ``trainer-ext train`` arguments for a trained row, the recipe a
    frozen row is scored with, lora-all's recipe for `classification-head`.

    Args:
        settings (`StudySettings`): The study.
        row (`str`): One of `ROWS`.
        run_dir (`Path`): The row's output directory.
        seed (`int`, *optional*): Training seed; defaults to the first of ``settings.seeds``.
    """
    method = row if row in TRAINED_ROWS else "lora-all" if row == HEAD_ROW else "none"
    seed = settings.seeds[0] if seed is None else seed
    fixed = ["--method", method, "--output_dir", str(run_dir)]
    fixed += ["--seed", str(seed), "--sample_seed", str(settings.seed)]
    if row == "full":
        fixed += ["--quantization", "none"]
    if row == HEAD_ROW:  # a plain Trainer: no dev-set evaluation, checkpoints or best-model selection
        fixed += ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
    overrides = as_flags(settings.overrides.get("lora-all", {})) if row == HEAD_ROW else []
    return [
        "--config",
        str(settings.recipe_path),
        "--eval_decoding",
        settings.eval_decoding,
        *settings.recipe_args,
        *overrides,
        *as_flags(settings.overrides.get(row, {})),
        *fixed,
    ]


def _parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """``ROW.KEY=VALUE`` items (values read as YAML) into per-row overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        row, dot, key = target.rpartition(".")
        if not sep or not dot or not row or not key:
            raise StudyError(f"--set {item!r}: write ROW.KEY=VALUE, e.g. --set norms.learning_rate=1e-3.")
        overrides.setdefault(row, {})[key] = yaml.safe_load(value)
    return overrides


def load_preset(path: str | Path) -> dict[str, Any]:
    """Read a study preset into a dict of `StudySettings` fields."""
    path = Path(path)
    values = load_yaml_mapping(path, "Preset", StudyError)
    known = {f.name for f in dataclasses.fields(StudySettings)} - {"recipe_args", "preset_dir"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise StudyError(
            f"Preset {str(path)!r}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}."
        )
    values["preset_dir"] = str(path.parent)
    return values


def build_settings(
    preset: str | Path | None, flags: dict[str, Any], sets: list[str], recipe_args: list[str]
) -> StudySettings:
    """Merge the preset, the command-line study flags, ``--set`` items and the extra recipe flags.

    Args:
        preset (`str` or `Path`, *optional*): Preset file; `None` for the shipped `compare_smollm2.yaml`.
        flags (`dict`): Study flags given on the command line (only those given).
        sets (`list[str]`): ``ROW.KEY=VALUE`` items, applied over the preset's overrides.
        recipe_args (`list[str]`): Recipe flags for every row.
    """
    values = load_preset(preset or DEFAULT_PRESET)
    values.update(flags)
    overrides = {row: dict(keys or {}) for row, keys in (values.get("overrides") or {}).items()}
    for row, keys in _parse_set(sets).items():
        overrides.setdefault(row, {}).update(keys)
    values["overrides"] = overrides
    try:
        return StudySettings(**values, recipe_args=list(recipe_args))
    except TypeError as error:
        raise StudyError(f"Invalid study settings: {error}") from None
