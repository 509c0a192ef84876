"""Model and Space cards, rendered from the Jinja templates in ``hub_cards/`` through ``huggingface_hub``.

A model card is built from the files of a training run's output directory: ``run.json`` (base model,
method, quantization, optimizer, LoRA settings, hyper-parameters, framework versions), ``metrics.json``
(flat ``eval_*`` keys), ``task.json`` (labels, verbalizers, template) and ``confusion_matrix.png``. Each
of them may be missing: the card then shows ``[More Information Needed]`` where the fact would be, as the
default ``huggingface_hub`` template does. Known training data sets (the Davidson et al. 2017 tweets)
bring their license, citation and documented biases into the card.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import (
    EvalResult,
    ModelCard,
    ModelCardData,
    SpaceCard,
    SpaceCardData,
)

from trainer_ext.embedded import EMBEDDED_MODELS
from trainer_ext.tasks import TASK_FILE, LabelTask, TaskError

logger = logging.getLogger(__name__)

CARD_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "hub_cards"
MODEL_CARD_TEMPLATE = CARD_TEMPLATES_DIR / "model_card.md"
SPACE_CARD_TEMPLATE = CARD_TEMPLATES_DIR / "space_card.md"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
MISSING = "[More Information Needed]"
# Hyper-parameters shown in the card, in this order, when the run recorded them.
HYPERPARAMETERS = (
    *("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size"),
    *("gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay"),
    *("max_grad_norm", "max_length", "gradient_checkpointing", "bf16", "fp16", "seed"),
)
LORA_SETTINGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
METRIC_NAMES = {
    "eval_accuracy": "accuracy",
    "eval_macro_f1": "macro-F1",
    "eval_invalid_rate": "invalid rate",
}


class CardError(ValueError):
    """A run directory whose files cannot be read into a card."""


@dataclass(frozen=True)
class DatasetFacts:
    """What a card says about a known training data set.

    Args:
        hub_id (`str`): The data set's id on the Hub.
        name (`str`): A readable name.
        license (`str`): SPDX-style license id of the data.
        citation (`str`): BibTeX entry of the paper to cite.
        limits (`str`): Known biases and limits, in Markdown.
        path_hints (`tuple[str, ...]`): Fragments of local file paths that identify the data set.
    """

    hub_id: str
    name: str
    license: str
    citation: str
    limits: str
    path_hints: tuple[str, ...] = ()


DAVIDSON = DatasetFacts(
    hub_id="tdavidson/hate_speech_offensive",
    name="Davidson et al. 2017, hate speech and offensive language tweets",
    license="mit",
    citation="""@inproceedings{davidson2017automated,
  title     = {Automated Hate Speech Detection and the Problem of Offensive Language},
  author    = {Davidson, Thomas and Warmsley, Dana and Macy, Michael and Weber, Ingmar},
  booktitle = {Proceedings of the 11th International AAAI Conference on Web and Social Media (ICWSM)},
  year      = {2017}
}""",
    limits="""The tweets come from Davidson et al. (2017): English tweets found by searching for words of a
hate-speech lexicon, each labelled by crowd workers as hate speech, offensive language or neither.

- **Racial bias.** Davidson, Bhattacharya & Weber (2019), *Racial Bias in Hate Speech and Abusive Language
  Detection Datasets*, showed that in this data set (and others like it) tweets written in
  African-American English are labelled hateful or offensive much more often than other tweets, and that
  classifiers trained on it repeat the skew. Expect this model to over-flag African-American English and
  other dialects that the annotators judged harshly.
- **Sampling.** Tweets were selected by lexicon keywords, so slurs used in reclaimed or quoted senses are
  likely common, and hate expressed without those words is rare: expect the model to lean on surface words.
- **Subjective labels.** The line between "hate" and "offensive" is where annotators disagreed most;
  expect most confusions between these two labels (see the confusion matrix above).
