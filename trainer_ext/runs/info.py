"""`RunInfo`: the record of a training run (`run.json`), written and read by this one class.

Every reader of a run directory (loading a run back, the model card, the study) goes through
`RunInfo.load`, so the file's keys are defined here and nowhere else.

>>> info = RunInfo(base_model="smollm2-135m", quantization="8bit", method="lora-all", dtype="bfloat16")
>>> RunInfo.from_dict(info.to_dict()) == info
True
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
ADAPTER_CONFIG = "adapter_config.json"
VERSIONED = ("trainer-ext", "torch", "transformers", "peft", "accelerate", "bitsandbytes")


class RunDirError(ValueError):
    """A directory that is not a usable run directory."""


def framework_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the platform's processor name elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The device (GPU name, or ``"cpu"``), the CPU's model and the widest vector instructions torch uses on
    it (``"AVX512"``, ...; bf16 results depend on them), CPU count, torch threads, date and
    `framework_versions`."""
    import os
    import time

    import torch

    from trainer_ext.modeling.loading import default_device

    device = default_device()
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
        "versions": framework_versions(),
    }


@dataclass
class DataSource:
    """What one split of a run read.

    Args:
        split (`str`): ``"train"``, ``"dev"`` or ``"eval"``.
        rows (`int`): Examples used from it.
        path (`str`, *optional*): Absolute path of the local file.
        hub_dataset (`str`, *optional*): Hub dataset id, when the split came from the Hub.
        held_out (`bool`, *optional*, defaults to `False`): Drawn out of the training file, not a file of
            its own.
    """

    split: str
    rows: int
    path: str | None = None
    hub_dataset: str | None = None
    held_out: bool = False

    @property
    def name(self) -> str:
        """The file name or the Hub dataset id."""
        return self.hub_dataset or Path(str(self.path)).name


@dataclass
class RunInfo:
    """The record of a training run, saved as `run.json` in its run directory.

    Args:
        base_model (`str`): What the base model was loaded from: an embedded short name, a Hub id, or the
            absolute path of a local directory (never a relative one).
        quantization (`str`): ``"8bit"``, ``"4bit"`` or ``"none"``.
        method (`str`): A method of `trainer_ext.vocabulary.METHODS`.
        dtype (`str`): The dtype of the run's non-quantized weights, e.g. ``"float32"``.
        autocast (`str`, *optional*): The autocast dtype training and evaluation computed in (``"bfloat16"``
            with ``bf16: true``, ``"float16"`` with ``fp16: true``), `None` without autocast.
        base_model_hub_id (`str`, *optional*): The Hub id the base model stands for, when known.
        optimizer (`str`, *optional*): `TrainingArguments.optim` as its value (``"adamw_bnb_8bit"``).
        trainable_params (`int`, *optional*): Parameters trained.
        total_params (`int`, *optional*): Parameters of the model (tied tensors once).
        lora (`dict`): The LoRA settings (`LoraSettings` fields).
        task (`dict`): The task settings (`TaskSettings` fields).
        data (`dict`): The data settings (`DataSettings` fields; file paths absolute).
        sources (`list[DataSource]`): What each split read, with row counts.
        training (`dict`): The recipe's training arguments that differ from their defaults.
        eval_samples (`int`, *optional*): Examples in the evaluation set.
        license (`str`, *optional*): License id of the trained weights.
        notes (`dict`): Further facts of the run (e.g. the best checkpoint and why it was chosen).
        versions (`dict`): Python and library versions.
    """

    base_model: str
    quantization: str
    method: str
    dtype: str = "float32"
    autocast: str | None = None
    base_model_hub_id: str | None = None
    optimizer: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    lora: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    sources: list[DataSource] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    eval_samples: int | None = None
    license: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict written to `run.json`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = RUN_FILE) -> RunInfo:
        """Read the dict of `run.json`; unknown keys (from other versions) are ignored.

        Raises:
            `RunDirError`: when a key every run has (`base_model`, `quantization`, `method`) is missing.
        """
        missing = [key for key in ("base_model", "quantization", "method") if key not in values]
        if missing:
            raise RunDirError(f"{where} lacks {missing}; it was not written by a training run.")
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {key: value for key, value in values.items() if key in known}
        kept["sources"] = [DataSource(**source) for source in kept.get("sources") or []]
        return cls(**kept)

    def shareable(self) -> str:
        """The `run.json` text to publish: the data files' and run directories' paths cut to their names,
        a local base model replaced by its Hub id when it has one."""
        values = self.to_dict()
        for source in values["sources"]:
            source["path"] = Path(source["path"]).name if source.get("path") else None
        for key in ("data_dir", "train_file", "eval_file"):
            if values["data"].get(key):
                values["data"][key] = Path(str(values["data"][key])).name
        if Path(self.base_model).is_absolute() and self.base_model_hub_id:
            values["base_model"] = (
                self.base_model_hub_id
            )  # a local base model without one stays loadable here
        for key in ("output_dir", "logging_dir", "resume_from_checkpoint"):
            if isinstance(values["training"].get(key), str):
                values["training"][key] = Path(values["training"][key]).name
        best = values["notes"].get("best_checkpoint")
        if best and best.get("checkpoint"):
            best["checkpoint"] = Path(best["checkpoint"]).name
        return json.dumps(values, indent=2, default=str) + "\n"

    def save(self, run_dir: str | Path) -> Path:
        """Write `run.json` into `run_dir`, with the framework versions of this process."""
        self.versions = self.versions or framework_versions()
        path = Path(run_dir) / RUN_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunInfo:
        """The record of `run_dir`: its `run.json`, or for a plain PEFT adapter directory what its config
        tells.

        Raises:
            `RunDirError`: when `run_dir` has neither file, or its `run.json` is unreadable.
        """
        run_dir = Path(run_dir)
        path = run_dir / RUN_FILE
        if path.is_file():
            try:
                values = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RunDirError(f"{path} is not valid JSON ({err}); it cannot be read as a run.") from None
            if not isinstance(values, dict):
                raise RunDirError(f"{path} holds a {type(values).__name__}, not a JSON object.")
            return cls.from_dict(values, str(path))
        if (run_dir / ADAPTER_CONFIG).is_file():
            config = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            # A PEFT adapter saved by another tool: its config names the base model and the LoRA targets; it
            # is loaded on the 8-bit base model, as this package's runs are by default.
            return cls(
                base_model=config["base_model_name_or_path"],
                quantization="8bit",
                method="lora-all",
                lora={"lora_target_modules": config.get("target_modules")},
                notes={"origin": "adapter_config.json without run.json"},
            )
        raise RunDirError(
            f"{str(run_dir)!r} is not a run directory: it has neither {RUN_FILE} nor {ADAPTER_CONFIG}. "
            "Pass the output_dir of a training run (or a Hub repo it was pushed to)."
        )
