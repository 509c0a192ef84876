"""load_model / load_tokenizer: tiny models for the options and errors, the embedded SmolLM2 for real."""

from __future__ import annotations

import json
import socket
import warnings

import pytest
import torch
from conftest import TOKENIZERS_DIR, NetworkAccessError
from transformers import HfArgumentParser

from trainer_ext.modeling import loading
from trainer_ext.modeling.loading import (
    CPU_8BIT_DTYPE,
    LoadedModel,
    ModelLoadError,
    load_model,
    load_tokenizer,
    resolve_dtype,
)
from trainer_ext.modeling.methods import LoraSettings, count_parameters
from trainer_ext.modeling.settings import ModelSettings

# --- dtype and settings ---


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
    ],
)
def test_explicit_dtypes(name, expected):
    assert resolve_dtype(name, "8bit", "cpu") is expected
    assert resolve_dtype(expected) is expected


@pytest.mark.parametrize(
    ("native_bf16", "bf16_is_slow"),
    [(True, False), (False, False), (False, True)],
    ids=["native", "avx512", "avx2"],
)
def test_auto_dtype_on_cpu(monkeypatch, native_bf16, bf16_is_slow):
    monkeypatch.setattr(loading, "cpu_supports_bf16", lambda: native_bf16)
    monkeypatch.setattr(loading, "cpu_bf16_is_slow", lambda: bf16_is_slow)
    fast = torch.bfloat16 if native_bf16 else torch.float32
    assert resolve_dtype("auto", "none", "cpu", "lora-all") is fast
    assert resolve_dtype("auto", "4bit", "cpu", "lora-attention") is fast
    # 8-bit computes in bf16 for its memory unless bf16 matmuls are slow here (no AVX-512)
    expected_8bit = torch.float32 if bf16_is_slow else getattr(torch, CPU_8BIT_DTYPE)
    assert resolve_dtype("auto", "8bit", "cpu", "lora-all") is expected_8bit
    # trained base weights keep fp32 master copies
    assert resolve_dtype("auto", "none", "cpu", "full") is torch.float32
    assert resolve_dtype("auto", "none", "cpu", "norms") is torch.float32


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_on_cuda(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_dtype("auto", "8bit", "cuda", "lora-all") is expected
    assert resolve_dtype("auto", "none", "cuda:0", "none") is expected


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="dtype: unknown value 'half-ish'"):
        resolve_dtype("half-ish")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantization": "3bit"}, "quantization"),
        ({"dtype": "int4"}, "dtype"),
        ({"model_name_or_path": " "}, "model"),
    ],
)
def test_model_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=f"ModelSettings.{message}"):
        ModelSettings(**kwargs)


def test_settings_parse_from_the_command_line():
    parser = HfArgumentParser((ModelSettings, LoraSettings))
    model, lora = parser.parse_args_into_dataclasses(
        [
            "--quantization",
            "4bit",
            "--method",
            "norms",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--lora_r",
            "4",
        ]
    )
    assert (model.model_name_or_path, model.quantization, model.trust_remote_code) == (
        "smollm2-135m",
        "4bit",
        False,
    )
    assert (lora.method, lora.lora_r, lora.lora_target_modules) == ("norms", 4, ["q_proj", "v_proj"])
    assert "LoRA rank" in parser.format_help()


# --- tokenizer ---


def test_tokenizer_without_pad_gets_eos_on_the_right():
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / "gpt2"))
    assert raw.pad_token is None
    tokenizer = load_tokenizer(str(TOKENIZERS_DIR / "gpt2"))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.padding_side == "right"
    batch = tokenizer(["a", "a longer text"], padding=True)
    assert batch["attention_mask"][0][-1] == 0, "padding goes on the right"


def test_smollm2_tokenizer_keeps_its_own_pad(smollm2_tokenizer):
    assert smollm2_tokenizer.pad_token == "<|im_end|>"
    assert smollm2_tokenizer.padding_side == "right"


# --- tiny models ---


@pytest.mark.parametrize("arch", ["gptj", "gpt2", "gpt_neox", "llama"])
def test_load_tiny_model_unquantized(tiny_model_dir, arch):
    path = str(tiny_model_dir(arch))
    loaded = load_model(
        path, quantization="none", method="lora-attention", lora=LoraSettings(lora_r=2), device="cpu"
    )
    assert isinstance(loaded, LoadedModel)
    assert (loaded.quantization, loaded.method, loaded.device) == ("none", "lora-attention", "cpu")
    assert (loaded.trainable_params, loaded.total_params) == count_parameters(loaded.model)
    assert 0 < loaded.trainable_params < loaded.total_params
    assert loaded.model.peft_config["default"].base_model_name_or_path == path
    assert loaded.tokenizer.pad_token_id == loaded.model.config.pad_token_id
    assert {p.dtype for p in loaded.model.parameters() if not p.requires_grad} == {loaded.dtype}


def test_method_argument_overrides_the_settings(tiny_model_dir):
    loaded = load_model(
        str(tiny_model_dir("llama")), quantization="none", method="norms", lora=LoraSettings()
    )
    assert loaded.method == "norms"
    assert loaded.dtype is torch.float32
    assert all(p.ndim == 1 for p in loaded.model.parameters() if p.requires_grad)


def test_8bit_on_cpu_replaces_linear_layers(tiny_model_dir):
    from bitsandbytes.nn import Linear8bitLt

    loaded = load_model(str(tiny_model_dir("llama")), quantization="8bit", method="lora-all", device="cpu")
    layer = loaded.model.get_base_model().model.layers[0]
    linears = [layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj]
    assert all(isinstance(module.base_layer, Linear8bitLt) for module in linears)
    assert all(module.base_layer.weight.dtype == torch.int8 for module in linears)
    input_ids = torch.randint(0, 1000, (2, 6))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        loaded.model(input_ids=input_ids, labels=input_ids).loss.backward()
    assert all(p.grad is not None for p in loaded.model.parameters() if p.requires_grad)


