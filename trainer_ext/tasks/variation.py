"""Training prompts that vary, so that a model learns to choose among the labels a prompt lists.

Trained on one fixed instruction, a model can learn the three strings of its label set rather than the
choice the instruction asks for, and then answers poorly when a new prompt lists other labels
(`Classifier.with_labels`). `PromptVariation` varies each *training* prompt, drawn per sample from a seeded
generator, while the completion (the true label) stays the same:

- `shuffle_labels`: the labels named in the instruction in a random order;
- `distractors`: that many extra labels from `distractor_pool`, at random places in the list, never a
  label of the task (they are listed, never the answer);
- `paraphrase`: the instruction's first sentence in one of `INSTRUCTION_PARAPHRASES` (the built-in
  instruction template only; the message block and the answer cue stay as they are, so the completion's
  tokens do not change).

All off by default; evaluation and prediction always use the task's own prompt. The variation is kept in
`task.json` (key ``training_variation``) as a record of how the model was trained.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from trainer_ext.tasks.templates import INSTRUCTION_TEMPLATE, LABEL_LIST_SEPARATOR, TaskError

logger = logging.getLogger(__name__)

#: The instruction header's sentence in other words; each keeps `{labels}`.
INSTRUCTION_PARAPHRASES = (
    "Classify the following messages into one of the following categories: {labels}",
    "Which of these categories does the message belong to? {labels}",
    "Assign the message below to exactly one category. Categories: {labels}",
    "Read the message and answer with one of these categories: {labels}",
    "Possible categories: {labels}. Choose the one that fits the message.",
)
#: Listed as labels that are never the answer. Topic, intent and register words of everyday texts; no
#: moderation label and no label of the transfer sets the study scores (BBC topics, sentiment).
DEFAULT_DISTRACTOR_POOL = (
    "health", "travel", "food", "weather", "music", "fashion", "education", "religion", "history",
    "animals", "cars", "games", "spam", "question", "complaint", "advertisement", "greeting", "joke",
)  # fmt: skip


@dataclass
class PromptVariation:
    """How training prompts vary (see the module docstring); all off by default.

    Args:
        shuffle_labels (`bool`, *optional*, defaults to `False`): List the labels in a random order.
        distractors (`int`, *optional*, defaults to 0): Extra labels listed per prompt.
        distractor_pool (`list[str]`, *optional*): Where distractors are drawn from; defaults to
            `DEFAULT_DISTRACTOR_POOL`.
        paraphrase (`bool`, *optional*, defaults to `False`): Reword the instruction's first sentence.

    Raises:
        `TaskError`: for a negative `distractors` or a pool entry holding the list separator.
    """

    shuffle_labels: bool = False
    distractors: int = 0
    distractor_pool: list[str] = field(default_factory=lambda: list(DEFAULT_DISTRACTOR_POOL))
    paraphrase: bool = False

    def __post_init__(self) -> None:
        unique: dict[str, str] = {}  # casefolded -> first spelling: each label once
        for label in (str(label).strip() for label in self.distractor_pool):
            if label:
                unique.setdefault(label.casefold(), label)
        self.distractor_pool = list(unique.values())
        if self.distractors < 0:
            raise TaskError(f"distractors must be >= 0, got {self.distractors}.")
        bad = [label for label in self.distractor_pool if LABEL_LIST_SEPARATOR.strip() in label]
        if bad:
            raise TaskError(f"distractor_pool entries may not contain a comma: {bad}.")

    @property
    def active(self) -> bool:
        """Whether any training prompt differs from the task's own."""
        return self.shuffle_labels or self.distractors > 0 or self.paraphrase

    def _pool_for(self, labels: list[str]) -> list[str]:
        """The distractors that can go with `labels`: the pool without the task's labels (any case)."""
        taken = {label.casefold() for label in labels}
        pool = [label for label in self.distractor_pool if label.casefold() not in taken]
        if len(pool) < self.distractors:
            raise TaskError(
                f"distractors={self.distractors} but the pool has only {len(pool)} labels that are not "
                "labels of the task; add to distractor_pool or lower distractors."
            )
        return pool

    def check(self, template: str, labels: list[str]) -> None:
        """Refuse a pool too small for `labels`, and warn about options `template` leaves without effect.

        Raises:
            `TaskError`: when the pool, without the task's labels, has fewer labels than `distractors`.
        """
        self._pool_for(labels)
        unused = []
        if (self.shuffle_labels or self.distractors) and "{labels}" not in template:
            unused.append("shuffle_labels/distractors (the prompt does not list the labels)")
        if self.paraphrase and template != INSTRUCTION_TEMPLATE:
            unused.append("paraphrase_instruction (only the built-in instruction prompt is paraphrased)")
        for what in unused:
            logger.warning("Training prompt variation without effect: %s.", what)

    def template(self, template: str, labels: list[str], rng: random.Random) -> str:
        """One training template: `template` with its `{labels}` list (and wording) drawn from `rng`.

        Args:
            template (`str`): The task's template.
            labels (`list[str]`): The task's labels.
            rng (`random.Random`): The sample's generator.

        Returns:
            `str`: A template whose label list is written out (no `{labels}` left) and whose `{text}` is kept.

        Raises:
            `TaskError`: when the pool, without the task's labels, has fewer labels than `distractors`.
        """
        listing = list(labels)
        if self.shuffle_labels:
            rng.shuffle(listing)
        if self.distractors:
            for extra in rng.sample(self._pool_for(labels), self.distractors):
                listing.insert(rng.randrange(len(listing) + 1), extra)
        if self.paraphrase and template == INSTRUCTION_TEMPLATE:
            header = INSTRUCTION_PARAPHRASES[0]
            template = template.replace(header, rng.choice(INSTRUCTION_PARAPHRASES), 1)
        return template.replace("{labels}", LABEL_LIST_SEPARATOR.join(listing))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PromptVariation:
        """Read `to_dict()` output; `None` or `{}` is no variation."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data or {}) - known)
        if unknown:
            raise TaskError(f"training_variation has unknown keys {unknown}; known: {sorted(known)}.")
        return cls(**(data or {}))
