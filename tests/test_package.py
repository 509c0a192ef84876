"""The package surface: cheap import with lazy re-exports, the `trainer-ext` dispatcher, shipped configs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import trainer_ext
from trainer_ext.cli import COMMANDS, main
from trainer_ext.configs import available_configs, config_path


def test_import_does_not_load_torch():
    code = "import sys, trainer_ext; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_lazy_exports_resolve_to_their_modules():
    from trainer_ext.modeling.loading import load_model, load_tokenizer

    assert trainer_ext.load_model is load_model
    assert trainer_ext.load_tokenizer is load_tokenizer
    assert {"load_model", "LabelTrainer", "Classifier", "estimate_memory"} <= set(trainer_ext.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        trainer_ext.nothing_here  # noqa: B018


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "predict", "compare", "estimate", "push"):
        assert command in COMMANDS
        assert f"  {command}" in out


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "usage: trainer-ext <command>" in capsys.readouterr().out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "train" in err


def test_dispatch_passes_the_remaining_arguments(monkeypatch):
    import types

    seen = {}
    module = types.ModuleType("trainer_ext.cli.estimate")
    module.main = lambda argv: seen.setdefault("argv", argv) and 7
    monkeypatch.setitem(sys.modules, "trainer_ext.cli.estimate", module)
    assert main(["estimate", "smollm2-135m", "--batch-size", "4"]) == 7
    assert seen["argv"] == ["smollm2-135m", "--batch-size", "4"]


def test_config_path_finds_shipped_recipes():
    path = config_path("recipes/moderation_lora_all.yaml")
    assert path.is_file() and path.name == "moderation_lora_all.yaml"
    assert "recipes/moderation_lora_all.yaml" in available_configs()


@pytest.mark.parametrize("name", ["recipes/missing.yaml", "../__init__.py", "__init__.py"])
def test_config_path_rejects_what_is_not_a_shipped_config(name):
    with pytest.raises(FileNotFoundError, match="available: .*moderation_lora_all.yaml"):
        config_path(name)
