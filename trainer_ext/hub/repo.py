"""Publishing runs and the demo Space on the Hugging Face Hub, and loading runs back from it.

- `push_run` uploads what a classifier needs from a training run's output directory (safetensors weights,
  adapter config, tokenizer files, `task.json`, `run.json`, `metrics.json`, the confusion matrix) with a
  model card rendered from `templates/model_card.md` (the repository's `hub_cards/`), in one commit,
  optionally to a branch.
- `push_space` uploads the Gradio app with its card to a Space repo.
- `download_model_dir` fetches a pushed run (safetensors only unless pickles are allowed) into the local
  cache; `Classifier.from_pretrained` calls it for anything that is not a local directory.

Tokens come from the `token` argument, `HF_TOKEN` or the `huggingface_hub` login; they are never logged,
printed or written into a file, and a token found in a file about to be uploaded stops the upload.
Every Hub failure surfaces as a `HubError` whose message says what failed and what to do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, RepoCard, constants, get_token, snapshot_download

from trainer_ext.hub.cards import CardError, base_model_id, read_json, render_model_card, render_space_card
from trainer_ext.hub.errors import HubError, hub_errors, resolve_token
from trainer_ext.runs.info import ADAPTER_CONFIG, RunDirError, RunInfo
from trainer_ext.vocabulary import is_local_path

__all__ = ["HubError", "PushResult", "download_model_dir", "push_run", "push_space", "select_run_files"]

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Pickled files the Trainer writes next to the weights; never weights, never uploaded.
TRAINER_STATE_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")
TOKENIZER_SUFFIXES = (".txt", ".model", ".jinja", ".tiktoken")
RUN_EXTRA_FILES = ("confusion_matrix.png",)
DOWNLOAD_PATTERNS = ["*.safetensors", "*.json", "*.md", *(f"*{suffix}" for suffix in TOKENIZER_SUFFIXES)]
# The variable through which the demo app (space/model_store.py) learns which model repo to load.
SPACE_ADAPTER_VARIABLE = "TRAINER_EXT_SPACE_ADAPTER"
SPACE_SKIPPED_PARTS = ("__pycache__", ".git", "flagged", ".gradio")


@dataclass
class PushResult:
    """What a push did, or would do with `dry_run`.

    Args:
        repo_id (`str`): The repo pushed to.
        repo_type (`str`): `"model"` or `"space"`.
        revision (`str`): The branch committed to.
        card (`huggingface_hub.RepoCard`): The rendered card.
        uploads (`dict[str, str | bytes]`): Path in the repo -> local file path, or content generated for
            the push (README.md, a rewritten adapter_config.json).
        dry_run (`bool`): Whether nothing was sent.
        commit_url (`str`, *optional*): URL of the commit.
        commit_oid (`str`, *optional*): Sha of the commit.
        space_variables (`dict[str, str]`, *optional*): Variables set on the Space after the commit.
    """

    repo_id: str
    repo_type: str
    revision: str
    card: RepoCard
    uploads: dict[str, str | bytes] = field(repr=False)
    dry_run: bool = False
    commit_url: str | None = None
    commit_oid: str | None = None
    space_variables: dict[str, str] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        """Paths in the repo of the uploaded files, README.md included, sorted."""
        return sorted(self.uploads)


def _is_pickled_weights(path: Path) -> bool:
    return path.suffix in PICKLE_SUFFIXES and path.name not in TRAINER_STATE_FILES


def select_run_files(output_dir: str | Path, allow_pickle: bool = False) -> list[Path]:
    """The files of a run's output directory that are published (top level only; checkpoints are skipped).

    Published: `*.safetensors`, `*.json`, tokenizer files and the confusion matrix. Not published:
    `predictions.csv` (it holds the evaluation texts, whose license may not allow redistribution, and
    the card already reports the metrics and confusion matrix), a local README.md (the card replaces
    it), Trainer state files, and pickled weights unless `allow_pickle`.

    Args:
        output_dir (`str` or `Path`): The run's output directory.
        allow_pickle (`bool`, *optional*, defaults to `False`): Publish pickled weights (`.bin`, `.pt`, ...).

    Returns:
        `list[Path]`: the files, sorted by name.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise HubError(f"{output_dir} is not a directory; pass the output directory of a training run.")
    files = sorted(path for path in output_dir.iterdir() if path.is_file())
    chosen = [
        path
        for path in files
        if path.suffix in (".safetensors", ".json", *TOKENIZER_SUFFIXES)
        or path.name in RUN_EXTRA_FILES
        or (allow_pickle and _is_pickled_weights(path))
    ]
    if not (output_dir / "task.json").is_file():
        raise HubError(f"{output_dir} has no task.json; it is not the output directory of a training run.")
    if not any(path.suffix == ".safetensors" for path in chosen):
        pickled = [path.name for path in files if _is_pickled_weights(path)]
        if pickled and not allow_pickle:
            raise HubError(
                f"{output_dir} holds only pickled weights ({', '.join(pickled)}), which can run code when "
                "loaded; save them as safetensors, or pass --allow_pickle (allow_pickle=True) to publish."
            )
        if not pickled:
            raise HubError(f"{output_dir} has no weights (*.safetensors); train first, then push.")
    return chosen


