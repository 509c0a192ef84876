"""Tests of the memory estimator: parameter arithmetic, shipped configs, parts, sizes, errors and the CLI.

Parameter counts are checked against models built from the same configs on the meta device (no memory),
trained-parameter counts against `trainer_ext.modeling.methods` on tiny models, and the 8-bit weight bytes
against the storage of a tiny model loaded by `trainer_ext.modeling.loading.load_model`. Measured peaks are
the
business of `benchmarks/memory.py` and `benchmarks/gpu_gptj.py`, not of these tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
)

from trainer_ext.cli.estimate import main as estimate_main
from trainer_ext.configs import CONFIGS_DIR
from trainer_ext.memory import (
    GB,
    GIB,
    SHIPPED_CONFIGS,
    EstimateError,
    MemoryEstimate,
    estimate_memory,
    format_size,
    load_model_config,
    parse_size,
)
from trainer_ext.memory.shapes import SUPPORTED_MODEL_TYPES, model_shape
from trainer_ext.modeling.methods import LoraSettings, apply_method, count_parameters

TINY_CONFIGS = {
    "gptj": GPTJConfig(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8),
    "gptj-tied": GPTJConfig(
        vocab_size=300, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, tie_word_embeddings=True
    ),
    "gpt2": GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4),
    "gpt2-inner": GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=3, n_head=4, n_inner=96),
    "gpt_neox": GPTNeoXConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96
    ),
    "gpt_neox-sequential": GPTNeoXConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        use_parallel_residual=False,
        tie_word_embeddings=True,
    ),
    "llama-gqa-tied": LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "llama-bias-head-dim": LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=32,
        attention_bias=True,
        mlp_bias=True,
    ),
    "opt": OPTConfig(vocab_size=300, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4),
    "opt-projected-untied": OPTConfig(
        vocab_size=300,
        hidden_size=64,
        word_embed_proj_dim=32,
        ffn_dim=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        tie_word_embeddings=False,
    ),
}
SHIPPED_NAMES = [names[0] for names in SHIPPED_CONFIGS.values()]
# The shared tokenizers sit beside the data directory (TRAINER_EXT_DATA_DIR, default ../shared/data).
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("TRAINER_EXT_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
GPTJ_TOKENIZER = DATA_DIR.parent / "tokenizers" / "gptj"


@pytest.fixture(scope="module")
def tiny_gptj_dir(tmp_path_factory) -> Path:
    """A saved tiny GPT-J (random weights, vocabulary of the GPT-J tokenizer) with its tokenizer files."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-gptj")
    torch.manual_seed(0)
    config = GPTJConfig(vocab_size=50400, n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(GPTJ_TOKENIZER)).save_pretrained(path)
    return path


def _meta_numel(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # a tied tensor once


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_parameter_count_matches_a_model_built_from_the_config(name):
    config = TINY_CONFIGS[name]
    assert model_shape(config).num_params == _meta_numel(config)


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_configs_count_the_parameters_of_the_real_model(name):
    config = load_model_config(name)
    assert model_shape(config).num_params == _meta_numel(config)


@pytest.mark.parametrize(
    ("name", "facts"),
    [
        ("gpt-j-6b", {"n_embd": 4096, "n_layer": 28, "n_head": 16, "rotary_dim": 64, "vocab_size": 50400}),
        (
            "rugpt3-large",
            {"model_type": "gpt2", "n_embd": 1536, "n_layer": 24, "n_head": 16, "vocab_size": 50257},
        ),
        (
            "smollm2-135m",
            {"hidden_size": 576, "num_hidden_layers": 30, "num_key_value_heads": 3, "vocab_size": 49152},
        ),
        ("llama-2-7b", {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32}),
        ("gpt-neox-20b", {"hidden_size": 6144, "num_hidden_layers": 44, "vocab_size": 50432}),
    ],
)
def test_shipped_configs_hold_the_published_shapes(name, facts):
    config = load_model_config(name)
    assert {key: getattr(config, key) for key in facts} == facts
    assert config.model_type in SUPPORTED_MODEL_TYPES


def test_every_shipped_file_has_a_name_and_a_model_type():
    from importlib import resources

    folder = resources.files("trainer_ext").joinpath("configs", "models")
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".json"))
    assert files == sorted(SHIPPED_CONFIGS)
    for filename in files:
        assert json.loads(folder.joinpath(filename).read_text())["model_type"] in SUPPORTED_MODEL_TYPES


