"""The package as a user installs it: a wheel, in a fresh environment, used from outside the checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE", "trainer_ext")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the package sources (the checkout is left untouched)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_FILES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
    )
    (built,) = out.glob("trainer_ext-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel, re-using this environment's dependencies (not the
    project)."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies come from this environment's site-packages, added as a plain path: its .pth files
    # (among them the editable install of the checkout) are not processed, so trainer_ext is the wheel's.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
    )
    for script in (
        "trainer-ext",
    ):  # pip --target writes no console scripts; write the one the wheel declares
        (env / "bin" / script).write_text(
            f"#!{python}\nimport sys\nfrom trainer_ext.cli import main\nsys.exit(main())\n", encoding="utf-8"
        )
        (env / "bin" / script).chmod(0o755)
    return env


def _tiny_run(path: Path) -> Path:
    """A run directory as training writes it, without a model: record, task, metrics, adapter files."""
    import torch
    from safetensors.torch import save_file

    from trainer_ext.runs.info import DataSource, RunInfo
    from trainer_ext.tasks import LabelTask

    path.mkdir()
    LabelTask(["negative", "positive"]).save(path)
    RunInfo(
        base_model="smollm2-135m",
        base_model_hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="8bit",
        method="lora-all",
        dtype="bfloat16",
        optimizer="adamw_bnb_8bit",
        sources=[
            DataSource("train", 20, path="/data/reviews.csv"),
            DataSource("eval", 4, path="/data/reviews.csv", held_out=True),
        ],
    ).save(path)
    (path / "metrics.json").write_text(json.dumps({"eval_accuracy": 0.75, "eval_macro_f1": 0.7}))
    (path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    )
    save_file({"lora_A": torch.zeros(2, 2)}, str(path / "adapter_model.safetensors"))
    return path


def test_the_wheel_carries_the_card_templates_and_no_study_or_benchmark_code(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "trainer_ext/hub/templates/model_card.md" in names
    assert "trainer_ext/hub/templates/space_card.md" in names
    assert "trainer_ext/configs/recipes/moderation_lora_all.yaml" in names
    assert not any(name.startswith(("benchmarks/", "space/", "tests/")) for name in names)
    for name in names:
        if name.endswith(".py"):
            text = zipfile.ZipFile(wheel).read(name).decode()
            assert "import trl" not in text and "from trl" not in text, name
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "trainer-ext = trainer_ext.cli:main" in scripts and "bench" not in scripts


def test_push_dry_run_and_train_help_from_an_installed_wheel(venv, tmp_path):
    run = _tiny_run(tmp_path / "run")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import trainer_ext; print(trainer_ext.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where and str(REPO_ROOT) not in where  # the wheel, not the checkout
    push = subprocess.run(
        ["trainer-ext", "push", str(run), "--repo_id", "alice/reviews", "--dry_run"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert push.returncode == 0, push.stderr
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in push.stdout
    assert "local file `reviews.csv`, 20 examples" in push.stdout
    assert "adapter_model.safetensors" in push.stdout
    train_help = subprocess.run(
        ["trainer-ext", "train", "--help"], cwd=outside, env=env, capture_output=True, text=True, timeout=300
    )
    assert train_help.returncode == 0, train_help.stderr
    assert "--config" in train_help.stdout and "--model_name_or_path" in train_help.stdout