def _adapter_config_for_hub(output_dir: Path) -> bytes | None:
    """`adapter_config.json` with a local base model path replaced by the base model's Hub id.

    Warns when the base model is a local path with no known Hub id: the pushed run then only loads where
    that path exists (or with a `base_model` override).
    """
    config = read_json(output_dir / ADAPTER_CONFIG)
    if not config:
        return None
    try:
        info = RunInfo.load(output_dir)
    except RunDirError as err:
        raise HubError(str(err)) from None
    hub_id = base_model_id(info, {})
    local = [
        str(name)
        for name in (info.base_model, config.get("base_model_name_or_path"))
        if name and is_local_path(str(name))
    ]
    if local and hub_id is None:
        logger.warning(
            "The run's base model is the local path %s and run.json records no base_model_hub_id: the pushed "
            "run will only load where that path exists (or with base_model= / --base_model).",
            local[0],
        )
    name = config.get("base_model_name_or_path")
    if not name or not is_local_path(str(name)) or hub_id is None:
        return None
    config["base_model_name_or_path"] = hub_id
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _check_no_token(uploads: dict[str, str | bytes], token: str | None) -> None:
    if not token:
        return
    for path_in_repo, source in uploads.items():
        if path_in_repo.endswith((".safetensors", ".png")) or _is_pickled_weights(Path(path_in_repo)):
            continue
        content = source if isinstance(source, bytes) else Path(source).read_bytes()
        if token.encode() in content:
            raise HubError(
                f"{path_in_repo} contains your Hugging Face token; remove it from the file before pushing."
            )


def _check_repo_id(repo_id: str) -> None:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(
            f"Repo id {repo_id!r} must be NAMESPACE/NAME (your user or organization name, a slash, a name)."
        )


def _commit(
    result: PushResult, token: str | None, private: bool, message: str, space_sdk: str | None = None
) -> None:
    """Create the repo (and branch) if needed and upload `result.uploads` in one commit."""
    token = resolve_token(token)
    api = HfApi(token=token)
    repo_id, repo_type, revision = result.repo_id, result.repo_type, result.revision
    with hub_errors("push to", repo_id, token, revision):
        api.whoami()
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
        if private and not api.repo_info(repo_id, repo_type=repo_type).private:
            logger.warning("%s already exists and is public; --private only applies to a new repo.", repo_id)
        if revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        _check_no_token(result.uploads, token)
        operations = [CommitOperationAdd(path, source) for path, source in sorted(result.uploads.items())]
        info = api.create_commit(
            repo_id, operations, commit_message=message, revision=revision, repo_type=repo_type
        )
        for key, value in result.space_variables.items():
            api.add_space_variable(repo_id, key, value, description="Set by trainer-ext push --space")
    result.commit_url, result.commit_oid = info.commit_url, info.oid
    logger.info("Pushed %d files to %s@%s: %s", len(operations), repo_id, revision, info.commit_url)


