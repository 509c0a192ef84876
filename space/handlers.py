"""The demo's event handlers: plain methods that take and return plain values, testable without a server.

Each handler checks its inputs first and raises `gr.Error` with a message for the person using the
page (what is wrong and what to do); `app.py` turns any other failure into a short message too, so
that no stack trace reaches a user.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from space.csv_batch import (
    PREVIEW_ROWS,
    guess_text_column,
    predictions_table,
    read_table,
    summary,
    texts_of,
    write_predictions,
)
from space.generation import DecodingRequest, check_prompt
from space.model_store import ENV_ADAPTER, ModelStore

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000
MAX_CATEGORIES = 12
MAX_CATEGORY_CHARS = 40
BATCH_SIZE = 8
DEFAULT_CATEGORIES = "business, entertainment, politics, sport, tech"
MODEL_CHOICES = (("moderation-trained model", "trained"), ("base model", "base"))


def check_message(text: str | None, what: str = "message", limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` stripped, or a `gr.Error` when it is empty or longer than `limit` characters."""
    text = (text or "").strip()
    if not text:
        raise gr.Error(f"The {what} is empty: type or paste one first.")
    if len(text) > limit:
        raise gr.Error(
            f"The {what} has {len(text)} characters; this demo classifies up to {limit}. "
            "Shorten it and try again."
        )
    return text


def parse_categories(text: str | None) -> list[str]:
    """A comma- or newline-separated list of categories, checked (2 to 12 distinct, short, non-empty).

    >>> parse_categories("sport, tech,\\npolitics")
    ['sport', 'tech', 'politics']
    """
    raw = (text or "").replace("\n", ",").split(",")
    labels = [" ".join(part.split()) for part in raw if part.strip()]
    if len(labels) < 2:
        raise gr.Error("Give at least two categories, separated by commas (e.g. 'sport, politics').")
    if len(labels) > MAX_CATEGORIES:
        raise gr.Error(f"{len(labels)} categories given; this demo chooses among at most {MAX_CATEGORIES}.")
    seen: dict[str, str] = {}
    for label in labels:
        if len(label) > MAX_CATEGORY_CHARS:
            raise gr.Error(
                f"The category {html.escape(label[:50], quote=False)!r}... is longer than "
                f"{MAX_CATEGORY_CHARS} characters; use a short name."
            )
        if label.casefold() in seen:
            raise gr.Error(
                f"The category {html.escape(label, quote=False)!r} is listed twice; list each category once."
            )
        seen[label.casefold()] = label
    return labels


def probabilities(prediction: Any, labels: list[str]) -> dict[str, float]:
    """The `{label: probability}` dict a `gr.Label` shows, in the task's label order."""
    return {label: float(prediction.probs[label]) for label in labels}


