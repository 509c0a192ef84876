"""Model and Space cards, rendered from the Jinja templates in ``templates/`` through ``huggingface_hub``.

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
from pathlib import Path
from typing import Any

from huggingface_hub import (
    EvalResult,
    ModelCard,
    ModelCardData,
    SpaceCard,
    SpaceCardData,
)

from trainer_ext.hub.datasets import DatasetFacts, detect_dataset
from trainer_ext.modeling.embedded import EMBEDDED_MODELS
from trainer_ext.runs.info import ADAPTER_CONFIG, RUN_FILE, DataSource, RunDirError, RunInfo
from trainer_ext.tasks import TASK_FILE, LabelTask, TaskError
from trainer_ext.vocabulary import is_local_path

logger = logging.getLogger(__name__)

CARD_TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
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


def base_model_id(info: RunInfo | None, adapter_config: dict[str, Any]) -> str | None:
    """The Hub id of the base model (a card's `base_model`): recorded, or a name that is a Hub id; never a
    path."""
    if info is not None and info.base_model_hub_id:
        return info.base_model_hub_id
    for name in (info.base_model if info else None, adapter_config.get("base_model_name_or_path")):
        if name and str(name).count("/") == 1 and not is_local_path(str(name)):
            return str(name)
    return None


def _base_model_text(info: RunInfo | None, hub_id: str | None) -> str | None:
    """How the card body names the base model: its Hub id, else the local directory's name only."""
    if hub_id:
        return hub_id
    if info is None:
        return None
    return (
        f"a local model (`{Path(info.base_model).name}`)"
        if is_local_path(info.base_model)
        else info.base_model
    )


def _template(template_path: str | Path | None, default: Path) -> str:
    path = Path(template_path or default)
    if not path.is_file():
        raise CardError(
            f"Card template {path} not found; pass template_path with a Jinja template of a model card "
            "(the shipped ones are in trainer_ext/hub/templates/)."
        )
    return str(path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _trainable(info: RunInfo | None, metrics: dict[str, Any]) -> str | None:
    trainable = info.trainable_params if info and info.trainable_params is not None else None
    trainable = metrics.get("trainable_params") if trainable is None else trainable
    if trainable is None:
        return None
    total = (info.total_params if info else None) or metrics.get("total_params")
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


def _split_description(facts: DatasetFacts | None, sources: list[DataSource], split: str) -> str | None:
    """What a split read: the data set's name and the file or Hub dataset, with the row count."""
    source = next((s for s in sources if s.split == split), None)
    if source is None:
        return None
    where = f"Hub dataset `{source.hub_dataset}`" if source.hub_dataset else f"local file `{source.name}`"
    if source.held_out:
        where += " (held out of the training file)"
    prefix = f"{facts.name}, " if facts else ""
    return f"{prefix}{where}, {source.rows:,} examples"


def _eval_results(
    metrics: dict[str, Any], facts: DatasetFacts | None, sources: list[DataSource]
) -> list[EvalResult] | None:
    source = next((s for s in sources if s.split == "eval"), None)
    if source is not None and source.hub_dataset:
        dataset_type, dataset_name = source.hub_dataset, facts.name if facts else source.hub_dataset
    else:
        dataset_type = "custom"
        dataset_name = Path(source.name).stem if source is not None else "custom"
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


def _license(info: RunInfo | None, license: str | None) -> str | None:
    if license or (info and info.license):
        return str(license or info.license).lower()
    embedded = EMBEDDED_MODELS.get(str(info.base_model)) if info else None
    return embedded.license.lower() if embedded else None


def _tags(info: RunInfo | None, is_adapter: bool) -> list[str]:
    tags = ["trainer_ext", "text-classification", "label-generation"]
    if is_adapter:
        tags += ["peft", "lora"]
    if info is not None:
        tags.append(info.method)
        if info.quantization != "none":
            tags += ["bitsandbytes", info.quantization]
    return tags


def _training_variables(info: RunInfo | None, metrics: dict[str, Any]) -> dict[str, Any]:
    if info is None:
        return {
            "trainable_params": _trainable(None, metrics),
            "lora": [],
            "hyperparameters": [],
            "versions": [],
        }
    training, lora = info.training, info.lora
    return {
        "method": info.method,
        "quantization": info.quantization,
        "optimizer": info.optimizer,
        "trainable_params": _trainable(info, metrics),
        "lora": [(key, _fmt(lora[key])) for key in LORA_SETTINGS if lora.get(key) is not None],
        "hyperparameters": [
            (key, _fmt(training[key])) for key in HYPERPARAMETERS if training.get(key) is not None
        ],
        "versions": sorted((str(name), str(version)) for name, version in info.versions.items()),
    }


def _read_run(output_dir: Path) -> RunInfo | None:
    if not (output_dir / RUN_FILE).is_file() and not (output_dir / ADAPTER_CONFIG).is_file():
        return None
    try:
        return RunInfo.load(output_dir)
    except RunDirError as err:
        raise CardError(str(err)) from None


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
        template_path (`str` or `Path`, *optional*, defaults to `templates/model_card.md`):
            The Jinja template.

    Returns:
        `huggingface_hub.ModelCard`: the card; `str(card)` is the README.md text.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise CardError(f"{output_dir} is not a directory; pass the output directory of a training run.")
    info, metrics = _read_run(output_dir), read_json(output_dir / "metrics.json")
    adapter_config = read_json(output_dir / ADAPTER_CONFIG)
    sources = info.sources if info else []
    facts = detect_dataset(sources)
    task = _task_variables(output_dir)
    base_model = base_model_id(info, adapter_config)
    name = repo_id or output_dir.resolve().name
    hub_datasets = sorted({source.hub_dataset for source in sources if source.hub_dataset})
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft" if adapter_config else None,
        pipeline_tag="text-classification",
        license=_license(info, license),
        datasets=hub_datasets or None,
        tags=_tags(info, bool(adapter_config)),
        model_name=name,
        eval_results=_eval_results(metrics, facts, sources),
    )
    variables = {
        "model_id": name,
        "repo_id": repo_id,
        "revision": revision if revision not in (None, "main") else None,
        "base_model": _base_model_text(info, base_model),
        "metrics": [(label, _fmt(metrics[key])) for key, label in METRIC_NAMES.items() if key in metrics],
        "per_class": _per_class(task["label_names"], metrics),
        "confusion_matrix": CONFUSION_MATRIX_FILE if (output_dir / CONFUSION_MATRIX_FILE).is_file() else None,
        "train_data": _split_description(facts, sources, "train"),
        "eval_data": _split_description(facts, sources, "eval"),
        "dataset": facts,
        **task,
        **_training_variables(info, metrics),
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
        template_path (`str` or `Path`, *optional*, defaults to `templates/space_card.md`):
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
