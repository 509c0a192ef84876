"""Column-major float32 linear weights for prediction on the CPU: the same model, laid out differently."""

from __future__ import annotations

import pytest
import torch

from trainer_ext.modeling.cpu_layout import use_column_major_weights


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_relaid_weights_give_the_same_logits(tiny_model, arch):
    model, _ = tiny_model(arch)
    ids = torch.randint(0, 500, (2, 28))  # (B, S): a few rows, where the layout matters
    with torch.no_grad():
        before = model(input_ids=ids).logits
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    output = model.get_output_embeddings().weight
    relaid = use_column_major_weights(model)
    # Every float32 nn.Linear but the LM head is re-laid; GPT-2's Conv1D layers are not nn.Linear.
    assert relaid == sum(m.weight is not output for m in linears)
    for module in linears:
        weight = module.weight
        if weight is output:
            assert weight.is_contiguous()
        else:
            assert weight.stride() == (1, weight.shape[0]) and not weight.is_contiguous()
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert use_column_major_weights(model) == 0  # already laid out: nothing left to do


def test_other_dtypes_are_left_alone():
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    assert use_column_major_weights(layer) == 0 and layer.weight.is_contiguous()


@pytest.fixture
def native_bf16(monkeypatch):
    """Prepack as on a CPU with native bf16, whatever this machine has (the results do not depend on it)."""
    from trainer_ext.modeling import cpu_layout

    if not (cpu_layout._PACKING and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("oneDNN's bf16 linear ops need PyTorch with oneDNN and a CPU with AVX-512")
    monkeypatch.setattr(cpu_layout, "cpu_supports_bf16", lambda: True)


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_prepacked_bf16_weights_give_identical_logits(tiny_model, native_bf16, arch):
    from trainer_ext.modeling.cpu_layout import PrepackedLinear, use_prepacked_weights

    model, _ = tiny_model(arch)
    model.to(torch.bfloat16)
    ids = torch.randint(0, 500, (2, 28))  # (B, S)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    keys = list(model.state_dict())
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert use_prepacked_weights(model) == len(linears) > 0
    assert all(type(m) is PrepackedLinear for m in linears)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(after, before)  # the same oneDNN product, only packed once
    assert list(model.state_dict()) == keys  # the packed copies are not part of the model's state


def test_prepacked_layer_follows_a_changed_weight_and_trains_as_nn_linear(native_bf16):
    from trainer_ext.modeling.cpu_layout import use_prepacked_weights

    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16).to(torch.bfloat16)
    plain = torch.nn.Linear(32, 16).to(torch.bfloat16)
    plain.load_state_dict(layer.state_dict())
    assert use_prepacked_weights(layer) == 1
    x = torch.randn(3, 5, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.add_(1.0)  # merged into in place, as PEFT merges an adapter
        plain.weight.add_(1.0)
        assert torch.equal(layer(x), plain(x))
        layer.weight.data = plain.weight.data.clone() * 2  # new data assigned
        plain.weight.data = plain.weight.data * 2
        assert torch.equal(layer(x), plain(x))
    x.requires_grad_(True)
    layer(x).sum().backward()  # with gradients it is nn.Linear's own product
    assert layer.weight.grad is not None and x.grad is not None and x.grad.shape == x.shape


def test_prepacked_layer_copies_pickles_and_moves(native_bf16):
    import copy
    import io

    from trainer_ext.modeling.cpu_layout import PrepackedLinear, use_prepacked_weights

    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16).to(torch.bfloat16)
    use_prepacked_weights(layer)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = layer(x)
        twin = copy.deepcopy(layer)
        assert type(twin) is PrepackedLinear and torch.equal(twin(x), expected)
        buffer = io.BytesIO()
        torch.save(layer, buffer)
        buffer.seek(0)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)
        layer.float()  # a cast drops the packed copy; float32 runs nn.Linear's product
        assert "_packed_weight" not in layer.__dict__
        torch.testing.assert_close(layer(x.float()), expected.float(), atol=0.05, rtol=0.02)


def test_adapter_layers_are_not_packed_and_merging_reaches_the_output(tiny_model, native_bf16):
    from peft import LoraConfig, get_peft_model

    from trainer_ext.modeling.cpu_layout import PrepackedLinear, use_prepacked_weights

    model, _ = tiny_model("llama")
    model = get_peft_model(model.to(torch.bfloat16), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    use_prepacked_weights(model)
    for module in model.modules():
        if hasattr(module, "base_layer"):  # PEFT writes merged weights through .data, unseen by a copy
            assert not any(type(sub) is PrepackedLinear for sub in module.modules())
    assert any(type(m) is PrepackedLinear for m in model.modules())  # k_proj, the MLP, the LM head
    ids = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged, atol=0.1, rtol=0.05)  # bf16 rounding of the merge


def test_prepacking_leaves_other_dtypes_and_cpus_without_native_bf16_alone(monkeypatch):
    from trainer_ext.modeling import cpu_layout

    assert cpu_layout.use_prepacked_weights(torch.nn.Linear(8, 4)) == 0  # float32
    monkeypatch.setattr(cpu_layout, "cpu_supports_bf16", lambda: False)
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    assert cpu_layout.use_prepacked_weights(layer) == 0 and type(layer) is torch.nn.Linear
