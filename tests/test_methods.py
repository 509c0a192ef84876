"""Training methods on tiny models of every supported architecture: targets, trainable sets, gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from trainer_ext.modeling.methods import LoraSettings, apply_method, count_parameters, lora_targets
from trainer_ext.vocabulary import METHODS

ARCHS = ("gptj", "gpt2", "gpt_neox", "llama")

# The attention projections each architecture names (relative to a decoder block).
ATTENTION_TARGETS = {
    "gptj": {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"},
    "gpt2": {"attn.c_attn", "attn.c_proj"},
    "gpt_neox": {"attention.query_key_value", "attention.dense"},
    "llama": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
    "opt": {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"},
}
MLP_TARGETS = {
    "gptj": {"mlp.fc_in", "mlp.fc_out"},
    "gpt2": {"mlp.c_fc", "mlp.c_proj"},
    "gpt_neox": {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
    "llama": {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    "opt": {"fc1", "fc2"},
}
# The input embedding, and the output layer where it is not tied to it.
OUTER_TARGETS = {
    "gptj": {"transformer.wte", "lm_head"},
    "gpt2": {"transformer.wte"},
    "gpt_neox": {"gpt_neox.embed_in", "lm_head"},
    "llama": {"model.embed_tokens"},
    "opt": {"model.decoder.embed_tokens"},
}


@pytest.fixture
def build(tiny_model):
    """Factory: a fresh tiny model of an architecture (OPT built here: no shared tokenizer needed)."""

    def make(arch: str):
        if arch == "opt":
            torch.manual_seed(0)
            config = OPTConfig(
                vocab_size=300,
                hidden_size=32,
                num_hidden_layers=2,
                ffn_dim=64,
                num_attention_heads=4,
                word_embed_proj_dim=32,
                max_position_embeddings=64,
            )
            return AutoModelForCausalLM.from_config(config)
        return tiny_model(arch)[0]

    return make


def _lora_shape_count(model, names: set[str], rank: int) -> int:
    """Expected LoRA parameters: r * (in + out) for every module matched by the target names."""
    total = 0
    for name, module in model.named_modules():
        if not any(name == target or name.endswith("." + target) for target in names):
            continue
        if isinstance(module, torch.nn.Embedding):
            total += rank * (module.num_embeddings + module.embedding_dim)
        elif isinstance(module, torch.nn.Linear):
            total += rank * (module.in_features + module.out_features)
        else:  # transformers' Conv1D stores its weight as (in, out)
            total += rank * sum(module.weight.shape)
    return total


def _backward(model) -> None:
    input_ids = torch.randint(0, model.config.vocab_size, (2, 7))
    model(input_ids=input_ids, labels=input_ids).loss.backward()


@pytest.mark.parametrize("arch", [*ARCHS, "opt"])
def test_lora_targets_are_found_per_architecture(build, arch):
    model = build(arch)
    assert set(lora_targets(model, "attention")) == ATTENTION_TARGETS[arch]
    expected_all = ATTENTION_TARGETS[arch] | MLP_TARGETS[arch] | OUTER_TARGETS[arch]
    assert set(lora_targets(model, "all")) == expected_all


def test_lora_targets_rejects_an_unknown_scope(build):
    with pytest.raises(ValueError, match="scope"):
        lora_targets(build("llama"), "mlp")


@pytest.mark.parametrize("arch", [*ARCHS, "opt"])
@pytest.mark.parametrize("method", ["lora-all", "lora-attention"])
def test_lora_methods_train_exactly_the_adapters(build, arch, method):
    model = build(arch)
    targets = set(lora_targets(model, "all" if method == "lora-all" else "attention"))
    expected = _lora_shape_count(model, targets, rank=4)
    peft_model = apply_method(model, LoraSettings(method=method, lora_r=4))
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert count_parameters(peft_model)[0] == expected
    _backward(peft_model)
    for name, param in peft_model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


@pytest.mark.parametrize("arch", [*ARCHS, "opt"])
def test_norms_trains_only_normalisation_weights(build, arch):
    model = apply_method(build(arch), LoraSettings(method="norms"))
    trainable = {name: param for name, param in model.named_parameters() if param.requires_grad}
    assert trainable
    norm_params = {
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower()
        for param_name, _ in module.named_parameters(recurse=False)
    }
    assert set(trainable) == norm_params
    assert all(param.ndim == 1 for param in trainable.values())
    _backward(model)
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


@pytest.mark.parametrize("arch", ARCHS)
def test_full_and_none(build, arch):
    full = apply_method(build(arch), LoraSettings(method="full"))
    trainable, total = count_parameters(full)
    assert trainable == total == sum(p.numel() for p in full.parameters())
    frozen = apply_method(build(arch), LoraSettings(method="none"))
    assert count_parameters(frozen)[0] == 0
    input_ids = torch.randint(0, frozen.config.vocab_size, (1, 5))
    assert not frozen(input_ids=input_ids, labels=input_ids).loss.requires_grad


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tied_embedding_stays_tied_and_is_counted_once(build, arch):
    model = build(arch)
    _, total_before = count_parameters(model)
    peft_model = apply_method(model, LoraSettings(method="lora-all", lora_r=4))
    base = peft_model.get_base_model()
    embedding = base.get_input_embeddings()
    assert hasattr(embedding, "lora_embedding_A"), "the input embedding carries an adapter"
    assert base.get_output_embeddings().weight is embedding.base_layer.weight, "tying is kept"
    assert not base.get_output_embeddings().weight.requires_grad
    trainable, total = count_parameters(peft_model)
    assert total == total_before + trainable
    assert len({id(p) for p in peft_model.parameters()}) == len(list(peft_model.parameters()))


def test_count_parameters_counts_shared_tensors_once(build):
    model = build("gpt2")
    unique = {id(p): p.numel() for p in model.parameters()}
    by_name = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert count_parameters(model) == (sum(unique.values()), sum(unique.values()))
    assert by_name > sum(unique.values()), "GPT-2 ties its output layer to the token embedding"


def test_custom_target_modules_are_used(build):
    model = apply_method(build("llama"), LoraSettings(lora_target_modules="q_proj", lora_r=2))
    adapted = {
        name.split(".lora_")[0].rsplit(".", 1)[-1] for name, p in model.named_parameters() if p.requires_grad
    }
    assert adapted == {"q_proj"}


def test_gradient_checkpointing_is_opt_in(build):
    plain = apply_method(build("llama"), LoraSettings())
    assert not plain.get_base_model().is_activation_checkpointing
    checkpointed = apply_method(build("llama"), LoraSettings(), gradient_checkpointing=True)
    assert checkpointed.get_base_model().is_activation_checkpointing
    _backward(checkpointed)


def test_lora_on_8bit_tiny_model_trains_adapters_only(tiny_model_dir):
    from bitsandbytes.nn import Linear8bitLt
    from transformers import BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir("llama"),
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map={"": "cpu"},
    )
    with pytest.raises(ValueError, match="full"):
        apply_method(model, LoraSettings(method="full"))
    peft_model = apply_method(model, LoraSettings(method="lora-all", lora_r=4))
    q_proj = peft_model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, Linear8bitLt)
    _backward(peft_model)
    for name, param in peft_model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("method", "lora", "method: unknown value 'lora'"),
        ("lora_r", 0, "positive integer"),
        ("lora_alpha", 0, "positive"),
        ("lora_dropout", 1.0, r"\[0, 1\)"),
        ("lora_target_modules", [], "at least one"),
    ],
)
def test_lora_settings_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        LoraSettings(**{field: value})


def test_methods_and_settings_defaults():
    assert set(METHODS) == {"norms", "lora-attention", "lora-all", "full", "none"}
    settings = LoraSettings()
    assert (settings.method, settings.lora_r, settings.lora_alpha, settings.lora_dropout) == (
        "lora-all",
        8,
        16,
        0.05,
    )
    assert settings.lora_target_modules is None