@pytest.mark.parametrize(
    "name", ["gpt-j-6b", "GPT-J-6B", "EleutherAI/gpt-j-6B", "eleutherai/gpt-j-6b", " gpt-j-6b "]
)
def test_shipped_names_and_hub_ids_find_the_config(name):
    assert load_model_config(name).n_embd == 4096


def test_the_embedded_short_name_uses_its_shipped_config():
    assert load_model_config("smollm2-135m").hidden_size == 576


def test_local_config_file_and_directory(tmp_path):
    TINY_CONFIGS["gpt2"].save_pretrained(tmp_path)
    assert load_model_config(str(tmp_path)).n_embd == 64
    assert load_model_config(str(tmp_path / "config.json")).n_layer == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"model_type": "gpt2", "n_embd": 64,\n "n_layer": }', "line 2, column"),
        ('{"model_type": "bert"}', "model_type 'bert' is not supported"),
    ],
)
def test_bad_local_configs_say_what_and_where(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(EstimateError, match=message) as error:
        load_model_config(str(path))
    assert str(path) in str(error.value)


def test_directory_without_config_and_missing_path(tmp_path):
    with pytest.raises(EstimateError, match="has no config.json"):
        load_model_config(str(tmp_path))
    with pytest.raises(EstimateError, match="does not exist"):
        load_model_config(str(tmp_path / "missing" / "dir"))


def test_unknown_hub_id_offline_is_a_clear_error():
    with pytest.raises(EstimateError, match="Offline, pass a local config.json") as error:
        load_model_config("someone/not-a-shipped-model")
    assert "gpt-j-6b" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("11GB", 11 * 10**9),
        ("11GiB", 11 * 2**30),
        ("8000MB", 8 * 10**9),
        ("1.5 gb", 15 * 10**8),
        ("512mib", 512 * 2**20),
        ("2TB", 2 * 10**12),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["11", "eleven", "11XB", "-1GB", "0GB", "", "GB", "1e3GB"])
def test_bad_sizes_are_clear_errors(text):
    with pytest.raises(EstimateError, match="memory size"):
        parse_size(text)


def test_format_size_names_both_units():
    assert format_size(11 * GB) == "11.00 GB (10.24 GiB)"


def test_gptj_study_arithmetic():
    fp16 = estimate_memory("gpt-j-6b", quantization="none", method="none", dtype="float16")
    int8 = estimate_memory("gpt-j-6b", quantization="8bit", method="none", dtype="float16")
    assert 11.9 * GB < fp16.weights < 12.3 * GB  # "about 12 GB for the weights alone"
    assert 6.0 * GIB < int8.weights < 6.6 * GB  # "about 6 GB" (6.47 GB = 6.02 GiB: int8 blocks, fp16 rest)
    eleven_gb_card = parse_size("11GB")
    # A GPU without bf16 (GTX 1080 Ti / RTX 2080 Ti): fp16, upcast to fp32 for training
    # (trainer_ext.modeling.methods).
    study = dict(quantization="8bit", method="lora-all", seq_len=128, batch_size=2, optimizer="adamw_8bit")
    assert estimate_memory("gpt-j-6b", dtype="float16", gradient_checkpointing=True, **study).fits(
        eleven_gb_card
    )
    assert not estimate_memory("gpt-j-6b", dtype="float16", **study).fits(eleven_gb_card)
    assert not estimate_memory(
        "gpt-j-6b", quantization="none", method="full", dtype="float16", optimizer="adamw_8bit"
    ).fits(eleven_gb_card)


@pytest.mark.parametrize("arch", ["gptj", "gpt2", "gpt_neox-sequential", "llama-gqa-tied", "opt"])
@pytest.mark.parametrize("method", ["lora-all", "lora-attention", "norms", "full", "none"])
def test_trained_parameters_match_trainer_ext_methods(arch, method):
    model = AutoModelForCausalLM.from_config(TINY_CONFIGS[arch])
    estimate = estimate_memory(model.config, quantization="none", method=method, device="cpu")
    trainable, total = count_parameters(apply_method(model, LoraSettings(method=method, lora_r=4)))
    if method.startswith("lora"):
        estimate = estimate_memory(model.config, quantization="none", method=method, lora_r=4, device="cpu")
        total -= trainable  # the adapters are new parameters
    assert (estimate.trainable_params, estimate.num_params) == (trainable, total)


