"""A small HTTP server that speaks the Hugging Face Hub protocol, for tests only.

It stands in for the Hub in tests only: the real ``huggingface_hub`` client runs unmodified against it
on 127.0.0.1 (``HF_ENDPOINT`` points at it, Xet storage disabled, a temporary ``HF_HOME``). It keeps
what the client relies on: users and tokens, model/dataset/Space repos (public or private), real commits
(each a new sha, with a parent), branches, regular and LFS files (LFS content goes through the batch API
and a presigned upload URL that takes no auth header), repo info with siblings, trees, refs, ``resolve``
downloads with ``X-Repo-Commit``/``ETag``/``Content-Length``, Space variables, README metadata
validation, and the Hub's error conventions (``X-Error-Code``/``X-Error-Message``; 401 for an anonymous
caller and 404 for another user on a private repo; 401 "Invalid credentials" for an unknown token).

File contents live in a temporary directory (content-addressed); the commit graph is kept in memory.

Use it through the ``fake_hub`` fixture (import ``fake_hub_fixture`` into a test module), which also
points ``huggingface_hub`` at it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Files the Hub's default .gitattributes sends to LFS; anything binary or above 10 MB goes there too.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".gguf",
    ".png",
    ".jpg",
    ".h5",
    ".onnx",
)
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()
INVALID_TOKEN = "Invalid credentials in Authorization header"


class HubHTTPError(Exception):
    """An error answered the way the Hub answers it: status, ``X-Error-Code`` and a message."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **body}


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: its git oid, size and, for LFS files, the sha256 of the content."""

    oid: str
    size: int
    lfs_sha256: str | None = None


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)  # Space variables: key -> {value, description}

    def resolve(self, revision: str) -> Commit:
        """The commit a branch name or a full commit sha points to."""
        oid = self.branches.get(revision, revision)
        if oid not in self.commits:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]


class HubState:
    """Users, repos and file contents of the stand-in Hub."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.RLock()
        self.tokens: dict[str, str] = {}  # token -> user name
        self.repos: dict[tuple[str, str], Repo] = {}
        self.uploads: dict[str, tuple[str, int]] = {}  # one-time upload ticket -> (sha256, size)
        (root / "lfs").mkdir(parents=True, exist_ok=True)
        (root / "git").mkdir(parents=True, exist_ok=True)

    def add_user(self, name: str) -> str:
        """Registers a user and returns a new write token for it."""
        token = "hf_" + secrets.token_hex(16)
        self.tokens[token] = name
        return token

    # -- content store -----------------------------------------------------------------------------
    def blob_path(self, entry: FileEntry) -> Path:
        return self.root / "lfs" / entry.lfs_sha256 if entry.lfs_sha256 else self.root / "git" / entry.oid

    def has_lfs(self, sha256: str) -> bool:
        return (self.root / "lfs" / sha256).is_file()

    def store_regular(self, content: bytes) -> FileEntry:
        entry = FileEntry(git_blob_sha1(content), len(content))
        self.blob_path(entry).write_bytes(content)
        return entry

    def store_lfs(self, content: bytes) -> None:
        (self.root / "lfs" / hashlib.sha256(content).hexdigest()).write_bytes(content)

    # -- repos and commits -------------------------------------------------------------------------
    def create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubHTTPError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = Repo(repo_type, repo_id, private, sdk, created=now())
            self.repos[(repo_type, repo_id)] = repo
            files = {".gitattributes": self.store_regular(GITATTRIBUTES)}
            self.add_commit(repo, "main", None, "initial commit", files)
            return repo

    def add_commit(self, repo: Repo, branch: str, parent: str | None, title: str, files: dict) -> Commit:
        date = now()
        seed = json.dumps([repo.repo_id, parent, title, date, sorted((p, e.oid) for p, e in files.items())])
        oid = hashlib.sha1(f"{seed}{secrets.token_hex(8)}".encode()).hexdigest()
        commit = Commit(oid, parent, title, date, files)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def visible_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        """The repo if ``user`` may read it; the Hub's 401/404 otherwise (a private repo looks missing)."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != owner(repo_id)):
            status = 401 if user is None else 404
            raise HubHTTPError(status, "Repository not found", "RepoNotFound")
        return repo

    def writable_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.visible_repo(repo_type, repo_id, user)
        if user != owner(repo_id):
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}")
        return repo


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def owner(repo_id: str) -> str:
    return repo_id.split("/", 1)[0]


def front_matter(text: str) -> dict | None:
    """The YAML metadata block at the top of a README, or ``None`` when there is none."""
    if not text.startswith("---"):
        return None
    parts = text.split("\n---", 1)
    if len(parts) < 2:
        return None
    data = yaml.safe_load(parts[0][3:])
    return data if isinstance(data, dict) else None


@dataclass
class Request:
    """What a route needs from an HTTP request."""

    method: str
    args: dict[str, str]
    query: dict[str, list[str]]
    body: bytes
    user: str | None
    endpoint: str

    def json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubHTTPError(400, f"Invalid JSON body: {error}") from error

    def repo_type(self) -> str:
        if "type" in self.args:
            return REPO_TYPES[self.args["type"]]
        return {"datasets/": "dataset", "spaces/": "space"}.get(self.args.get("prefix", ""), "model")

    def repo_url(self, repo_id: str, repo_type: str) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"


@dataclass
class Response:
    status: int = 200
    payload: dict | list | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def route_whoami(state: HubState, request: Request) -> Response:
    if request.user is None:
        raise HubHTTPError(401, "Invalid username or password.")
    access = {"displayName": "tests", "role": "write"}
    return Response(
        payload={
            "type": "user",
            "id": hashlib.sha1(request.user.encode()).hexdigest()[:24],
            "name": request.user,
            "fullname": request.user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": access},
        }
    )


def route_create_repo(state: HubState, request: Request) -> Response:
    if request.user is None:
        raise HubHTTPError(401, "You must be authenticated to create a repo")
    body = request.json()
    namespace = body.get("organization") or request.user
    if namespace != request.user:
        raise HubHTTPError(403, f"You don't have the rights to create a repo under the namespace {namespace}")
    repo_type = body.get("type") or "model"
    if repo_type == "space" and not body.get("sdk"):
        raise HubHTTPError(400, "A Space needs an sdk")
    private = body.get("visibility") in ("private", "protected") or body.get("private") is True
    repo_id = f"{namespace}/{body['name']}"
    url = request.repo_url(repo_id, repo_type)
    try:
        state.create_repo(repo_type, repo_id, private, body.get("sdk"))
    except HubHTTPError as error:  # the Hub names the existing repo's URL in a 409
        raise HubHTTPError(error.status, error.message, url=url) from None
    return Response(payload={"url": url, "name": repo_id})


def route_validate_yaml(state: HubState, request: Request) -> Response:
    content = request.json().get("content", "")
    try:
        metadata = front_matter(content)
    except yaml.YAMLError as error:
        return Response(400, {"errors": [{"message": f"YAML metadata could not be parsed: {error}"}]})
    if metadata is None:
        return Response(payload={"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
    index = metadata.get("model-index", [])
    if not isinstance(index, list) or any(not isinstance(m, dict) or "results" not in m for m in index):
        return Response(400, {"errors": [{"message": '"model-index" must be a list of {name, results}'}]})
    return Response(payload={"warnings": []})


def route_info(state: HubState, request: Request) -> Response:
    repo_type = request.repo_type()
    repo = state.visible_repo(repo_type, request.args["repo"], request.user)
    commit = repo.resolve(request.args.get("rev", "main"))
    card = {}
    if "README.md" in commit.files:
        card = front_matter(state.blob_path(commit.files["README.md"]).read_text(encoding="utf-8")) or {}
    info = {
        "id": repo.repo_id,
        "author": owner(repo.repo_id),
        "sha": commit.oid,
        "private": repo.private,
        "lastModified": commit.date,
        "createdAt": repo.created,
        "disabled": False,
        "gated": False,
        "tags": card.get("tags", []),
        "cardData": card,
        "siblings": [{"rfilename": p} for p in commit.files],
    }
    if repo_type == "model":
        info.update(library_name=card.get("library_name"), pipeline_tag=card.get("pipeline_tag"))
    if repo_type == "space":
        info.update(sdk=repo.sdk)
    return Response(payload=info)


def tree_entry(path: str, entry: FileEntry) -> dict:
    item = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
    if entry.lfs_sha256:
        pointer = lfs_pointer(entry.lfs_sha256, entry.size)
        item["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size, "pointerSize": len(pointer)}
    return item


def route_tree(state: HubState, request: Request) -> Response:
    repo = state.visible_repo(request.repo_type(), request.args["repo"], request.user)
    commit = repo.resolve(request.args["rev"])
    base = request.args.get("path", "").strip("/")
    recursive = request.query.get("recursive", ["False"])[0].lower() in ("1", "true")
    prefix = f"{base}/" if base else ""
    files = {p: e for p, e in commit.files.items() if p.startswith(prefix)}
    if base and not files:
        raise HubHTTPError(404, f"{base} does not exist on {request.args['rev']}", "EntryNotFound")
    entries, folders = [], set()
    for path, entry in sorted(files.items()):
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            folders.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            entries.append(tree_entry(path, entry))
    for folder in sorted(folders):
        oid = hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
    return Response(payload=entries)


def route_refs(state: HubState, request: Request) -> Response:
    repo = state.visible_repo(request.repo_type(), request.args["repo"], request.user)
    branches = [
        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()
    ]
    return Response(payload={"branches": branches, "converts": [], "tags": [], "pullRequests": []})


def route_create_branch(state: HubState, request: Request) -> Response:
    repo = state.writable_repo(request.repo_type(), request.args["repo"], request.user)
    branch = request.args["rev"]
    if branch in repo.branches:
        raise HubHTTPError(409, "Reference already exists")
    repo.branches[branch] = repo.resolve(request.json().get("startingPoint") or "main").oid
    return Response(payload={})


def route_space_variables(state: HubState, request: Request) -> Response:
    repo = state.writable_repo("space", request.args["repo"], request.user)
    if request.method == "POST":
        body = request.json()
        repo.variables[body["key"]] = {"value": body["value"], "description": body.get("description")}
    return Response(payload={key: {**value, "updatedAt": now()} for key, value in repo.variables.items()})


def upload_mode(path: str, size: int, sample: bytes) -> str:
    return "lfs" if path.endswith(LFS_SUFFIXES) or size > LFS_THRESHOLD or b"\0" in sample else "regular"


def route_preupload(state: HubState, request: Request) -> Response:
    repo = state.writable_repo(request.repo_type(), request.args["repo"], request.user)
    head = repo.resolve(request.args["rev"])
    answers = []
    for item in request.json().get("files", []):
        mode = upload_mode(item["path"], item["size"], base64.b64decode(item.get("sample", "")))
        remote = head.files.get(item["path"])
        remote_oid = None
        if remote is not None:
            remote_oid = remote.lfs_sha256 if mode == "lfs" else (None if remote.lfs_sha256 else remote.oid)
        answers.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
    return Response(payload={"files": answers, "commitOid": head.oid})


def route_lfs_batch(state: HubState, request: Request) -> Response:
    state.writable_repo(request.repo_type(), request.args["repo"], request.user)
    body = request.json()
    if body.get("operation") != "upload":
        raise HubHTTPError(400, "This server only takes LFS uploads through the batch API")
    objects = []
    for item in body.get("objects", []):
        answer = {"oid": item["oid"], "size": item["size"]}
        if not state.has_lfs(item["oid"]):
            ticket = secrets.token_hex(16)
            state.uploads[ticket] = (item["oid"], item["size"])
            answer["actions"] = {"upload": {"href": f"{request.endpoint}/_lfs/{ticket}", "expires_in": 3600}}
        objects.append(answer)
    return Response(payload={"transfer": "basic", "objects": objects, "hash_algo": "sha256"})


def route_lfs_upload(state: HubState, request: Request) -> Response:
    ticket = state.uploads.pop(request.args["ticket"], None)
    if ticket is None:
        raise HubHTTPError(403, "Upload URL expired or unknown")
    if (hashlib.sha256(request.body).hexdigest(), len(request.body)) != ticket:
        raise HubHTTPError(400, "Uploaded content does not match the announced sha256 and size")
    state.store_lfs(request.body)
    return Response(payload=b"")


def apply_operation(state: HubState, files: dict[str, FileEntry], key: str, value: dict) -> None:
    path = value.get("path", "")
    if key == "file":
        files[path] = state.store_regular(base64.b64decode(value["content"]))
    elif key == "lfsFile":
        if not state.has_lfs(value["oid"]):
            raise HubHTTPError(400, f"LFS file {path} was not uploaded before the commit")
        size = (state.root / "lfs" / value["oid"]).stat().st_size
        files[path] = FileEntry(git_blob_sha1(lfs_pointer(value["oid"], size)), size, value["oid"])
    elif key == "deletedFile":
        if files.pop(path, None) is None:
            raise HubHTTPError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
    elif key == "deletedFolder":
        for name in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
            del files[name]
    else:
        raise HubHTTPError(400, f"Unknown commit operation {key!r}")


def route_commit(state: HubState, request: Request) -> Response:
    repo_type, branch = request.repo_type(), request.args["rev"]
    repo = state.writable_repo(repo_type, request.args["repo"], request.user)
    if request.query.get("create_pr"):
        raise HubHTTPError(400, "This server does not open pull requests")
    if branch not in repo.branches:
        repo.resolve(branch)  # 404 RevisionNotFound for an unknown revision
        raise HubHTTPError(400, f"Can only commit to a branch, not to {branch}")
    head = repo.resolve(branch)
    lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
    header = next((line["value"] for line in lines if line["key"] == "header"), None)
    if header is None:
        raise HubHTTPError(400, "Commit payload has no header line")
    if header.get("parentCommit") not in (None, head.oid):
        raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
    files = dict(head.files)
    for line in lines:
        if line["key"] != "header":
            apply_operation(state, files, line["key"], line["value"])
    commit = state.add_commit(repo, branch, head.oid, header.get("summary", ""), files)
    url = f"{request.repo_url(repo.repo_id, repo_type)}/commit/{commit.oid}"
    return Response(
        payload={"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}
    )


def route_resolve(state: HubState, request: Request) -> Response:
    repo = state.visible_repo(request.repo_type(), request.args["repo"], request.user)
    commit = repo.resolve(request.args["rev"])
    entry = commit.files.get(request.args["path"])
    if entry is None:
        raise HubHTTPError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
    etag = f'"{entry.lfs_sha256 or entry.oid}"'
    headers = {"X-Repo-Commit": commit.oid, "ETag": etag, "Content-Type": "application/octet-stream"}
    if entry.lfs_sha256:
        headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(entry.size)})
    content = b"" if request.method == "HEAD" else state.blob_path(entry).read_bytes()
    return Response(payload=content, headers={**headers, "Content-Length": str(entry.size)})


_REPO = r"/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT_REPO = r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ({"GET"}, r"/api/whoami-v2", route_whoami),
    ({"POST"}, r"/api/repos/create", route_create_repo),
    ({"POST"}, r"/api/validate-yaml", route_validate_yaml),
    ({"GET"}, rf"/api{_REPO}(?:/revision/(?P<rev>[^/]+))?", route_info),
    ({"GET"}, rf"/api{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", route_tree),
    ({"GET"}, rf"/api{_REPO}/refs", route_refs),
    ({"POST"}, rf"/api{_REPO}/branch/(?P<rev>[^/]+)", route_create_branch),
    ({"GET", "POST"}, r"/api/spaces/(?P<repo>[^/]+/[^/]+)/variables", route_space_variables),
    ({"POST"}, rf"/api{_REPO}/preupload/(?P<rev>[^/]+)", route_preupload),
    ({"POST"}, rf"/api{_REPO}/commit/(?P<rev>[^/]+)", route_commit),
    ({"POST"}, rf"{_GIT_REPO}\.git/info/lfs/objects/batch", route_lfs_batch),
    ({"PUT"}, r"/_lfs/(?P<ticket>[0-9a-f]+)", route_lfs_upload),
    ({"GET", "HEAD"}, rf"{_GIT_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", route_resolve),
]
ROUTES = [(methods, re.compile(pattern), route) for methods, pattern, route in ROUTES]


class HubRequestHandler(BaseHTTPRequestHandler):
    """Dispatches each request to a route; answers errors the way the Hub does."""

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_HEAD(self) -> None:
        self.dispatch("HEAD")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def log_message(self, format: str, *args) -> None:
        """Quiet: the test output stays readable."""

    def dispatch(self, method: str) -> None:
        body = self.read_body()
        url = urlsplit(self.path)
        state: HubState = self.server.state  # type: ignore[attr-defined]
        try:
            for methods, pattern, route in ROUTES:
                match = pattern.fullmatch(url.path)
                if match and method in methods:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    user = None if route is route_lfs_upload else self.user(state)
                    request = Request(method, args, parse_qs(url.query), body, user, self.endpoint())
                    with state.lock:
                        response = route(state, request)
                    break
            else:
                raise HubHTTPError(404, f"No route for {method} {url.path}")
        except HubHTTPError as error:
            headers = {**error.headers, "X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            response = Response(error.status, error.body, headers)
        self.answer(method, response)

    def user(self, state: HubState) -> str | None:
        authorization = self.headers.get("authorization", "")
        if not authorization.lower().startswith("bearer "):
            return None
        token = authorization[len("bearer ") :].strip()
        if token not in state.tokens:
            raise HubHTTPError(401, INVALID_TOKEN)
        return state.tokens[token]

    def endpoint(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, method: str, response: Response) -> None:
        payload = response.payload
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(content)),
            **response.headers,
        }
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(content)


class FakeHub:
    """A running stand-in Hub: ``endpoint``, ``state`` and helpers to make users."""

    def __init__(self, root: Path):
        self.state = HubState(root)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), HubRequestHandler)
        self.server.daemon_threads = True
        self.server.state = self.state  # type: ignore[attr-defined]
        host, port = self.server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def add_user(self, name: str) -> str:
        return self.state.add_user(name)

    def branch_head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        return self.state.repos[(repo_type, repo_id)].branches[branch]


def point_client_at(endpoint: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Points ``huggingface_hub`` (already imported, so its constants are set) at ``endpoint``."""
    from huggingface_hub import constants

    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A stand-in Hub on a free loopback port, with ``huggingface_hub`` pointed at it for the test."""
    with FakeHub(tmp_path / "hub-server") as hub:
        point_client_at(hub.endpoint, tmp_path / "hf-home", monkeypatch)
        yield hub


__all__ = ["FakeHub", "HubHTTPError", "HubState", "Repo", "fake_hub_fixture", "git_blob_sha1", "lfs_pointer"]
