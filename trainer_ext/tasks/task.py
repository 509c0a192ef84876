"""`LabelTask`: the label set, how each label is written as a completion, and the prompt.

A [`LabelTask`] turns a message into a prompt and a label into the completion the model learns to
generate after it; the prompt styles are in `trainer_ext.tasks.templates`. The task serialises to
`task.json` so that a saved model carries its labels and template with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer_ext.tasks.settings import TaskSettings, validate_labels
from trainer_ext.tasks.templates import (
    INSTRUCTION_TEMPLATE,
    LABEL_LIST_SEPARATOR,
    SHOT_SEPARATOR,
    TaskError,
    resolve_template,
    split_template,
)
from trainer_ext.tasks.variation import PromptVariation

logger = logging.getLogger(__name__)

TASK_FILE = "task.json"
TASK_FORMAT_VERSION = 1
MODERATION_LABELS = ("hate", "offensive", "neutral")
#: What may follow a label at the end of a generated answer without making it another term.
TRAILING_PUNCTUATION = ".!,;:"
#: End-of-sequence texts of common tokenizers: a completion ends at the first of them.
END_MARKERS = ("<|endoftext|>", "</s>", "<|im_end|>", "<|eot_id|>", "<eos>")


def _check_not_a_string(labels: Any) -> None:
    """A single string is not a label set: ``list("sport, politics")`` would be its characters."""
    if isinstance(labels, str):
        names = [name.strip() for name in labels.split(",") if name.strip()]
        raise TaskError(f"labels must be a list of label names, not the string {labels!r}; write {names}.")


@dataclass
class LabelTask:
    """A classification task whose labels are generated as text after a prompt.

    Args:
        labels (`list[str]`):
            The label set, in order.
        verbalizers (`dict[str, str]`, *optional*):
            The completion written for each label; defaults to `" " + label` (GPT tokenizers attach the
            space to the following word).
        template (`str`, *optional*, defaults to the instruction template):
            Prompt template with one `{text}` and optionally `{labels}` (rendered comma-separated).
        shots (`list[tuple[str, str]]`, *optional*):
            k-shot examples `(text, label)`, rendered before the message in the message block's format.
        decision_bias (`dict[str, float]`, *optional*):
            An additive offset per label on the log-probabilities of constrained scoring before the argmax,
            fitted on a dev set (`trainer_ext.inference.decision`); empty: none.
        training_variation (`PromptVariation`, *optional*):
            How training prompts vary (label order, distractor labels, reworded instruction) so that the
            model learns the choice among listed labels; off by default. Evaluation and prediction always
            use the task's own prompt (see `trainer_ext.tasks.variation`).

    Example:

    ```python
    >>> task = LabelTask(["hate", "offensive", "neutral"])
    >>> print(task.prompt("have a nice day"))
    Classify the following messages into one of the following categories: hate, offensive, neutral
    <BLANKLINE>
    Message: have a nice day
    <BLANKLINE>
    Category:
    >>> task.completion("neutral")
    ' neutral'
    >>> task.label_from_completion(" Neutral.\\nMessage: ...")
    'neutral'

    ```
    """

    labels: list[str]
    verbalizers: dict[str, str] = field(default_factory=dict)
    template: str = INSTRUCTION_TEMPLATE
    shots: list[tuple[str, str]] = field(default_factory=list)
    decision_bias: dict[str, float] = field(default_factory=dict)
    training_variation: PromptVariation = field(default_factory=PromptVariation)

    def __post_init__(self) -> None:
        _check_not_a_string(self.labels)
        self.labels = list(self.labels)
        if isinstance(self.training_variation, dict):
            self.training_variation = PromptVariation.from_dict(self.training_variation)
        validate_labels(self.labels)
        unknown = [key for key in (self.verbalizers or {}) if key not in self.labels]
        if unknown:
            raise TaskError(f"verbalizers given for labels {unknown} that are not in labels {self.labels}.")
        self.verbalizers = {label: (self.verbalizers or {}).get(label, " " + label) for label in self.labels}
        by_text: dict[str, str] = {}
        for label, text in self.verbalizers.items():
            if not isinstance(text, str) or not text.strip():
                raise TaskError(
                    f"The verbalizer of label {label!r} is empty: {text!r}; give it visible text."
                )
            if text.strip().casefold() in by_text:
                raise TaskError(
                    f"Labels {by_text[text.strip().casefold()]!r} and {label!r} have the same verbalizer "
                    f"{text!r}; the model could not tell them apart."
                )
            by_text[text.strip().casefold()] = label
        self._header, self._block_before, self._block_after = split_template(self.template)
        self.shots = [(str(text), str(label)) for text, label in self.shots]
        for text, label in self.shots:
            if label not in self.labels:
                raise TaskError(
                    f"Shot example {text[:40]!r} has label {label!r}, not in labels {self.labels}."
                )
        unknown = [label for label in self.decision_bias if label not in self.labels]
        if unknown:
            raise TaskError(f"decision_bias names labels {unknown} that are not in labels {self.labels}.")

    # Prompts and completions

    def _fill(self, part: str) -> str:
        return part.replace("{labels}", LABEL_LIST_SEPARATOR.join(self.labels))

    def prompt_parts(self, text: str) -> tuple[str, str, str]:
        """Split the prompt of `text` into (prefix, message, suffix).

        The prefix holds the header, the k-shot examples and the part of the message block before the
        message; the suffix holds the rest of the block up to and including the answer cue. Tokenization
        shortens only the message.

        Args:
            text (`str`): The message to classify.

        Returns:
            `tuple[str, str, str]`: `prefix + text + suffix == self.prompt(text)`.
        """
        shots = "".join(
            self._fill(self._block_before)
            + shot_text
            + self._fill(self._block_after)
            + self.verbalizers[shot_label]
            + SHOT_SEPARATOR
            for shot_text, shot_label in self.shots
        )
        prefix = self._fill(self._header) + shots + self._fill(self._block_before)
        return prefix, text, self._fill(self._block_after)

    def prompt(self, text: str) -> str:
        """The full prompt for `text`, ending with the answer cue."""
        return "".join(self.prompt_parts(text))

    def training_variant(self, rng: random.Random) -> LabelTask:
        """The task as one training sample sees it: the prompt varied by `training_variation`, drawn from
        `rng`; the labels, verbalizers and completions unchanged. Without variation, the task itself."""
        if not self.training_variation.active:
            return self
        template = self.training_variation.template(self.template, self.labels, rng)
        return LabelTask(self.labels, self.verbalizers, template, list(self.shots))

    def completion(self, label: str) -> str:
        """The completion text of `label` (its verbalizer; the tokenizer's EOS is appended at encoding)."""
        if label not in self.verbalizers:
            raise TaskError(f"Unknown label {label!r}; the task's labels are {self.labels}.")
        return self.verbalizers[label]

    def label_from_completion(self, generated_text: str) -> str | None:
        """Parse a generated completion back into a label.

        The first line of the completion, stripped, is compared case-insensitively with the labels and
        their verbalizers. A label matches only when all that follows it on that line is trailing
        punctuation (`TRAILING_PUNCTUATION`, e.g. `"Hate."`, `"neutral!"`) up to the end of the line or an
        end-of-sequence text (`END_MARKERS`); the longest matching label wins. Anything else after the
        label makes the answer another term, so it is not a label:
        with labels `C` and `C++`, `"C#"` and `"C+"` give `None`.

        Args:
            generated_text (`str`): The text generated after the prompt, up to EOS.

        Returns:
            `str | None`: The label, or `None` when the completion is not one of the labels.
        """
        for marker in END_MARKERS:
            generated_text = generated_text.split(marker, 1)[0]
        lines = generated_text.strip().casefold().splitlines()
        first_line = lines[0].strip() if lines else ""
        lookup: dict[str, str] = {}
        for label in self.labels:
            lookup[label.casefold()] = label
            lookup.setdefault(self.verbalizers[label].strip().casefold(), label)
        for key in sorted(lookup, key=len, reverse=True):
            if first_line.startswith(key) and not first_line[len(key) :].strip(TRAILING_PUNCTUATION + " "):
                return lookup[key]
        return None

    # Derived tasks

    def with_labels(self, labels: Sequence[str]) -> LabelTask:
        """The same template with another label set (zero-shot labels).

        Verbalizers of labels kept from this task are kept; new labels get `" " + label`. Shots are kept
        only when all their labels are in the new set; otherwise they are dropped (logged).
        """
        _check_not_a_string(labels)
        verbalizers = {label: self.verbalizers[label] for label in labels if label in self.verbalizers}
        shots = self.shots
        if any(label not in labels for _, label in shots):
            logger.warning(
                "Dropping %d k-shot examples whose labels are not in %s.", len(shots), list(labels)
            )
            shots = []
        return LabelTask(list(labels), verbalizers, self.template, list(shots))

    def with_shots(self, examples: Iterable[Any], k: int, seed: int = 0) -> LabelTask:
        """The same task with `k` examples per label rendered before each message.

        Args:
            examples (`Iterable`): `(text, label)` pairs or objects with `.text` and `.label`.
            k (`int`): Examples per label (0 removes the shots).
            seed (`int`, *optional*, defaults to 0): Seed of the draw and of the shuffled order.
        """
        if k < 0:
            raise TaskError(f"k must be >= 0, got {k}.")
        pairs = [(e.text, e.label) if hasattr(e, "text") else tuple(e) for e in examples]
        by_label: dict[str, list[str]] = {label: [] for label in self.labels}
        for text, label in pairs:
            if label in by_label:
                by_label[label].append(text)
        rng = random.Random(seed)
        chosen: list[tuple[str, str]] = []
        for label, texts in by_label.items():
            if k and len(texts) < k:
                raise TaskError(f"{k}-shot prompts need {k} examples of label {label!r}, found {len(texts)}.")
            chosen.extend((text, label) for text in rng.sample(texts, k))
        rng.shuffle(chosen)
        return dataclasses.replace(self, shots=chosen)

    # Serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (`from_dict` reads it back)."""
        return {
            "format_version": TASK_FORMAT_VERSION,
            "labels": list(self.labels),
            "verbalizers": dict(self.verbalizers),
            "template": self.template,
            "shots": [list(shot) for shot in self.shots],
            "decision_bias": dict(self.decision_bias),
            "training_variation": self.training_variation.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelTask:
        """Build a task from `to_dict()` output."""
        if not isinstance(data, dict) or "labels" not in data:
            raise TaskError(
                f"A task dict needs at least 'labels'; got {type(data).__name__} {str(data)[:80]}."
            )
        version = data.get("format_version", TASK_FORMAT_VERSION)
        if version > TASK_FORMAT_VERSION:
            raise TaskError(
                f"Task format version {version} is newer than this library reads "
                f"({TASK_FORMAT_VERSION}); upgrade trainer_ext."
            )
        return cls(
            labels=list(data["labels"]),
            verbalizers=dict(data.get("verbalizers") or {}),
            template=data.get("template", INSTRUCTION_TEMPLATE),
            shots=[tuple(shot) for shot in data.get("shots") or []],
            decision_bias={str(k): float(v) for k, v in (data.get("decision_bias") or {}).items()},
            training_variation=PromptVariation.from_dict(data.get("training_variation")),
        )

    def save(self, directory: str | Path) -> Path:
        """Write `task.json` into `directory` (created if missing) and return its path."""
        path = Path(directory) / TASK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> LabelTask:
        """Read the task saved by `save` from `directory` (or from a path to `task.json`)."""
        path = Path(directory)
        if path.is_dir():
            path = path / TASK_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TaskError(
                f"No {TASK_FILE} at {path}; is this a directory written by a training run?"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TaskError(f"{path} is not a valid task file: {err}.") from None
        return cls.from_dict(data)

    # Builders

    @classmethod
    def from_settings(
        cls, settings: TaskSettings, shot_examples: Iterable[Any] | None = None, seed: int = 0
    ) -> LabelTask:
        """Build the task described by `settings`.

        Args:
            settings (`TaskSettings`): Labels, verbalizers, prompt style, separator, shots.
            shot_examples (`Iterable`, *optional*): Pool of examples to draw k-shot examples from; needed
                when `settings.shots > 0`.
            seed (`int`, *optional*, defaults to 0): Seed of the k-shot draw.
        """
        if not settings.labels:
            raise TaskError("The task has no labels: set labels (e.g. labels: [negative, positive]).")
        template = resolve_template(settings.prompt_style, settings.separator)
        task = cls(
            list(settings.labels),
            dict(settings.verbalizers or {}),
            template,
            training_variation=settings.variation(),
        )
        if task.training_variation.active:
            task.training_variation.check(template, task.labels)  # now, not after the model has loaded
        if settings.shots:
            if shot_examples is None:
                raise TaskError(
                    f"shots={settings.shots} needs examples to draw from (e.g. the training split)."
                )
            task = task.with_shots(shot_examples, settings.shots, seed)
        return task


def moderation_task() -> LabelTask:
    """The reference task: tweets as hate / offensive / neutral, instruction prompt."""
    return LabelTask(list(MODERATION_LABELS))


def topic_task(labels: Sequence[str]) -> LabelTask:
    """An instruction-prompt task over arbitrary topic labels (e.g. BBC categories)."""
    return LabelTask(list(labels))
