"""`trainer-ext push` / `scripts/push_to_hub.py`: the command line over trainer_ext.hub."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import fake_hub_fixture  # noqa: F401  (provides the `fake_hub` fixture)
from huggingface_hub import HfApi, ModelCard, constants
from test_hub import run_dir_fixture, run_template_fixture, tiny_base_fixture  # noqa: F401  (fixtures)

from trainer_ext.cli.push import main

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_prints_the_card_and_the_files_without_network(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert main([str(run_dir), "--repo_id", "alice/tiny", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---\n") and "model-index:" in out and "library_name: peft" in out
    assert (
        "Dry run: nothing sent. Files that would be uploaded to model repo alice/tiny (branch main):" in out
    )
    listed = [line.split()[0] for line in out.split("Dry run: nothing sent.")[1].splitlines()[1:]]
    assert "adapter_model.safetensors" in listed and "README.md" in listed
    assert "predictions.csv" not in listed and "training_args.bin" not in listed


def test_push_to_a_new_private_branch_from_the_environment_token(fake_hub, run_dir, monkeypatch, capsys):
    token = fake_hub.add_user("alice")
    monkeypatch.setenv("HF_TOKEN", token)
    argv = [str(run_dir), "--repo_id", "alice/tiny", "--private", "--revision", "exp"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    commit_url = f"{fake_hub.endpoint}/alice/tiny/commit/{fake_hub.branch_head('alice/tiny', 'exp')}"
    assert re.fullmatch(rf"Pushed \d+ files to model repo alice/tiny \(branch exp\): {commit_url}\n", out)
    assert token not in out + err
    api = HfApi()
    assert api.model_info("alice/tiny").private is True
    assert api.list_repo_files("alice/tiny") == [".gitattributes"]  # main is untouched
    card = ModelCard.load(api.hf_hub_download("alice/tiny", "README.md", revision="exp"))
    assert card.data.eval_results[0].metric_value == 0.615


def test_wrong_token_fails_with_one_clear_line(fake_hub, run_dir, monkeypatch, capsys):
    wrong = "hf_" + "w" * 32
    monkeypatch.setenv("HF_TOKEN", wrong)
    assert main([str(run_dir), "--repo_id", "alice/tiny"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(
        "trainer-ext push: error: Cannot push to alice/tiny: the token in HF_TOKEN was rejected (401"
    )
    assert wrong not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing-dir", "--repo_id", "alice/tiny"], "missing-dir is not a directory"),
        (["space", "--repo_id", "alice/x", "--space", "--revision", "b"], "--revision, --allow_pickle"),
        (["RUN", "--repo_id", "just-a-name", "--dry_run"], "must be NAMESPACE/NAME"),
        (["RUN", "--repo_id", "alice/tiny", "--model_repo_id", "alice/m"], "only apply with --space"),
    ],
)
def test_user_errors_return_2_with_a_message(run_dir, capsys, argv, message):
    argv = [str(run_dir) if arg == "RUN" else arg for arg in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_script_wrapper_runs_the_same_command(run_dir):
    script = REPO_ROOT / "scripts" / "push_to_hub.py"
    command = [sys.executable, str(script), str(run_dir), "--repo_id", "alice/tiny", "--dry_run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "model-index:" in done.stdout and "adapter_model.safetensors" in done.stdout