def test_4bit_on_cpu_uses_nf4(tiny_model_dir):
    from bitsandbytes.nn import Linear4bit

    loaded = load_model(
        str(tiny_model_dir("llama")), quantization="4bit", method="lora-attention", device="cpu"
    )
    q_proj = loaded.model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, Linear4bit)
    assert q_proj.base_layer.weight.quant_type == "nf4"
    assert loaded.total_params == count_parameters(loaded.model)[1]


# --- errors ---


def test_unknown_model_name(tmp_path):
    with pytest.raises(ModelLoadError, match=r"'no-such-model-here'.*smollm2-135m"):
        load_model("no-such-model-here", quantization="none")


@pytest.mark.parametrize("bad", ["not a repo id!", "./missing/dir"])
def test_names_that_cannot_be_models(bad):
    with pytest.raises(ModelLoadError, match="does not exist|not a valid Hub id"):
        load_model(bad)


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"no config\.json.*LoRA adapter"):
        load_model(str(tmp_path))


def test_file_instead_of_a_directory(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file, not a directory"):
        load_tokenizer(str(weights))


def test_full_with_quantization_is_refused(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="quantization 'none' with 'full'"):
        load_model(str(tiny_model_dir("gpt2")), quantization="8bit", method="full")


def test_quantization_on_a_device_bitsandbytes_cannot_use(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="not available on device 'mps'"):
        load_model(str(tiny_model_dir("gpt2")), quantization="4bit", device="mps")


def test_quantization_without_bitsandbytes(monkeypatch, tiny_model_dir):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelLoadError, match="needs bitsandbytes"):
        load_model(str(tiny_model_dir("gpt2")), quantization="8bit", device="cpu")


def test_remote_code_is_refused_unless_asked(tmp_path):
    marker = tmp_path / "code_ran"
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "custom-remote",
                "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
            }
        )
    )
    (tmp_path / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        load_model(str(tmp_path), quantization="none")
    assert not marker.exists(), "the repository's code must not run without trust_remote_code"


def test_tests_run_offline():
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(NetworkAccessError):
        socket.create_connection(("93.184.215.14", 443), timeout=1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with server, socket.create_connection(server.getsockname(), timeout=1):
        pass


# --- the embedded SmolLM2, for real ---


@pytest.fixture(scope="module")
def smollm2_8bit(smollm2_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        return load_model("smollm2-135m", quantization="8bit", method="none", device="cpu")


def test_smollm2_8bit_has_int8_linear_layers(smollm2_8bit):
    from bitsandbytes.nn import Linear8bitLt

    model = smollm2_8bit.model
    linear_names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    int8 = [name for name, m in model.named_modules() if isinstance(m, Linear8bitLt)]
    assert len(int8) == 7 * model.config.num_hidden_layers
    assert set(linear_names) - set(int8) == {"lm_head"}, "only the (tied) output layer stays unquantized"
    assert smollm2_8bit.trainable_params == 0


def test_smollm2_8bit_knows_the_capital_of_france(smollm2_8bit):
    tokenizer, model = smollm2_8bit.tokenizer, smollm2_8bit.model
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in completion


@pytest.fixture(scope="module")
def smollm2_fp32(smollm2_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)


def _smollm2_expected(model, method: str, rank: int) -> int:
    config = model.config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    attention = rank * ((hidden + hidden) * 2 + (hidden + kv) * 2)
    mlp = rank * (hidden + inner) * 3
    if method == "lora-attention":
        return layers * attention
    if method == "lora-all":
        return layers * (attention + mlp) + rank * (config.vocab_size + hidden)
    if method == "norms":
        return (2 * layers + 1) * hidden
    return {"full": sum(p.numel() for p in model.parameters()), "none": 0}[method]


@pytest.mark.parametrize("method", ["lora-all", "lora-attention", "norms", "full", "none"])
def test_smollm2_methods_train_what_they_say(smollm2_fp32, method):
    import copy

    from trainer_ext.modeling.methods import apply_method

    model = copy.deepcopy(smollm2_fp32)
    expected = _smollm2_expected(model, method, rank=8)
    model = apply_method(model, LoraSettings(method=method, lora_r=8))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert count_parameters(model)[0] == expected
    if method.startswith("lora"):
        assert all("lora_" in name for name in trainable)
    if method == "norms":
        assert all(p.ndim == 1 and "norm" in name for name, p in trainable.items())
    input_ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 2]])
    loss = model(input_ids=input_ids, labels=input_ids).loss
    if method == "none":
        assert not loss.requires_grad
        return
    loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


# --- CUDA ---


@pytest.mark.gpu
@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_lora_trains_on_cuda(tiny_model_dir, quantization):
    from bitsandbytes.nn import Linear4bit, Linear8bitLt

    path = str(tiny_model_dir("llama"))
    loaded = load_model(path, quantization=quantization, method="lora-all", device="cuda")
    assert loaded.device == "cuda"
    assert loaded.dtype is (
        torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    )
    layer = loaded.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, Linear8bitLt if quantization == "8bit" else Linear4bit)
    assert layer.weight.device.type == "cuda"
    input_ids = torch.randint(0, 1000, (2, 6), device="cuda")
    loaded.model(input_ids=input_ids, labels=input_ids).loss.backward()
    for name, param in loaded.model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