class DemoHandlers:
    """The handlers of every tab, sharing one `ModelStore`.

    Args:
        store (`ModelStore`): The lazily loaded models.
    """

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def moderate(self, message: str) -> dict[str, float]:
        """Classify one message as hate / offensive / neutral (or the adapter's own labels).

        Args:
            message (`str`): The message, up to 1000 characters.

        Returns:
            `dict[str, float]`: Probability of each label.
        """
        (prediction,) = self.store.predict([check_message(message)])
        return probabilities(prediction, self.store.labels())

    def classify_topic(
        self, headline: str, categories: str, model: str = "trained", calibrate: bool = True
    ) -> dict[str, float]:
        """Choose the category of a headline among categories given at request time (zero-shot).

        Args:
            headline (`str`): The headline, up to 1000 characters.
            categories (`str`): Categories separated by commas.
            model (`str`, *optional*, defaults to `"trained"`): `"trained"` (the moderation-trained
                model) or `"base"` (the base model without the adapter).
            calibrate (`bool`, *optional*, defaults to `True`): Divide out the label bias the model shows
                on content-free input ("N/A"); zero-shot answers of a small model gain the most from it.

        Returns:
            `dict[str, float]`: Probability of each category.
        """
        text = check_message(headline, what="headline")
        labels = parse_categories(categories)
        if model not in {value for _, value in MODEL_CHOICES}:
            raise gr.Error(
                f"Unknown model choice {html.escape(str(model), quote=False)!r}; use 'trained' or 'base'."
            )
        if model == "trained" and not self.store.has_adapter:
            raise gr.Error(
                f"No trained adapter is configured (set ${ENV_ADAPTER} or --adapter); choose the base model."
            )
        (prediction,) = self.store.predict(
            [text], labels=labels, use_trained=model == "trained", calibrate=bool(calibrate)
        )
        return probabilities(prediction, labels)

    def csv_columns(self, file: str | None) -> gr.Dropdown:
        """The column choices of an uploaded CSV file, the likely text column selected."""
        if not file:
            return gr.Dropdown(choices=[], value=None)
        table = read_table(file)
        columns = [str(column) for column in table.columns]
        return gr.Dropdown(choices=columns, value=guess_text_column(table))

    def classify_csv(
        self,
        file: str | None,
        column: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio finds the progress bar by this default
    ) -> tuple[str, pd.DataFrame, str]:
        """Classify every message in one column of a CSV file.

        Args:
            file (`str`): Path of the uploaded CSV file (UTF-8, comma-separated, header row).
            column (`str`): The column that holds the messages.
            progress (`gr.Progress`): Progress bar, updated after each batch.

        Returns:
            `tuple`: the path of `<name>_predictions.csv` (the input columns, `predicted_label` and one
            `prob_<label>` column per label), a preview of its first rows and a summary line.
        """
        if not file:
            raise gr.Error("No file uploaded: choose a CSV file with one message per row.")
        table = read_table(file)
        texts = texts_of(table, column, file, MAX_MESSAGE_CHARS)
        progress(0.0, desc="Loading the model")
        labels = self.store.labels()
        predictions: list[Any] = []
        for start in range(0, len(texts), BATCH_SIZE):
            # One batch per call, so that single messages from other people get their turn in between.
            progress(start / len(texts), desc=f"Classified {start} of {len(texts)} messages")
            predictions.extend(self.store.predict(texts[start : start + BATCH_SIZE]))
        result = predictions_table(table, predictions, labels)
        path = write_predictions(result, file)
        logger.info("Classified %d messages from %s into %s", len(texts), Path(file).name, path)
        return str(path), result.head(PREVIEW_ROWS), summary(predictions, labels)

    def generate(
        self,
        prompt: str,
        decoding: str = "greedy",
        max_new_tokens: int = 40,
        num_beams: int = 4,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> str:
        """Continue a prompt with the base model.

        Args:
            prompt (`str`): The text to continue, up to 2000 characters.
            decoding (`str`, *optional*, defaults to `"greedy"`): `"greedy"`, `"beam search"` or `"sampling"`.
            max_new_tokens (`int`, *optional*, defaults to 40): Tokens to generate, 1 to 200.
            num_beams (`int`, *optional*, defaults to 4): Beams of beam search, 2 to 8.
            temperature (`float`, *optional*, defaults to 0.8): Sampling temperature.
            top_p (`float`, *optional*, defaults to 0.95): Nucleus mass of sampling.
            seed (`int`, *optional*, defaults to 0): Seed of sampling.

        Returns:
            `str`: The generated continuation.
        """
        request = DecodingRequest(decoding, max_new_tokens, num_beams, temperature, top_p, int(seed or 0))
        return self.store.generate(check_prompt(prompt), request)

    def model_info(self) -> dict[str, Any]:
        """What the demo serves: adapter, base model, quantization, dtype, whether the adapter is merged
        into the weights, and which models are loaded."""
        settings = self.store.settings
        if not self.store.has_adapter:
            base_model = settings.base_model
        elif self.store.is_loaded("trained"):
            base_model = self.store.trained().base_model
        else:
            base_model = "the adapter's own (loaded on the first request)"
        return {
            "adapter": settings.adapter,
            "revision": settings.revision,
            "base_model": base_model,
            "quantization": settings.quantization,
            "dtype": settings.dtype or "the run's",
            "merge_adapter": self.store.merges_adapter,
            "trained": self.store.has_adapter,
            "loaded": [key for key in ("trained", "base") if self.store.is_loaded(key)],
        }
