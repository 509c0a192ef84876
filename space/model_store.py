"""The models behind the demo: which ones, loaded once on first use, cached, shared by every request.

The demo runs a *trained* classifier (a base model plus the adapter a training run saved, whose
`task.json` gives the labels and the prompt template) and, for comparison and for free generation,
the *base* model alone. Where no trained adapter exists the base model answers every tab and the page
says so.

Settings come from the command line of `app.py` or from environment variables (a Hugging Face Space
sets them under *Settings -> Variables*):

- `TRAINER_EXT_SPACE_ADAPTER`: a run directory or a Hub id of a pushed run; empty for the base model
  only. Default: `runs/moderation-lora-all` in the repository, when that directory exists.
- `TRAINER_EXT_SPACE_REVISION`: the Hub revision (branch, tag or commit) of the adapter.
- `TRAINER_EXT_SPACE_BASE_MODEL`: the base model when no adapter is used (default `smollm2-135m`, the
  embedded SmolLM2-135M-Instruct); with an adapter the base model is the one its run was trained on.
- `TRAINER_EXT_SPACE_QUANTIZATION`: `auto` (default), `8bit`, `4bit` or `none`. `auto` is `8bit` on a
  GPU and `none` on a CPU, where bitsandbytes' 8-bit matrix products are several times slower than
  fp32 and a model of this size fits in memory anyway.
- `TRAINER_EXT_SPACE_MERGE_ADAPTER`: `true` (default) or `false`: fold the adapter into unquantized
  weights (see `SpaceSettings.merge_adapter`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from argparse import ArgumentTypeError
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from transformers.hf_argparser import string_to_bool

from space.generation import DecodingRequest, continue_prompt
from trainer_ext import vocabulary

logger = logging.getLogger(__name__)

# Where `make train` writes the main job, relative to the working directory the demo starts in.
DEFAULT_ADAPTER_DIR = Path("runs") / "moderation-lora-all"
DEFAULT_BASE_MODEL = "smollm2-135m"
QUANTIZATIONS = ("auto", *vocabulary.QUANTIZATIONS)
MAX_LABEL_SETS = 64

ENV_ADAPTER = "TRAINER_EXT_SPACE_ADAPTER"
ENV_REVISION = "TRAINER_EXT_SPACE_REVISION"
ENV_BASE_MODEL = "TRAINER_EXT_SPACE_BASE_MODEL"
ENV_QUANTIZATION = "TRAINER_EXT_SPACE_QUANTIZATION"
ENV_DTYPE = "TRAINER_EXT_SPACE_DTYPE"
ENV_ADAPTER_BASE_MODEL = "TRAINER_EXT_SPACE_ADAPTER_BASE_MODEL"
ENV_MERGE_ADAPTER = "TRAINER_EXT_SPACE_MERGE_ADAPTER"

T = TypeVar("T")


class ModelSetupError(ValueError):
    """The configured models cannot be used (missing directory, unknown quantization, failed load)."""


def _is_local_spec(spec: str) -> bool:
    """Whether an adapter spec names a local path rather than a Hub id (`owner/name`)."""
    return vocabulary.is_local_path(spec) or spec.count("/") != 1  # a repo id is exactly `owner/name`


@dataclass
class SpaceSettings:
    """Which models the demo serves.

    Args:
        adapter (`str`, *optional*):
            Local run directory or Hub id of the trained adapter; `None` runs the base model untrained.
        base_model (`str`, *optional*, defaults to `"smollm2-135m"`):
            Model name or path used when there is no adapter.
        revision (`str`, *optional*):
            Hub revision of the adapter.
        quantization (`str`, *optional*, defaults to `"auto"`):
            Weight quantization of every model: `8bit`, `4bit`, `none`, or `auto` (`8bit` on a GPU,
            `none` on a CPU); `auto` is resolved when the settings are made.
        dtype (`str`, *optional*):
            dtype of the models (`auto`, `float32`, `bfloat16`, ...); default: `auto` for unquantized
            models on a CPU (bfloat16 where the CPU computes it natively, else float32: the fastest), else
            the dtype the run was evaluated in.
        adapter_base_model (`str`, *optional*):
            Base model the adapter is loaded on instead of the one its `run.json` records (e.g. a moved
            local directory).
        merge_adapter (`bool`, *optional*, defaults to `True`):
            Fold the LoRA adapter into the base weights when they are unquantized (`quantization` `none`,
            the default on a CPU): one message is then 1.25-1.45x faster on a 2-core CPU (`bf16` against
            `bf16-merged` in docs/benchmarks/latency_epyc/latency.md). The base model, which the tabs
            that compare with it use, is then loaded as a second model the first time one asks for it
            (about 270 MB more for the embedded model in bf16, plus the untied copy of its output layer
            that merging an adapter of tied embeddings makes, about 57 MB; twice that in float32). Each of
            the two models also keeps weights prepacked for oneDNN: on a CPU with native bf16 its linear
            weights (about 270 MB more each), on a CPU with AVX2 but no AVX-512, where they are float32,
            its decoder weights (about 425 MB more each; see
            `trainer_ext.modeling.cpu_layout.use_prepacked_weights`). With `False` it is the trained model
            with its adapter switched off. Quantized weights always keep the adapter
            separate.
    """

    adapter: str | None = None
    base_model: str = DEFAULT_BASE_MODEL
    revision: str | None = None
    quantization: str = "auto"
    dtype: str | None = None
    adapter_base_model: str | None = None
    merge_adapter: bool = True
    adapter_is_default: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.merge_adapter, bool):  # "false" would be true
            raise ModelSetupError(
                f"merge_adapter must be True or False, got {self.merge_adapter!r}; from the command line or "
                f"${ENV_MERGE_ADAPTER}, write true or false."
            )
        if self.quantization not in QUANTIZATIONS:
            raise ModelSetupError(
                f"Unknown quantization {self.quantization!r} (from --quantization or ${ENV_QUANTIZATION}); "
                f"use one of {', '.join(QUANTIZATIONS)}."
            )
        import torch

        on_gpu = torch.cuda.is_available()
        if self.quantization == "auto":
            self.quantization = "8bit" if on_gpu else "none"
        if self.dtype is None and self.quantization == "none" and not on_gpu:
            self.dtype = "auto"  # the fastest this CPU computes; a run's own is often bf16
        self.adapter = (self.adapter or "").strip() or None
        if self.adapter and _is_local_spec(self.adapter) and not Path(self.adapter).expanduser().is_dir():
            raise ModelSetupError(
                f"The adapter directory {self.adapter} (from --adapter or ${ENV_ADAPTER}) does not exist; "
                "point it at a training run's output directory, a Hub id such as 'user/moderation-lora', "
                "or set it empty to run the base model."
            )
        base = Path(self.base_model).expanduser()
        if vocabulary.is_local_path(self.base_model) and not base.is_dir():
            raise ModelSetupError(
                f"The base model directory {self.base_model} (from --base_model or ${ENV_BASE_MODEL}) does "
                "not exist; pass a model directory, a Hub id, or the embedded model 'smollm2-135m'."
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SpaceSettings:
        """Settings from environment variables, then `overrides` (command-line values that are not `None`).

        Without `TRAINER_EXT_SPACE_ADAPTER` the adapter is the repository's default run directory
        (`runs/moderation-lora-all`) when a finished run is there (it has `run.json`), else none.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "base_model": environ.get(ENV_BASE_MODEL) or DEFAULT_BASE_MODEL,
            "revision": environ.get(ENV_REVISION) or None,
            "quantization": environ.get(ENV_QUANTIZATION) or "auto",
            "dtype": environ.get(ENV_DTYPE) or None,
            "adapter_base_model": environ.get(ENV_ADAPTER_BASE_MODEL) or None,
        }
        if environ.get(ENV_MERGE_ADAPTER, "").strip() and overrides.get("merge_adapter") is None:
            try:
                values["merge_adapter"] = string_to_bool(environ[ENV_MERGE_ADAPTER].strip())
            except ArgumentTypeError:
                raise ModelSetupError(
                    f"${ENV_MERGE_ADAPTER} is {environ[ENV_MERGE_ADAPTER]!r}; set it to true or false."
                ) from None
        if ENV_ADAPTER in environ:
            values["adapter"] = environ[ENV_ADAPTER]
        values.update({key: value for key, value in overrides.items() if value is not None})
        if "adapter" not in values:
            # `run.json` is written last: a directory without it is a run still in progress.
            has_default = (DEFAULT_ADAPTER_DIR / "run.json").is_file()
            values["adapter"] = str(DEFAULT_ADAPTER_DIR) if has_default else None
            values["adapter_is_default"] = has_default
        return cls(**values)


