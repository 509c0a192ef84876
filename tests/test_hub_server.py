"""The stand-in Hub speaks the protocol that the real `huggingface_hub` client uses, unmodified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hub_server import fake_hub_fixture  # noqa: F401  (provides the `fake_hub` fixture)
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


@pytest.fixture
def alice(fake_hub):
    """A user of the stand-in Hub and a client logged in as that user."""
    token = fake_hub.add_user("alice")
    return HfApi(token=token), token


def _folder(tmp_path: Path, weights: bytes = b"\x00\x01" * 600) -> Path:
    folder = tmp_path / "upload"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"labels": ["a", "b"]}')
    (folder / "weights.safetensors").write_bytes(weights)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "notes.txt").write_text("nested file")
    return folder


def test_whoami_knows_the_token_and_rejects_an_unknown_one(fake_hub, alice):
    api, _ = alice
    assert api.whoami()["name"] == "alice"
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(token="hf_not_a_token").whoami()
    assert error.value.response.status_code == 401


def test_upload_and_download_round_trip_regular_and_lfs_files(fake_hub, alice, tmp_path):
    api, token = alice
    api.create_repo("alice/model")
    weights = bytes(range(256)) * 10
    commit = api.upload_folder(
        repo_id="alice/model", folder_path=_folder(tmp_path, weights), commit_message="add"
    )
    assert commit.oid == fake_hub.branch_head("alice/model")

    files = {entry.path: entry for entry in api.list_repo_tree("alice/model", recursive=True)}
    assert files["weights.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert files["config.json"].lfs is None and "sub" in files

    local = Path(snapshot_download("alice/model", cache_dir=tmp_path / "cache"))
    assert (local / "weights.safetensors").read_bytes() == weights
    assert (local / "sub" / "notes.txt").read_text() == "nested file"
    assert local.name == commit.oid


def test_each_commit_is_a_new_sha_and_unchanged_files_are_not_recommitted(fake_hub, alice, tmp_path):
    api, _ = alice
    api.create_repo("alice/model")
    first = api.upload_folder(repo_id="alice/model", folder_path=_folder(tmp_path), commit_message="one").oid
    again = api.upload_folder(repo_id="alice/model", folder_path=_folder(tmp_path), commit_message="same").oid
    assert again == first  # the client saw (through preupload) that nothing changed
    (tmp_path / "upload" / "config.json").write_text('{"labels": ["a", "b", "c"]}')
    second = api.upload_folder(
        repo_id="alice/model", folder_path=tmp_path / "upload", commit_message="two"
    ).oid
    assert second != first
    assert fake_hub.state.repos[("model", "alice/model")].commits[second].parent == first


def test_private_repo_is_invisible_to_anonymous_and_other_users(fake_hub, alice):
    api, _ = alice
    api.create_repo("alice/secret", private=True)
    assert api.model_info("alice/secret").private is True
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        HfApi(token=False).model_info("alice/secret")
    assert anonymous.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as other:
        HfApi(token=fake_hub.add_user("bob")).model_info("alice/secret")
    assert other.value.response.status_code == 404


def test_branch_commit_leaves_main_unchanged(fake_hub, alice, tmp_path):
    api, _ = alice
    api.create_repo("alice/model")
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="value.txt", repo_id="alice/model")
    main_head = fake_hub.branch_head("alice/model")
    api.create_branch("alice/model", branch="exp/1")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="value.txt", repo_id="alice/model", revision="exp/1")

    assert fake_hub.branch_head("alice/model") == main_head
    assert {ref.name for ref in api.list_repo_refs("alice/model").branches} == {"main", "exp/1"}
    revisions = ["main", "exp/1", main_head]
    values = [
        Path(hf_hub_download("alice/model", "value.txt", revision=rev)).read_bytes() for rev in revisions
    ]
    assert values == [b"v1", b"v2", b"v1"]


def test_errors_follow_the_hub_conventions(fake_hub, alice):
    api, _ = alice
    api.create_repo("alice/model")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/model", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/model", "missing.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/nothing-here")
    with pytest.raises(HfHubHTTPError) as forbidden:
        HfApi(token=fake_hub.add_user("bob")).upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/model"
        )
    assert forbidden.value.response.status_code == 403
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(
            path_or_fileobj=b"---\nmodel-index: 3\n---\n", path_in_repo="README.md", repo_id="alice/model"
        )


def test_space_repos_have_their_sdk_and_url_prefix(fake_hub, alice):
    api, _ = alice
    url = api.create_repo("alice/demo", repo_type="space", space_sdk="gradio")
    assert url.repo_type == "space" and url.repo_id == "alice/demo"
    api.upload_file(
        path_or_fileobj=b"print(1)", path_in_repo="app.py", repo_id="alice/demo", repo_type="space"
    )
    assert api.space_info("alice/demo").sdk == "gradio"
    assert Path(hf_hub_download("alice/demo", "app.py", repo_type="space")).read_bytes() == b"print(1)"
