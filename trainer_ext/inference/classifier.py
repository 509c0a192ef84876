"""`Classifier`: a trained run (local directory or Hub repo) as a text classifier in one line.

```python
clf = Classifier.from_pretrained("runs/moderation-lora-all")  # the run directory `make train` writes
clf.predict(["have a lovely day"])[0].label  # 'neutral'
```
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer_ext.inference.decision import apply_decision_bias
from trainer_ext.inference.scoring import (
    LabelScorer,
    contextual_calibration,
    generate_labels,
    shared_prefix_length,
)
from trainer_ext.modeling.cpu_layout import lay_out_for_prediction
from trainer_ext.tasks import LabelTask
from trainer_ext.training.tokenization import PromptEncoder
from trainer_ext.vocabulary import DECODINGS, is_local_path

logger = logging.getLogger(__name__)

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def _lay_out_for_prediction(loaded) -> None:
    """Lays out the linear weights of a `LoadedModel` for few-row CPU products (see
    `trainer_ext.modeling.cpu_layout`). Quantized models get no prepacked copies: their point is memory, and
    a prepacked copy of the bf16 layers they keep (the LM head) would add to it."""
    lay_out_for_prediction(loaded.model, prepack=loaded.quantization == "none")


@dataclass
class Prediction:
    """One prediction.

    Args:
        text (`str`): The input text.
        label (`str | None`): The predicted label; `None` when a generated answer is not a label.
        probs (`dict[str, float] | None`): Probability of each label (constrained decoding only).
        completion (`str | None`): The generated text (generate decoding only).
        truncated (`bool`): Whether the text was shortened to fit `max_length` (see
            `Classifier.truncation_side`).
    """

    text: str
    label: str | None
    probs: dict[str, float] | None = None
    completion: str | None = None
    truncated: bool = False


class Classifier:
    """A causal LM and a `LabelTask`: texts in, labels out.

    Build it with `from_pretrained` (a training run) or `from_base` (a frozen model, zero- or few-shot).

    On a CPU, load and call it from one thread. Each thread that runs torch gets its own OpenMP thread
    team: on 2 cores one message took 54 ms on a lone worker thread and 74 ms on a worker thread after the
    main thread had run the model (``python -m benchmarks.threads``).

    Args:
        model (`PreTrainedModel` or `PeftModel`): The model, in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer.
        task (`LabelTask`): Labels and prompt template.
        base_model (`str`): Name of the base model (for display).
        max_length (`int`, *optional*, defaults to 256): Prompt + completion budget; longer
            messages are shortened.
        decode_html (`bool`, *optional*, defaults to `False`): Decode HTML entities (``&amp;``) in texts
            first, as the training data was (a run records its choice).
        truncation_side (`str`, *optional*, defaults to `"right"`): What a too long message keeps.
        autocast (`str`, *optional*): Compute under `torch.autocast` in this dtype (``"bfloat16"``), as the
            run was evaluated; `None` computes in the weights' dtype.
    """

    def __init__(
        self,
        model,
        tokenizer,
        task: LabelTask,
        base_model: str,
        max_length: int = 256,
        decode_html: bool = False,
        truncation_side: str = "right",
        autocast: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.base_model = base_model
        self.max_length = max_length
        self.decode_html = decode_html
        self.truncation_side = truncation_side
        self.autocast = autocast
        self._content_free: torch.Tensor | None = None
        self._scorer: LabelScorer | None = None
        self._encoder: PromptEncoder | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        revision: str | None = None,
        quantization: str | None = None,
        device: str | None = None,
        allow_pickle: bool = False,
        dtype: Any = None,
        base_model: str | None = None,
        merge_adapter: bool = False,
    ) -> Classifier:
        """Load a run directory, or a Hub repo a run was pushed to.

        By default the run is reloaded as it was evaluated: its quantization and dtype (from `run.json`),
        so that its predictions reproduce the run's `predictions.csv`. For the fastest predictions on a
        CPU, load it unquantized with the adapter merged in the fastest dtype the CPU computes
        (``quantization="none", dtype="auto", merge_adapter=True``): bf16 where the CPU has native bf16
        (AVX-512 BF16 or AMX), else float32. Linear weights are laid out for few-row products on the CPU,
        by CPU class: float32 ones column-major with AVX-512; with AVX2 a float32 LM head computed weight
        first and, unquantized, the other float32 weights prepacked for oneDNN; bf16 ones prepacked where
        the CPU has native bf16. Prepacking costs a second copy of those weights in memory (see
        `trainer_ext.modeling.cpu_layout`). ``python -m benchmarks.latency`` measures
        each setting.

        Args:
            path_or_repo_id (`str` or `Path`): A local run directory or a Hub repo id (``user/name``).
            revision (`str`, *optional*): Hub branch, tag or commit to pin.
            quantization (`str`, *optional*): Override the run's quantization (``"8bit"``, ``"4bit"``,
                ``"none"``).
            device (`str`, *optional*): Defaults to CUDA when available.
            allow_pickle (`bool`, *optional*, defaults to `False`): Accept pickled `.bin` weights.
            dtype (`str` or `torch.dtype`, *optional*): Override the run's dtype (``"auto"`` picks the
                fastest this machine runs).
            base_model (`str`, *optional*): Load this base model (directory or Hub id) instead of the one
                `run.json` records, e.g. when the recorded local directory has moved.
            merge_adapter (`bool`, *optional*, defaults to `False`): Fold the LoRA adapter into the base
                weights (needs ``quantization="none"``); see `load_run`.

        Raises:
            `FileNotFoundError`: for a name that is neither a directory nor a Hub id;
            `RunDirError`: for a directory that is not a run, a recorded base model directory that is gone,
                or `merge_adapter` with quantized weights;
            `TypeError`: for a `merge_adapter` that is not a `bool`.
        """
        from trainer_ext.runs.directory import load_run

        path = Path(path_or_repo_id)
        if not path.is_dir():
            if is_local_path(path_or_repo_id) or str(path_or_repo_id).count("/") != 1:
                raise FileNotFoundError(
                    f"{str(path_or_repo_id)!r} is neither a run directory nor a Hub repo id (user/name)."
                )
            from trainer_ext.hub import download_model_dir

            path = download_model_dir(str(path_or_repo_id), revision=revision, allow_pickle=allow_pickle)
        loaded, task, info = load_run(
            path,
            quantization=quantization,
            device=device,
            dtype=dtype,
            allow_pickle=allow_pickle,
            base_model=base_model,
            merge_adapter=merge_adapter,
        )
        _lay_out_for_prediction(loaded)
        max_length = int(info.task.get("max_length", 256))
        decode_html = bool(info.data.get("decode_html", False))
        truncation_side = str(info.task.get("truncation_side", "right"))
        # As evaluated: under the run's autocast too, unless another dtype was asked for.
        autocast = info.autocast if dtype is None else None
        return cls(
            loaded.model,
            loaded.tokenizer,
            task,
            info.base_model,
            max_length,
            decode_html,
            truncation_side,
            autocast,
        )

    @classmethod
    def from_base(
        cls,
        model_name_or_path: str,
        task: LabelTask,
        quantization: str = "8bit",
        device: str | None = None,
        max_length: int = 256,
        dtype: Any = "auto",
        decode_html: bool = False,
        truncation_side: str = "right",
    ) -> Classifier:
        """A frozen base model with a task: zero-shot, or few-shot when the task has shots.

        Args:
            model_name_or_path (`str`): A local model directory, a Hub id, or the embedded model's name.
            task (`LabelTask`): The labels and the prompt template.
            quantization (`str`, *optional*, defaults to `"8bit"`): ``"8bit"``, ``"4bit"`` or ``"none"``.
            device (`str`, *optional*): Defaults to CUDA when available.
            max_length (`int`, *optional*, defaults to 256): Tokens of a prompt; longer messages are
                shortened on `truncation_side`.
            dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`): The dtype of the unquantized
                weights and of the compute (see `trainer_ext.modeling.loading.resolve_dtype`; ``"auto"``
                picks the fastest this machine runs).
            decode_html (`bool`, *optional*, defaults to `False`): Decode HTML entities (``&amp;``) in
                the texts first, as a run trained with ``decode_html`` does.
            truncation_side (`str`, *optional*, defaults to `"right"`): Which end of a long message goes.

        Raises:
            `ModelLoadError`: for a model that cannot be loaded with these settings.
        """
        from trainer_ext.modeling.loading import load_model

        loaded = load_model(
            model_name_or_path, quantization=quantization, method="none", device=device, dtype=dtype
        )
        loaded.model.eval()
        _lay_out_for_prediction(loaded)
        return cls(
            loaded.model, loaded.tokenizer, task, model_name_or_path, max_length, decode_html, truncation_side
        )

    def with_labels(self, labels: Sequence[str], max_length: int | None = None) -> Classifier:
        """The same model and template over another label set (zero-shot topics).

        Args:
            labels (`Sequence[str]`): The label names, e.g. ``["business", "sport"]``.
            max_length (`int`, *optional*): Prompt + completion budget in tokens; default this classifier's.
                An instruction template names every label in the prompt, so many or long labels need more.

        Raises:
            `TaskError`: for labels that are not a list of distinct, non-empty names (a single string too).
            `ValueError`: for a `max_length` below 8.
        """
        if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
            raise ValueError(f"max_length must be a whole number of tokens, at least 8; got {max_length!r}.")
        return Classifier(
            self.model,
            self.tokenizer,
            self.task.with_labels(labels),
            self.base_model,
            self.max_length if max_length is None else max_length,
            self.decode_html,
            self.truncation_side,
            self.autocast,
        )

    def prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Prompt ids of `texts` (messages shortened to fit `max_length`)."""
        return [ids for ids, _ in self.encode(texts)]

    def encode(self, texts: Sequence[str]) -> list[tuple[list[int], bool]]:
        """Prompt ids of `texts` and whether each message was shortened to fit `max_length`.

        Raises:
            `TypeError`: for an item that is not a string.
        """
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"Texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}.")
        if self.decode_html:
            texts = [html.unescape(text) for text in texts]
        encoder = self._encoder  # kept while the tokenizer, task and length settings stay the same
        if (
            encoder is None
            or encoder.tokenizer is not self.tokenizer
            or encoder.task is not self.task
            or (encoder.max_length, encoder.truncation_side) != (self.max_length, self.truncation_side)
        ):
            encoder = self._encoder = PromptEncoder(
                self.tokenizer, self.task, self.max_length, self.truncation_side
            )
        return encoder(texts)

    def _compute(self):
        """The autocast context the model computes in (the run's, see `from_pretrained`), or none."""
        if not self.autocast:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device
        return torch.autocast(device_type=device.type, dtype=getattr(torch, self.autocast))

    def scorer(self) -> LabelScorer:
        """The constrained scorer of this model and task, which keeps the template's KV cache across calls.

        The template's prefix (special tokens and the prompt before the message, k-shot examples included)
        is the same for every message, so its keys and values are computed once, on the first call, and
        every later call feeds only each prompt's own tokens. A new model or task object gets a new scorer;
        after changing the model's weights in place, call `scorer().clear()`.
        """
        scorer = self._scorer
        if scorer is None or scorer.model is not self.model or scorer.task is not self.task:
            probes = self.prompts(["a", "b"])  # two messages: what they share is the template's
            prefix = probes[0][: shared_prefix_length(probes)]
            scorer = self._scorer = LabelScorer(self.model, self.tokenizer, self.task, prefix)
        return scorer

    def content_free_probs(self) -> torch.Tensor:
        """Label probabilities of content-free inputs (``"N/A"``, ...), averaged: the model's label bias."""
        if self._content_free is None:
            with self._compute():
                scores = self.scorer()(self.prompts(list(CONTENT_FREE_INPUTS)))
            self._content_free = scores.probs.mean(0)
        return self._content_free

    def predict(
        self,
        texts: Sequence[str] | str,
        decoding: str = "constrained",
        batch_size: int = 16,
        calibrate: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Classify texts.

        Args:
            texts (`str` or `Sequence[str]`): The messages.
            decoding (`str`, *optional*, defaults to `"constrained"`): ``"constrained"`` (label probabilities,
                never invalid) or ``"generate"`` (greedy answer parsed to a label).
            batch_size (`int`, *optional*, defaults to 16): Texts per forward pass.
            calibrate (`bool`, *optional*, defaults to `False`): Contextual calibration of constrained scores
                (divide out the bias measured on content-free inputs).
            on_batch (`Callable[[int], None]`, *optional*): Progress callback, called with each batch's size.

        Returns:
            `list[Prediction]`, in input order.

        Raises:
            `ValueError`: for an empty (or whitespace-only) text, an unknown `decoding`, or a `batch_size`
                below 1.
            `TypeError`: for `texts` that are neither a string nor an iterable of strings (`None`, bytes, a
                number), or an item that is not a string.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):  # None too
            hint = " (decode bytes to str first)" if isinstance(texts, (bytes, bytearray)) else ""
            raise TypeError(f"texts must be a string or a list of strings, not {type(texts).__name__}{hint}.")
        else:
            texts = list(texts)
        if decoding not in DECODINGS:
            raise ValueError(f"decoding: unknown value {decoding!r}; choose one of {DECODINGS}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number of texts, at least 1; got {batch_size!r}.")
        if calibrate and decoding != "constrained":
            raise ValueError(
                "calibrate needs constrained decoding: generated answers have no label probabilities."
            )
        if not texts:
            return []
        encoded = self.encode(texts)
        empty = [i for i, text in enumerate(texts) if not text.strip()]
        if empty:
            raise ValueError(
                f"Text {empty[0]} is empty ({len(empty)} of {len(texts)} are): there is nothing to classify; "
                "leave empty texts out (the label of an empty message would only be the model's prior)."
            )
        prompts, cut = [ids for ids, _ in encoded], [flag for _, flag in encoded]
        if decoding == "generate":
            with self._compute():
                result = generate_labels(
                    self.model, self.tokenizer, self.task, prompts, batch_size, on_batch=on_batch
                )
            rows = zip(texts, result.labels, result.completions, cut, strict=True)
            return [Prediction(text, label, None, completion, flag) for text, label, completion, flag in rows]
        with self._compute():
            result = self.scorer()(prompts, batch_size, on_batch=on_batch)
        probs = result.probs
        if calibrate:
            probs = contextual_calibration(probs, self.content_free_probs())
        # Offsets fitted on a dev set for the class prior (task.json), after any calibration.
        probs = apply_decision_bias(probs, self.task.labels, self.task.decision_bias)
        labels = self.task.labels
        return [
            Prediction(
                text,
                labels[int(row.argmax())],
                dict(zip(labels, map(float, row.tolist()), strict=True)),
                truncated=flag,
            )
            for text, row, flag in zip(texts, probs, cut, strict=True)
        ]

    def __repr__(self) -> str:
        return f"Classifier(base_model={self.base_model!r}, labels={self.task.labels})"