def push_run(
    output_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    *,
    allow_pickle: bool = False,
    license: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Publish a training run's output directory to a model repo, with a rendered model card.

    Args:
        output_dir (`str` or `Path`): The run's output directory.
        repo_id (`str`): `NAMESPACE/NAME`; the repo is created if missing.
        private (`bool`, *optional*, defaults to `False`): Create the repo private.
        revision (`str`, *optional*): Branch to commit to; created from `main` if missing.
        token (`str`, *optional*): Write token; defaults to `HF_TOKEN` or the `huggingface_hub` login.
        dry_run (`bool`, *optional*, defaults to `False`): Render the card and list the files, send nothing.
        allow_pickle (`bool`, *optional*, defaults to `False`): Also publish pickled weights.
        license (`str`, *optional*): License id for the card (see `render_model_card`).
        commit_message (`str`, *optional*): The commit message.

    Returns:
        `PushResult`: the files, the card and, unless `dry_run`, the commit.
    """
    _check_repo_id(repo_id)
    output_dir = Path(output_dir)
    uploads: dict[str, str | bytes] = {
        path.name: str(path) for path in select_run_files(output_dir, allow_pickle)
    }
    adapter_config = _adapter_config_for_hub(output_dir)
    if adapter_config is not None:
        uploads["adapter_config.json"] = adapter_config
    try:
        card = render_model_card(output_dir, repo_id, revision=revision, license=license)
    except CardError as err:
        raise HubError(str(err)) from None
    if (output_dir / "run.json").is_file():
        try:
            uploads["run.json"] = RunInfo.load(output_dir).shareable().encode()
        except RunDirError as err:
            raise HubError(str(err)) from None
    uploads["README.md"] = str(card).encode()
    revision = revision or constants.DEFAULT_REVISION
    result = PushResult(repo_id, "model", revision, card, uploads, dry_run)
    if not dry_run:
        _commit(result, token, private, commit_message or f"Upload classifier from {output_dir.name}")
    return result


#: The Space's `app_file`: it starts the demo package, uploaded as `space/` beside it.
SPACE_LAUNCHER = (
    '"""Starts the trainer_ext demo; the app is the package space/ beside this file."""\n\n'
    "from space.app import main\n\nmain()\n"
)
#: Files of the demo that a Space reads at its root (the Space runtime installs requirements.txt).
SPACE_ROOT_FILES = ("requirements.txt",)


def _space_files(space_dir: Path, include_package: bool) -> dict[str, str | bytes]:
    """What a Space repo holds: the demo package under `space/`, a launcher `app.py`, and the library."""
    uploads: dict[str, str | bytes] = {"app.py": SPACE_LAUNCHER.encode()}
    for path in sorted(space_dir.rglob("*")):
        relative = path.relative_to(space_dir)
        if not path.is_file() or path.suffix == ".pyc" or set(relative.parts) & set(SPACE_SKIPPED_PARTS):
            continue
        if relative.as_posix() == "README.md":
            continue
        name = (
            relative.as_posix() if relative.as_posix() in SPACE_ROOT_FILES else f"space/{relative.as_posix()}"
        )
        uploads[name] = str(path)
    if include_package:
        package_dir = Path(__file__).resolve().parents[1]
        for path in sorted(package_dir.rglob("*")):
            if (
                path.is_file()
                and path.suffix in (".py", ".yaml", ".json", ".md")
                and "__pycache__" not in path.parts
            ):
                uploads[f"trainer_ext/{path.relative_to(package_dir).as_posix()}"] = str(path)
    return uploads


def push_space(
    space_dir: str | Path,
    repo_id: str,
    model_repo_id: str | None = None,
    private: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    *,
    include_package: bool = True,
    commit_message: str | None = None,
) -> PushResult:
    """Publish the Gradio demo to a Space repo, with its card (README.md with the Space configuration).

    Args:
        space_dir (`str` or `Path`): The app directory (`app.py`, `requirements.txt`, ...).
        repo_id (`str`): `NAMESPACE/NAME` of the Space; created (Gradio SDK) if missing.
        model_repo_id (`str`, *optional*): The model repo the app loads: linked from the card and set as the
            Space variable `TRAINER_EXT_SPACE_ADAPTER`.
        private (`bool`, *optional*, defaults to `False`): Create the Space private.
        token (`str`, *optional*): Write token; defaults to `HF_TOKEN` or the `huggingface_hub` login.
        dry_run (`bool`, *optional*, defaults to `False`): Render the card and list the files, send nothing.
        include_package (`bool`, *optional*, defaults to `True`): Also upload the `trainer_ext` package
            source, so that the Space can import it.
        commit_message (`str`, *optional*): The commit message.

    Returns:
        `PushResult`: the files, the card and, unless `dry_run`, the commit.
    """
    _check_repo_id(repo_id)
    space_dir = Path(space_dir)
    try:
        card = render_space_card(space_dir, repo_id, model_repo_id)
    except CardError as err:
        raise HubError(str(err)) from None
    uploads = _space_files(space_dir, include_package)
    uploads["README.md"] = str(card).encode()
    result = PushResult(repo_id, "space", constants.DEFAULT_REVISION, card, uploads, dry_run)
    if model_repo_id:
        result.space_variables[SPACE_ADAPTER_VARIABLE] = model_repo_id
    if not dry_run:
        _commit(result, token, private, commit_message or "Upload trainer_ext demo", space_sdk=card.data.sdk)
    return result


def _has_safetensors(directory: Path) -> bool:
    return any(path.is_file() for path in directory.rglob("*.safetensors"))


def download_model_dir(
    repo_id: str,
    revision: str | None = None,
    allow_pickle: bool = False,
    *,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Download a pushed run into the `huggingface_hub` cache and return the local directory.

    Safetensors weights, JSON files, tokenizer files and the card are fetched; pickled weights are only
    fetched (and a repo holding nothing else only accepted) with `allow_pickle`.

    Args:
        repo_id (`str`): The model repo, `NAMESPACE/NAME`.
        revision (`str`, *optional*): Branch, tag or commit sha to pin; defaults to `main`.
        allow_pickle (`bool`, *optional*, defaults to `False`): Accept pickled weights (they can run code).
        token (`str`, *optional*): Read token for private repos; defaults to `HF_TOKEN` or the login.
        cache_dir (`str` or `Path`, *optional*): Cache directory; defaults to the `huggingface_hub` cache.

    Returns:
        `Path`: the snapshot directory (files as in the repo).
    """
    scrub_token = token or get_token()
    patterns = list(DOWNLOAD_PATTERNS)
    with hub_errors("download", repo_id, scrub_token, revision):
        path = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, token=token, cache_dir=cache_dir
            )
        )
        if _has_safetensors(path):
            return path
        remote = HfApi(token=token).list_repo_files(repo_id, revision=revision)
        pickled = [name for name in remote if _is_pickled_weights(Path(name))]
        if not pickled:
            raise HubError(f"{repo_id} has no model weights (*.safetensors); is it a trainer_ext run?")
        if not allow_pickle:
            raise HubError(
                f"{repo_id} has only pickled weights ({', '.join(pickled)}), which can run code when loaded. "
                "Pass allow_pickle=True (--allow_pickle) only if you trust the repo's author."
            )
        patterns += [f"*{suffix}" for suffix in PICKLE_SUFFIXES]
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                ignore_patterns=list(TRAINER_STATE_FILES),
                token=token,
                cache_dir=cache_dir,
            )
        )
    logger.warning("Loading pickled weights from %s (allow_pickle=True).", repo_id)
    return path
