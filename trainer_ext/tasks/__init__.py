"""Label tasks: the label set, each label's completion text, and the prompt template (`LabelTask`)."""

from trainer_ext.tasks.settings import TaskSettings, format_label_list, parse_label_list
from trainer_ext.tasks.task import (
    MODERATION_LABELS,
    TASK_FILE,
    TRAILING_PUNCTUATION,
    LabelTask,
    moderation_task,
    topic_task,
)
from trainer_ext.tasks.templates import (
    DEFAULT_SEPARATOR,
    INSTRUCTION_TEMPLATE,
    PROMPT_STYLES,
    TaskError,
    resolve_template,
)
from trainer_ext.tasks.variation import PromptVariation

__all__ = [
    "DEFAULT_SEPARATOR",
    "INSTRUCTION_TEMPLATE",
    "MODERATION_LABELS",
    "PROMPT_STYLES",
    "TASK_FILE",
    "TRAILING_PUNCTUATION",
    "LabelTask",
    "PromptVariation",
    "TaskError",
    "TaskSettings",
    "format_label_list",
    "moderation_task",
    "parse_label_list",
    "resolve_template",
    "topic_task",
]
