"""Prompt templates of label tasks: the built-in styles and how a template is split around the message.

Two prompt styles come built in:

- `instruction`: the prompt names the labels, so a trained model can be asked about label sets it
  never saw (`Classifier.with_labels`);
- `raw`: the message, then a fixed separator, then the label.

A custom template is any string with one `{text}` (and optionally `{labels}`). The line holding
`{text}` is the *message block*: k-shot examples are rendered in that block's format, each followed
by its completion, between the template's header and the message.
"""

from __future__ import annotations

INSTRUCTION_TEMPLATE = (
    "Classify the following messages into one of the following categories: {labels}"
    "\n\nMessage: {text}\n\nCategory:"
)
RAW_TEMPLATE = "{text}{separator}"
DEFAULT_SEPARATOR = " ###"
SHOT_SEPARATOR = "\n\n"
#: How `{labels}` is rendered: the labels joined by this separator, which no label may then contain.
LABEL_LIST_SEPARATOR = ", "
PROMPT_STYLES = ("instruction", "raw")


class TaskError(ValueError):
    """A task definition (labels, verbalizers, template, shots) that cannot be used."""


def resolve_template(prompt_style: str, separator: str = DEFAULT_SEPARATOR) -> str:
    """Turn a prompt style into template text.

    Args:
        prompt_style (`str`):
            `"instruction"`, `"raw"`, or a custom template containing `{text}` (and optionally `{labels}`).
        separator (`str`, *optional*, defaults to `" ###"`):
            What follows the message in the `raw` style.

    Returns:
        `str`: the template text, with `{labels}` and `{text}` placeholders.
    """
    if prompt_style == "instruction":
        return INSTRUCTION_TEMPLATE
    if prompt_style == "raw":
        if not separator:
            raise TaskError("The raw prompt style needs a non-empty `separator` between message and label.")
        return RAW_TEMPLATE.replace("{separator}", separator)
    if "{text}" not in prompt_style:
        raise TaskError(
            f"prompt_style {prompt_style!r} is neither 'instruction', 'raw' nor a template containing "
            "'{text}'; pass one of the built-in styles or a template such as 'Tweet: {text}\\nLabel:'."
        )
    return prompt_style


def split_template(template: str) -> tuple[str, str, str]:
    """Split a template into (header, block before `{text}`, block after `{text}`)."""
    count = template.count("{text}")
    if count != 1:
        raise TaskError(f"The template must contain '{{text}}' exactly once, found {count}: {template!r}.")
    before, after = template.split("{text}")
    line_start = before.rfind("\n") + 1
    return before[:line_start], before[line_start:], after