def _quantized_storage_bytes(model) -> int:
    """Bytes of a model's parameters plus the quantization statistics bitsandbytes keeps beside them."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    # PEFT's wrappers expose their base layer's weight too: walk each weight once.
    weights = {id(w): w for w in (getattr(module, "weight", None) for module in model.modules())}
    for weight in weights.values():
        state = getattr(weight, "quant_state", None)  # 4-bit: block scales, code books, nested scales
        stats = [getattr(weight, "SCB", None)]  # 8-bit: fp32 row scales
        if state is not None:
            stats += [state.absmax, state.code]
            stats += [state.state2.absmax, state.state2.code, state.offset] if state.nested else []
        for tensor in (t for t in stats if t is not None):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_weight_bytes_match_the_loaded_storage(tiny_gptj_dir, quantization):
    from trainer_ext.modeling.loading import load_model

    loaded = load_model(str(tiny_gptj_dir), quantization=quantization, method="lora-all", device="cpu")
    estimate = estimate_memory(str(tiny_gptj_dir), quantization=quantization, method="lora-all", device="cpu")
    assert _quantized_storage_bytes(loaded.model) == estimate.weights + estimate.adapters


def test_parts_follow_the_options():
    base = dict(config_or_name="smollm2-135m", seq_len=128, batch_size=2)
    by_quantization = [estimate_memory(quantization=q, **base).weights for q in ("4bit", "8bit", "none")]
    assert by_quantization == sorted(by_quantization) and len(set(by_quantization)) == 3
    full32 = estimate_memory(quantization="none", method="full", optimizer="adamw_torch", **base)
    full8 = estimate_memory(quantization="none", method="full", optimizer="adamw_8bit", **base)
    assert full32.optimizer_states == 2 * full32.gradients  # two fp32 moments per fp32 weight
    assert 3.5 < full32.optimizer_states / full8.optimizer_states < 4.0  # 8-bit moments + block scales
    assert estimate_memory(quantization="none", method="full", optimizer="sgd", **base).optimizer_states == 0
    plain, checkpointed = (estimate_memory(gradient_checkpointing=c, **base) for c in (False, True))
    assert checkpointed.activations < plain.activations
    doubled = estimate_memory(**{**base, "batch_size": 4})
    assert 1.9 < doubled.activations / plain.activations < 2.05
    frozen = estimate_memory(method="none", **base)
    assert frozen.adapters == frozen.gradients == frozen.optimizer_states == 0
    completion = estimate_memory(loss_tokens=4, **base)  # LabelTrainer: logits of the label tokens only
    assert completion.activations < plain.activations and completion.weights == plain.weights


def test_float16_upcasts_quantized_training_to_fp32():
    bf16 = estimate_memory("gpt-j-6b", dtype="bfloat16")
    fp16 = estimate_memory("gpt-j-6b", dtype="float16")
    assert fp16.weights > bf16.weights and fp16.activations > bf16.activations
    assert "upcast" in fp16.dtype and "upcast" not in bf16.dtype
    assert estimate_memory("gpt-j-6b", dtype="float16", kbit_upcast=False).total == bf16.total


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantization": "3bit"}, "quantization: unknown value '3bit'"),
        ({"method": "prefix"}, "method: unknown value"),
        ({"optimizer": "lion"}, "optimizer: unknown value"),
        ({"seq_len": 0}, "seq_len must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"method": "full"}, "method 'full' trains every weight"),
        ({"dtype": "int4"}, "dtype: unknown value"),
        ({"device": "tpu"}, "device: unknown value"),
        ({"loss_tokens": 0}, "loss_tokens must be a positive integer"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(EstimateError, match=message):
        estimate_memory("smollm2-135m", **options)


def test_unsupported_architecture_is_a_clear_error():
    with pytest.raises(EstimateError, match="model_type 'bert'"):
        estimate_memory({"model_type": "bert"})


def test_memory_estimate_total_fits_and_table():
    estimate = estimate_memory("gpt-j-6b", dtype="float16", gradient_checkpointing=True)
    assert estimate.total == sum(getattr(estimate, part) for part in MemoryEstimate.PARTS)
    assert estimate.fits(estimate.total + GIB) and not estimate.fits(estimate.total + GIB - 1)
    assert estimate.fits(estimate.total, reserve=0)
    table = estimate.format(parse_size("11GB"))
    for label in (
        "weights",
        "adapters",
        "optimizer states",
        "gradients",
        "activations",
        "total",
        "GB",
        "GiB",
    ):
        assert label in table
    assert "fits in 11.00 GB (10.24 GiB)" in table
    assert json.loads(json.dumps(estimate.to_dict()))["total"] == estimate.total


def test_cli_prints_the_parts_and_the_verdict(capsys):
    code = estimate_main(["--model_name_or_path", "gpt-j-6b", "--dtype", "float16", "--gpu_memory", "11GB"])
    out = capsys.readouterr().out
    assert code == 0
    assert "does NOT fit in 11.00 GB" in out and "activations" in out and "Assumed:" in out


def test_cli_json(capsys):
    code = estimate_main(
        [
            "--model_name_or_path",
            "smollm2-135m",
            "--method",
            "lora-attention",
            "--gpu_memory",
            "8GiB",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["fits"] is True and report["gpu_memory"] == 8 * GIB
    assert report["total"] == sum(report[part] for part in MemoryEstimate.PARTS)


def test_cli_gpu_picks_the_cards_dtype_and_lists_what_makes_it_fit(capsys):
    # The reference study's card has no bf16: the step runs in fp16 and does not fit as configured.
    assert estimate_main(["--model_name_or_path", "gpt-j-6b", "--gpu", "GTX 1080 Ti"]) == 0
    out = capsys.readouterr().out
    fp16 = estimate_memory("gpt-j-6b", dtype="float16")
    checkpointed = estimate_memory("gpt-j-6b", dtype="float16", gradient_checkpointing=True)
    assert "float16" in out and "does NOT fit in 11.81 GB (11.00 GiB)" in out
    assert f"{fp16.total / GB:.3f}" in out
    assert f"gradient_checkpointing: true (about a third slower): {format_size(checkpointed.total)}" in out
    assert "NVIDIA GeForce GTX 1080 Ti (no bf16: fp16)" in out
    # A bf16 card of the same memory class computes in bf16.
    assert estimate_main(["--model_name_or_path", "gpt-j-6b", "--gpu", "rtx-4090", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        report["dtype"] == "bfloat16"
        and report["fits"] is True
        and report["gpu"] == "NVIDIA GeForce RTX 4090"
    )


def test_cli_reads_a_recipe(capsys):
    recipe = CONFIGS_DIR / "recipes" / "gptj6b_8bit_lora_all.yaml"
    assert estimate_main(["--config", str(recipe), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The recipe: GPT-J-6B, 8-bit, lora-all rank 2, batch 4, max_length 256.
    assert (report["lora_r"], report["batch_size"], report["seq_len"]) == (2, 4, 256)
    assert report["model"] == "EleutherAI/gpt-j-6B" and report["quantization"] == "8bit"
    assert estimate_main(["--config", str(recipe), "--lora_r", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lora_r"] == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model_name_or_path", "gpt-j-6b", "--gpu_memory", "11"], "memory size '11' not understood"),
        (["--model_name_or_path", "someone/unknown"], "cannot get the config of 'someone/unknown'"),
        (["--model_name_or_path", "gpt-j-6b", "--method", "full"], "method 'full' trains every weight"),
        (
            ["--model_name_or_path", "gpt-j-6b", "--quantization", "2bit"],
            "quantization: unknown value '2bit'",
        ),
        (["--model_name_or_path", "gpt-j-6b", "--gpu", "my laptop"], "GPU 'my laptop' is not in the table"),
        (["--lora_r", "2"], "Give --model_name_or_path"),
        (["--config", "missing.yaml"], "Recipe file 'missing.yaml' does not exist"),
    ],
)
def test_cli_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    code = estimate_main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("trainer-ext estimate: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_mistyped_shipped_name_is_answered_at_once(monkeypatch):
    """A name close to a shipped one is a typo: the answer names the shipped model without asking the Hub."""

    asked = []

    def hub(name, *args, **kwargs):
        asked.append(name)
        raise OSError("offline")

    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", hub)
    with pytest.raises(EstimateError, match="'gpt-j-6' is not a shipped model; did you mean 'gpt-j-6b'"):
        load_model_config("gpt-j-6")
    with pytest.raises(EstimateError, match="did you mean 'smollm2-135m'"):
        load_model_config("smolm2-135m")
    assert asked == []
    # Another model's Hub id that merely looks alike is asked for, not corrected.
    with pytest.raises(EstimateError, match="cannot get the config of 'gpt2-large' from the Hub"):
        load_model_config("gpt2-large")
    assert asked == ["gpt2-large"]