def _load(what: str, load: Callable[[], T]) -> T:
    """Run a loader; any failure becomes a `ModelSetupError` that says what to check."""
    logger.info("Loading %s ...", what)
    try:
        loaded = load()
    except ModelSetupError:
        raise
    except Exception as err:  # a loader fails in many library-specific ways; the page gets one message
        logger.exception("Loading %s failed", what)
        raise ModelSetupError(
            f"Could not load {what}: {type(err).__name__}: {str(err).rstrip('. ')}. Check the model settings "
            f"(${ENV_ADAPTER}, ${ENV_ADAPTER_BASE_MODEL}, ${ENV_BASE_MODEL}, ${ENV_QUANTIZATION}, "
            f"${ENV_DTYPE}, ${ENV_MERGE_ADAPTER}) and the server log."
        ) from err
    logger.info("Loaded %s.", what)
    return loaded


class ModelStore:
    """The demo's models: each loaded once, on first use, kept, and run one request at a time.

    Loading is serialised by one lock, so two first requests do not load a model twice. Every forward
    pass runs under a second lock: the weights are shared by all requests, the base model may be the
    trained model with its adapter switched off (one copy of the weights in memory; see
    `SpaceSettings.merge_adapter`), and on a CPU one pass at a time is also the fastest order.

    Args:
        settings (`SpaceSettings`): Which models to serve.
    """

    def __init__(self, settings: SpaceSettings) -> None:
        self.settings = settings
        self._inference_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        # Classifiers over request-time label sets, kept so that a repeated set reuses its calibration.
        self._label_sets: dict[tuple[bool, tuple[str, ...]], Any] = {}

    @property
    def has_adapter(self) -> bool:
        """Whether a trained adapter is configured (the model itself loads on first use)."""
        return self.settings.adapter is not None

    def is_loaded(self, key: str) -> bool:
        """Whether the model cached under `key` (`trained` or `base`) is in memory."""
        return key in self._cache

    def _cached(self, key: str, what: str, load: Callable[[], T]) -> T:
        if key not in self._cache:
            with self._load_lock:
                if key not in self._cache:
                    self._cache[key] = _load(what, load)
        return self._cache[key]

    def trained(self) -> Any | None:
        """The trained `Classifier` (base model + adapter), or `None` when no adapter is configured."""
        if not self.has_adapter:
            return None
        from trainer_ext.inference.classifier import Classifier

        settings = self.settings

        def load() -> Any:
            if settings.merge_adapter and not self.merges_adapter:
                logger.info(
                    "The adapter stays separate: merging it needs unquantized weights (--quantization "
                    "none), and the weights are %s.",
                    settings.quantization,
                )
            return Classifier.from_pretrained(
                settings.adapter,
                revision=settings.revision,
                quantization=settings.quantization,
                dtype=settings.dtype,
                base_model=settings.adapter_base_model,
                merge_adapter=self.merges_adapter,
            )

        return self._cached(
            "trained", f"the trained classifier from {settings.adapter} ({settings.quantization})", load
        )

    @property
    def merges_adapter(self) -> bool:
        """Whether the trained model's adapter is folded into its weights (asked for, and unquantized)."""
        return self.has_adapter and self.settings.merge_adapter and self.settings.quantization == "none"

    def base(self) -> Any:
        """The base model as a zero-shot `Classifier` (the trained task's template, or the moderation task).

        With a separate LoRA adapter this is the trained model itself, run with the adapter switched off;
        with no adapter, or an adapter merged into the weights, the base model is loaded on its own.
        """
        from trainer_ext.inference.classifier import Classifier
        from trainer_ext.tasks import moderation_task

        trained = self.trained()
        if trained is not None and hasattr(trained.model, "disable_adapter"):
            return self._cached(
                "base",
                "the base model (the trained model with its adapter off)",
                # A second Classifier over the same weights and task (its own calibration cache).
                lambda: trained.with_labels(trained.task.labels),
            )
        quantization = self.settings.quantization
        if trained is None:
            name, task, like = (
                self.settings.base_model,
                moderation_task(),
                {"dtype": self.settings.dtype or "auto"},
            )
        else:  # the trained run's base model, prompt and text handling, in the trained model's dtype
            name = self.settings.adapter_base_model or trained.base_model
            task = trained.task
            like = {
                "max_length": trained.max_length,
                "decode_html": trained.decode_html,
                "truncation_side": trained.truncation_side,
                "dtype": self.settings.dtype or trained.model.dtype,
            }
        return self._cached(
            "base",
            f"the base model {name} ({quantization})",
            lambda: Classifier.from_base(name, task, quantization=quantization, **like),
        )

    def classifier(self, use_trained: bool = True) -> Any:
        """The trained classifier when `use_trained` and there is one, else the base model's."""
        trained = self.trained() if use_trained else None
        return trained if trained is not None else self.base()

    @contextlib.contextmanager
    def _running(self, classifier: Any) -> Iterator[None]:
        """Hold the inference lock; switch the adapter off while `classifier` is the base view of it."""
        with self._inference_lock:
            trained = self._cache.get("trained")
            if trained is not None and classifier is not trained and classifier.model is trained.model:
                with classifier.model.disable_adapter():
                    yield
            else:
                yield

    def _with_labels(self, classifier: Any, use_trained: bool, labels: list[str]) -> Any:
        key = (use_trained, tuple(labels))
        if key not in self._label_sets:
            if len(self._label_sets) >= MAX_LABEL_SETS:
                self._label_sets.clear()
            self._label_sets[key] = classifier.with_labels(labels)
        return self._label_sets[key]

    def predict(
        self,
        texts: list[str],
        labels: list[str] | None = None,
        use_trained: bool = True,
        calibrate: bool = False,
    ) -> list[Any]:
        """Classify `texts` (constrained decoding: a probability for every label).

        Args:
            texts (`list[str]`): The messages.
            labels (`list[str]`, *optional*): Another label set for the same prompt template (zero-shot);
                default: the task's own labels.
            use_trained (`bool`, *optional*, defaults to `True`): Use the trained model when there is one.
            calibrate (`bool`, *optional*, defaults to `False`): Contextual calibration: divide out the
                label bias the model shows on content-free inputs such as "N/A".

        Returns:
            `list[Prediction]`: with `.label` and `.probs`, in input order.
        """
        classifier = self.classifier(use_trained)
        scorer = classifier if labels is None else self._with_labels(classifier, use_trained, labels)
        with self._running(classifier):
            return scorer.predict(texts, decoding="constrained", batch_size=len(texts), calibrate=calibrate)

    def labels(self) -> list[str]:
        """The labels of the trained task (of the moderation task without an adapter)."""
        return list(self.classifier().task.labels)

    def generate(self, prompt: str, request: DecodingRequest) -> str:
        """Continue `prompt` with the base model (see `generation.continue_prompt`)."""
        base = self.base()
        with self._running(base):
            return continue_prompt(base.model, base.tokenizer, prompt, request)