- **Small, balanced split.** The moderation split has 1,000 training and 200 validation tweets with the three
  classes in roughly equal shares; in the full data set hate is about 6% of tweets, offensive about 77% and
  neither about 17%. Scores on real traffic will differ, with lower precision for "hate".""",
    path_hints=("davidson", "seed_split", "hate_speech_offensive"),
)
KNOWN_DATASETS = (DAVIDSON,)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from `path`; `{}` when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CardError(
            f"{path} is not valid JSON ({err}); fix or remove the file and render again."
        ) from None
    if not isinstance(data, dict):
        raise CardError(f"{path} holds a {type(data).__name__}, not a JSON object; it is not a run file.")
    return data


def detect_dataset(run: dict[str, Any]) -> DatasetFacts | None:
    """The known data set a run was trained on, from its Hub id or its file paths, if any."""
    data = run.get("data") or {}
    hub_id = data.get("hub_dataset") or run.get("dataset")
    paths = " ".join(str(data.get(key) or "") for key in ("data_dir", "train_file", "eval_file")).lower()
    for facts in KNOWN_DATASETS:
        if hub_id == facts.hub_id or (not hub_id and any(hint in paths for hint in facts.path_hints)):
            return facts
    return None


def base_model_id(run: dict[str, Any], adapter_config: dict[str, Any]) -> str | None:
    """The Hub id of the base model: `base_model_hub_id`, else a base model name that is not a local path."""
    if run.get("base_model_hub_id"):
        return str(run["base_model_hub_id"])
    for name in (run.get("base_model"), adapter_config.get("base_model_name_or_path")):
        if (
            name
            and str(name).count("/") == 1
            and not Path(str(name)).exists()
            and not str(name).startswith(".")
        ):
            return str(name)
    return None


def _template(template_path: str | Path | None, default: Path) -> str:
    path = Path(template_path or default)
    if not path.is_file():
        raise CardError(
            f"Card template {path} not found; pass template_path, or use a source checkout of trainer_ext "
            "(the templates live in its hub_cards/ directory)."
        )
    return str(path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _trainable(run: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    trainable = run.get("trainable_params", metrics.get("trainable_params"))
    if trainable is None:
        return None
    total = run.get("total_params", metrics.get("total_params"))
    if total:
        return f"{int(trainable):,} ({100 * int(trainable) / int(total):.2f}% of {int(total):,})"
    return f"{int(trainable):,}"


def _per_class(labels: list[str], metrics: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for label in labels:
        values = {
            name: metrics.get(f"eval_{name}_{label}", metrics.get(f"eval_{label}_{name}"))
            for name in ("precision", "recall", "f1", "support")
        }
        if any(value is not None for value in values.values()):
            rows.append({"label": label, **{k: MISSING if v is None else _fmt(v) for k, v in values.items()}})
    return rows


def _split_description(
    facts: DatasetFacts | None, data: dict[str, Any], split: str, count: Any
) -> str | None:
    name = facts.name if facts else (data.get("hub_dataset") or data.get(f"{split}_file"))
    if not name:
        return None
    file_name = data.get(f"{split}_file")
    where = f" (`{Path(str(file_name)).name}`)" if file_name and facts else ""
    return f"{name}{where}" + (f", {int(count):,} examples" if count else "")


def _eval_results(metrics: dict[str, Any], facts: DatasetFacts | None, data: dict) -> list[EvalResult] | None:
    if facts:
        dataset_type, dataset_name = facts.hub_id, facts.name
    else:
        dataset_type = data.get("hub_dataset") or "custom"
        dataset_name = data.get("hub_dataset") or Path(str(data.get("eval_file") or "custom")).stem
    results = []
    for key, metric_type, metric_name in (
        ("eval_accuracy", "accuracy", "Accuracy"),
        ("eval_macro_f1", "f1", "Macro F1"),
    ):
        if metrics.get(key) is None:
            continue
        result = EvalResult(
            task_type="text-classification",
            task_name="Text Classification",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=float(metrics[key]),
            metric_args={"average": "macro"} if metric_type == "f1" else None,
        )
        results.append(result)
    return results or None


def _task_variables(output_dir: Path) -> dict[str, Any]:
    if not (output_dir / TASK_FILE).is_file():
        return {"labels": [], "prompt": None, "shots": 0, "label_names": []}
    try:
        task = LabelTask.load(output_dir)
    except TaskError as err:
        raise CardError(str(err)) from None
    # The prompt is shown without its k-shot examples (training texts); the loader adds them from task.json.
    plain = LabelTask(task.labels, task.verbalizers, task.template)
    return {
        "labels": [(label, task.verbalizers[label]) for label in task.labels],
        "prompt": plain.prompt("{text}"),
        "shots": len(task.shots),
        "label_names": task.labels,
    }


def _license(run: dict[str, Any], license: str | None) -> str | None:
    if license or run.get("license"):
        return str(license or run["license"]).lower()
    embedded = EMBEDDED_MODELS.get(str(run.get("base_model")))
    return embedded.license.lower() if embedded else None


def _tags(run: dict[str, Any], is_adapter: bool) -> list[str]:
    tags = ["trainer_ext", "text-classification", "label-generation"]
    method, quantization = run.get("method"), run.get("quantization")
    if is_adapter:
        tags += ["peft", "lora"]
    if method:
        tags.append(str(method))
    if quantization and str(quantization) not in ("none", "None"):
        tags += ["bitsandbytes", str(quantization)]
    return tags


def _training_variables(run: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    training = run.get("training") or {}
    lora = run.get("lora") or {}
    versions = run.get("versions") or run.get("framework_versions") or {}
    return {
        "method": run.get("method"),
        "quantization": run.get("quantization"),
        "optimizer": run.get("optimizer") or training.get("optim"),
        "trainable_params": _trainable(run, metrics),
        "lora": [(key, _fmt(lora[key])) for key in LORA_SETTINGS if lora.get(key) is not None],
        "hyperparameters": [
            (key, _fmt(training[key])) for key in HYPERPARAMETERS if training.get(key) is not None
        ],
        "versions": sorted((str(name), str(version)) for name, version in versions.items()),
    }


def render_model_card(
    output_dir: str | Path,
    repo_id: str | None = None,
    *,
    revision: str | None = None,
    license: str | None = None,
    template_path: str | Path | None = None,
) -> ModelCard:
    """Render the model card of a training run's output directory.

    Args:
        output_dir (`str` or `Path`):
            The run's output directory (`run.json`, `metrics.json`, `task.json`, ... ; each may be missing).
        repo_id (`str`, *optional*):
            The Hub repo the card is for; used in the title and the loading example.
        revision (`str`, *optional*):
            The branch the run is pushed to, shown in the loading example when not `main`.
        license (`str`, *optional*):
            License id of the published weights; defaults to `run.json`'s `license`, then to the license
            of the embedded base model.
        template_path (`str` or `Path`, *optional*, defaults to `hub_cards/model_card.md`):
            The Jinja template.

    Returns:
        `huggingface_hub.ModelCard`: the card; `str(card)` is the README.md text.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise CardError(f"{output_dir} is not a directory; pass the output directory of a training run.")
    run, metrics = read_json(output_dir / "run.json"), read_json(output_dir / "metrics.json")
    adapter_config = read_json(output_dir / "adapter_config.json")
    facts, data = detect_dataset(run), run.get("data") or {}
    task = _task_variables(output_dir)
    base_model = base_model_id(run, adapter_config)
    name = repo_id or output_dir.resolve().name
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft" if adapter_config else None,
        pipeline_tag="text-classification",
        license=_license(run, license),
        datasets=[facts.hub_id] if facts else ([data["hub_dataset"]] if data.get("hub_dataset") else None),
        tags=_tags(run, bool(adapter_config)),
        model_name=name,
        eval_results=_eval_results(metrics, facts, data),
    )
    variables = {
        "model_id": name,
        "repo_id": repo_id,
        "revision": revision if revision not in (None, "main") else None,
        "base_model": base_model or run.get("base_model") or adapter_config.get("base_model_name_or_path"),
        "metrics": [(label, _fmt(metrics[key])) for key, label in METRIC_NAMES.items() if key in metrics],
        "per_class": _per_class(task["label_names"], metrics),
        "confusion_matrix": CONFUSION_MATRIX_FILE if (output_dir / CONFUSION_MATRIX_FILE).is_file() else None,
        "train_data": _split_description(facts, data, "train", data.get("train_samples")),
        "eval_data": _split_description(
            facts, data, "eval", metrics.get("eval_samples") or data.get("eval_samples")
        ),
        "dataset": facts,
        **task,
        **_training_variables(run, metrics),
    }
    return ModelCard.from_template(
        card_data, template_path=_template(template_path, MODEL_CARD_TEMPLATE), **variables
    )


