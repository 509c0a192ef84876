"""Shared test fixtures: tiny models built from configs, tokenizers, the embedded model, the data, no network.

Every test session runs offline: ``HF_HUB_OFFLINE=1`` is set before any Hugging Face library is imported,
and a socket guard refuses any connection (and any name lookup) that does not stay on this machine, so a
test that would download something fails at once with `NetworkAccessError` instead of hanging.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

# Set before transformers / huggingface_hub / datasets are imported by any test module: they read these once.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shared data and tokenizers sit beside the repository; TRAINER_EXT_DATA_DIR moves both (tokenizers/ is
# a sibling of the data directory).
DATA_DIR = Path(os.environ.get("TRAINER_EXT_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
TOKENIZERS_DIR = DATA_DIR.parent / "tokenizers"
ARCHITECTURES = ("gptj", "gpt2", "gpt_neox", "llama")


class NetworkAccessError(RuntimeError):
    """Raised by the socket guard when a test tries to reach another machine."""


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).strip("[]").split("%")[0].lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _install_socket_guard() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            raise NetworkAccessError(
                f"tests run offline: connection to {address!r} refused by tests/conftest.py"
            )

    def connect(self, address):
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise NetworkAccessError(
                f"tests run offline: name lookup of {host!r} refused by tests/conftest.py"
            )
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo


_install_socket_guard()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _tiny_config(arch: str, vocab_size: int):
    """A 2-layer, 64-wide config of the given architecture (a few million parameters, mostly embeddings)."""
    from transformers import GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig

    if arch == "gptj":
        return GPTJConfig(
            vocab_size=vocab_size, n_positions=512, n_embd=64, n_layer=2, n_head=4, rotary_dim=8
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=512, n_embd=64, n_layer=2, n_head=4)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size,
            max_position_embeddings=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            rotary_pct=0.25,
        )
    if arch == "llama":
        # Tied embeddings and grouped-query attention, like SmolLM2.
        return LlamaConfig(
            vocab_size=vocab_size,
            max_position_embeddings=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")


def _tokenizer_dir(arch: str) -> Path:
    return TOKENIZERS_DIR / ("gptj" if arch == "gptj" else "gpt2")


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The GPT-2 tokenizer from ``../shared/tokenizers/gpt2``, as `load_tokenizer` returns it (pad = EOS)."""
    from trainer_ext.modeling.loading import load_tokenizer

    return load_tokenizer(str(TOKENIZERS_DIR / "gpt2"))


@pytest.fixture(scope="session")
def gptj_tokenizer():
    """The GPT-J tokenizer from ``../shared/tokenizers/gptj``, as `load_tokenizer` returns it (pad = EOS)."""
    from trainer_ext.modeling.loading import load_tokenizer

    return load_tokenizer(str(TOKENIZERS_DIR / "gptj"))


@pytest.fixture(scope="session")
def tiny_model(gpt2_tokenizer, gptj_tokenizer):
    """Factory: ``tiny_model(arch) -> (model, tokenizer)``, a fresh randomly initialised tiny causal LM.

    `arch` is one of ``"gptj"``, ``"gpt2"``, ``"gpt_neox"``, ``"llama"``. The model has 2 layers of width 64,
    fp32, on the CPU, in eval mode; GPT-J uses the GPT-J tokenizer, the others GPT-2's.
    The tokenizer is shared by the session: do not modify it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    def build(arch: str):
        tokenizer = gptj_tokenizer if arch == "gptj" else gpt2_tokenizer
        config = _tiny_config(arch, vocab_size=len(tokenizer))
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        return model.eval(), tokenizer

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory):
    """Factory: ``tiny_model_dir(arch) -> Path``, a saved tiny model (config, safetensors, tokenizer files).

    The tokenizer files are the raw ones from ``../shared/tokenizers`` (no pad token), so loading code sees
    what it would see for a real GPT-2 / GPT-J checkpoint. Saved once per architecture and session.
    """
    from transformers import AutoTokenizer

    saved: dict[str, Path] = {}

    def build(arch: str) -> Path:
        if arch not in saved:
            model, _ = tiny_model(arch)
            path = tmp_path_factory.mktemp(f"tiny-{arch}")
            model.save_pretrained(path)
            AutoTokenizer.from_pretrained(str(_tokenizer_dir(arch))).save_pretrained(path)
            saved[arch] = path
        return saved[arch]

    return build


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """Path of the converted embedded checkpoint (``smollm2-135m``); converts it on first use (~20 s)."""
    from trainer_ext.modeling.embedded import resolve_model_path

    return resolve_model_path("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    """The SmolLM2 tokenizer, as `load_tokenizer` returns it."""
    from trainer_ext.modeling.loading import load_tokenizer

    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data directory: ``$TRAINER_EXT_DATA_DIR``, else ``../shared/data`` beside the repository."""
    path = DATA_DIR
    if not (path / "seed_split" / "train.csv").is_file():
        pytest.fail(
            f"data directory {path} has no seed_split/train.csv: set TRAINER_EXT_DATA_DIR to the shared data",
            pytrace=False,
        )
    return path
