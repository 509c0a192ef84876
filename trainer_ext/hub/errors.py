"""Hub failures as one `HubError` whose message says what failed and what to do, never showing the token.

`hub_errors` is a context manager around `huggingface_hub` calls; it maps the client's exceptions (bad or
missing token, missing repo or revision, gated repo, no network, a card the Hub rejects) to messages a
user can act on. `resolve_token` finds the token to write with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants, get_token
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # huggingface_hub 2 speaks HTTP through httpx2, version 1 through httpx
    import httpx2 as httpx
except ImportError:  # depends on the installed huggingface_hub
    import httpx

TOKEN_HELP = "set HF_TOKEN or run `hf auth login` with a token that has {access} access"


class HubError(RuntimeError):
    """A Hub operation failed (bad token, missing repo or revision, no network, refused file)."""


def _scrub(message: str, token: str | None) -> str:
    return message.replace(token, "***") if token else message


@contextlib.contextmanager
def hub_errors(
    what: str, repo_id: str, token: str | None = None, revision: str | None = None
) -> Iterator[None]:
    """Turn `huggingface_hub` and network exceptions raised inside into a `HubError` with a clear message.

    Args:
        what (`str`): The operation, for the message (e.g. `"push to"`).
        repo_id (`str`): The repo concerned.
        token (`str`, *optional*): The token in use, scrubbed from any message.
        revision (`str`, *optional*): The revision concerned.
    """
    endpoint = constants.ENDPOINT
    token_help = TOKEN_HELP.format(access="write" if what.startswith("push") else "read")
    try:
        yield
    except HubError:
        raise
    except HFValidationError as err:
        message = f"{repo_id!r} is neither a local directory nor a valid Hub repo id (namespace/name): {err}"
        raise HubError(message) from None
    except LocalTokenNotFoundError:
        raise HubError(f"Cannot {what} {repo_id}: no Hugging Face token found; {token_help}.") from None
    except RevisionNotFoundError as err:
        message = f"Revision {revision!r} not found in {repo_id} on {endpoint}; check the branch, tag or sha."
        raise HubError(message) from err
    except GatedRepoError as err:
        message = f"Cannot {what} {repo_id}: the repo is gated; request access on its Hub page, then log in."
        raise HubError(message) from err
    except RepositoryNotFoundError as err:
        message = (
            f"Cannot {what} {repo_id}: repository not found on {endpoint}. Check the repo id; if it is "
            f"private, {token_help}.{_local_hint(repo_id)}"
        )
        raise HubError(message) from err
    except (
        httpx.ConnectError,
        httpx.TimeoutException,
        OfflineModeIsEnabled,
        LocalEntryNotFoundError,
    ) as err:
        message = (
            f"Cannot {what} {repo_id}: the Hub at {endpoint} cannot be reached and no cached copy fits "
            f"({type(err).__name__}). Check the network connection, HF_ENDPOINT and HF_HUB_OFFLINE."
            f"{_local_hint(repo_id)}"
        )
        raise HubError(message) from err
    except HfHubHTTPError as err:
        raise HubError(_http_message(err, what, repo_id, token, token_help)) from err
    except ValueError as err:
        if "Invalid metadata in README.md" not in str(err):
            raise
        raise HubError(f"The Hub rejected the card of {repo_id}: {_scrub(str(err), token)}") from err


def _local_hint(repo_id: str) -> str:
    """A hint for a mistyped local path read as a Hub id (``runs/nope`` when ``runs/`` exists)."""
    head = str(repo_id).split("/", 1)[0]
    if "/" not in str(repo_id) or not Path(head).is_dir():
        return ""
    return (
        f" If you meant a local directory: {str(Path(repo_id).absolute())!r} does not exist (though "
        f"{head!r} does); check the path, or write it as ./{repo_id}."
    )


def _token_source(token: str | None) -> str:
    if token and token == os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN"
    if token and token == get_token():
        return "the token saved by `hf auth login`"
    return "the token given"


def _http_message(err: HfHubHTTPError, what: str, repo_id: str, token: str | None, token_help: str) -> str:
    status = err.response.status_code if err.response is not None else None
    detail = " ".join(_scrub(str(err), token).split()) or type(err).__name__
    if status == 401:
        source = _token_source(token)
        return f"Cannot {what} {repo_id}: {source} was rejected (401: invalid or expired); {token_help}."
    if status == 403:
        return f"Cannot {what} {repo_id}: the token has no write access to it (403); {token_help}."
    return f"Cannot {what} {repo_id}: the Hub answered HTTP {status}: {detail}"


def resolve_token(token: str | None = None) -> str:
    """The token to write with: `token`, else `HF_TOKEN`, else the `huggingface_hub` login."""
    token = token or get_token()
    if not token:
        raise HubError(f"No Hugging Face token found; {TOKEN_HELP.format(access='write')}.")
    return token