def _gradio_version() -> str | None:
    try:
        return importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        return None


def render_space_card(
    space_dir: str | Path,
    repo_id: str | None = None,
    model_repo_id: str | None = None,
    *,
    template_path: str | Path | None = None,
) -> SpaceCard:
    """Render the card (README.md with the Space configuration) of the Gradio demo.

    The front matter of an existing `space_dir/README.md` is kept; missing keys get defaults (Gradio SDK,
    the installed Gradio version, `app.py`) and `model_repo_id` is added to `models`. The template shows
    the README's text when there is one, a generic description otherwise, and links the models.

    Args:
        space_dir (`str` or `Path`): The directory of the app (`app.py`, `requirements.txt`, ...).
        repo_id (`str`, *optional*): The Space repo, used as the title when the README has none.
        model_repo_id (`str`, *optional*): The model repo the app loads, linked from the card.
        template_path (`str` or `Path`, *optional*, defaults to `hub_cards/space_card.md`):
            The Jinja template.

    Returns:
        `huggingface_hub.SpaceCard`: the card; `str(card)` is the README.md text.
    """
    space_dir = Path(space_dir)
    if not (space_dir / "app.py").is_file():
        raise CardError(f"{space_dir} has no app.py; pass the directory of the Gradio app (e.g. space/).")
    existing, body = {}, None
    if (space_dir / "README.md").is_file():
        readme = SpaceCard.load(space_dir / "README.md", ignore_metadata_errors=True)
        existing, body = readme.data.to_dict(), readme.text.strip() or None
    metadata = {
        "title": (repo_id or "trainer_ext demo").split("/")[-1],
        "emoji": "🏷️",
        "colorFrom": "indigo",
        "colorTo": "gray",
        "sdk": "gradio",
        "sdk_version": _gradio_version(),
        "app_file": "app.py",
        "pinned": False,
        **existing,
    }
    models = list(metadata.pop("models", None) or [])
    if model_repo_id and model_repo_id not in models:
        models.append(model_repo_id)
    card_data = SpaceCardData(models=models or None, **metadata)
    variables = {**card_data.to_dict(), "models": models, "body": body}
    return SpaceCard.from_template(
        card_data, template_path=_template(template_path, SPACE_CARD_TEMPLATE), **variables
    )
