"""`TaskSettings`: the task keys of a recipe (labels, verbalizers, prompt style, shots, length)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from trainer_ext.tasks.templates import DEFAULT_SEPARATOR, LABEL_LIST_SEPARATOR, TaskError, resolve_template
from trainer_ext.tasks.variation import PromptVariation
from trainer_ext.vocabulary import TRUNCATION_SIDES


@dataclass
class TaskSettings:
    """Settings of the classification task (YAML keys and command-line flags of a recipe)."""

    labels: list[str] | None = field(
        default=None,
        metadata={
            "help": "The label set, in order; each label is what the model generates. YAML list, or on the "
            "command line `--labels a b c` (one argument each) or one comma-separated string 'a, b, c'. "
            "Unset: the distinct labels of the training data, sorted."
        },
    )
    verbalizers: dict[str, str] | str | None = field(
        default=None,
        metadata={"help": "Completion text per label as a dict or JSON string; default ' ' + label."},
    )
    prompt_style: str = field(
        default="instruction",
        metadata={"help": "'instruction', 'raw', or a custom template containing {text} (and {labels})."},
    )
    separator: str = field(
        default=DEFAULT_SEPARATOR, metadata={"help": "Separator between message and label in the raw style."}
    )
    shots: int = field(default=0, metadata={"help": "k-shot examples per label rendered before the message."})
    max_length: int = field(
        default=256,
        metadata={"help": "Maximum tokens of prompt + completion; only the message is shortened."},
    )
    truncation_side: str = field(
        default="right",
        metadata={
            "help": "What a too long message keeps: right cuts its end, left its start, both its middle."
        },
    )
    shuffle_labels: bool = field(
        default=False,
        metadata={
            "help": "Training prompts list the labels in a random order per sample (transfer to new "
            "label sets; evaluation keeps the task's order)."
        },
    )
    distractors: int = field(
        default=0,
        metadata={
            "help": "Training prompts also list this many labels that are never the answer, drawn "
            "per sample from distractor_pool."
        },
    )
    distractor_pool: list[str] | None = field(
        default=None,
        metadata={
            "help": "Labels to draw distractors from (default: a built-in pool of everyday topics "
            "and intents, see trainer_ext.tasks.variation)."
        },
    )
    paraphrase_instruction: bool = field(
        default=False,
        metadata={
            "help": "Training prompts word the instruction's first sentence in one of five ways "
            "(built-in instruction style only)."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.labels, str):
            self.labels = parse_label_list(self.labels)
        elif isinstance(self.labels, list) and len(self.labels) == 1 and "," in str(self.labels[0]):
            self.labels = parse_label_list(self.labels[0])  # `--labels "a, b, c"` on the command line
        if isinstance(self.verbalizers, str):
            try:
                self.verbalizers = json.loads(self.verbalizers)
            except json.JSONDecodeError as err:
                raise TaskError(
                    f'verbalizers is not valid JSON ({err}); pass e.g. \'{{"hate": " hateful"}}\'.'
                ) from None
            if not isinstance(self.verbalizers, dict):
                raise TaskError(
                    "verbalizers must be a JSON object mapping each label to its completion text."
                )
        if self.shots < 0:
            raise TaskError(f"shots must be >= 0, got {self.shots}.")
        if self.truncation_side not in TRUNCATION_SIDES:
            raise TaskError(
                f"truncation_side: unknown value {self.truncation_side!r}; choose one of "
                f"{', '.join(TRUNCATION_SIDES)}."
            )
        if self.max_length < 8:
            raise TaskError(f"max_length must be at least 8 tokens, got {self.max_length}.")
        resolve_template(self.prompt_style, self.separator)
        if isinstance(self.distractor_pool, str):
            self.distractor_pool = parse_label_list(self.distractor_pool)
        self.variation()  # refuses a bad distractor count or pool now, not after loading the model
        if self.labels is not None:
            validate_labels(self.labels)

    def variation(self) -> PromptVariation:
        """The training prompt variation these settings ask for (`trainer_ext.tasks.variation`)."""
        pool = {} if self.distractor_pool is None else {"distractor_pool": list(self.distractor_pool)}
        return PromptVariation(self.shuffle_labels, self.distractors, paraphrase=self.paraphrase_instruction,
                               **pool)  # fmt: skip


def validate_labels(labels: Sequence[str]) -> None:
    if isinstance(labels, str) or not labels:
        raise TaskError("labels must be a non-empty list of strings, e.g. ['hate', 'offensive', 'neutral'].")
    seen: dict[str, str] = {}
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise TaskError(f"Empty or non-string label {label!r} in labels {list(labels)!r}.")
        if "," in label:
            raise TaskError(
                f"Label {label!r} contains a comma, which separates the labels where a prompt lists them, so "
                "the prompt would be ambiguous; write it without a comma (e.g. "
                f"{label.replace(',', ' /')!r}) and map the raw values with label_mapping."
            )
        if label != label.strip():
            raise TaskError(
                f"Label {label!r} has leading or trailing whitespace; write it as {label.strip()!r}."
            )
        key = label.casefold()
        if key in seen:
            raise TaskError(
                f"Duplicate label {label!r} (same as {seen[key]!r} ignoring case) in labels "
                f"{list(labels)!r}: make each label distinct."
            )
        seen[key] = label


def parse_label_list(text: str) -> list[str]:
    """The string form of a label list: labels separated by commas, surrounding spaces dropped.

    `format_label_list` writes it back; the two round-trip because no label may contain a comma where
    the prompt lists the labels (see `validate_labels`).

    >>> parse_label_list("business, sport ,tech")
    ['business', 'sport', 'tech']
    >>> format_label_list(['business', 'sport', 'tech'])
    'business, sport, tech'
    """
    return [part.strip() for part in text.split(",")]


def format_label_list(labels: Sequence[str]) -> str:
    """The comma-separated string form of `labels` (what `parse_label_list` reads)."""
    return LABEL_LIST_SEPARATOR.join(labels)
