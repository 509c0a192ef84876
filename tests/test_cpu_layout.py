"""Linear layers laid out for prediction on the CPU (column-major, weight-first LM head, prepacked for oneDNN,
chosen by CPU class): the same model, computed differently."""

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_prepacked_weights_give_the_same_logits(tiny_model, request, dtype, arch):
    """bf16 as on a CPU with native bf16: bit-identical (nn.Linear runs the same oneDNN product, packing
    it on every call). float32 as on an AVX2 CPU: up to float rounding (oneDNN's summation order, not MKL's).
    """
    from trainer_ext.modeling.cpu_layout import PrepackedLinear, use_prepacked_weights

    request.getfixturevalue("native_bf16" if dtype == torch.bfloat16 else "avx2")
    model, _ = tiny_model(arch)
    model.to(dtype)
    ids = torch.randint(0, 500, (2, 28))  # (B, S)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    keys = list(model.state_dict())
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert use_prepacked_weights(model) == len(linears) > 0
    assert all(type(m) is PrepackedLinear and "_packed_weight" in m.__dict__ for m in linears)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    if dtype == torch.bfloat16:
        assert torch.equal(after, before)
    else:
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
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

    monkeypatch.setattr(cpu_layout, "cpu_capability", lambda: "AVX512")
    assert cpu_layout.use_prepacked_weights(torch.nn.Linear(8, 4)) == 0  # float32 is packed on AVX2 only
    monkeypatch.setattr(cpu_layout, "cpu_supports_bf16", lambda: False)
    layer = torch.nn.Linear(8, 4).to(torch.bfloat16)
    assert cpu_layout.use_prepacked_weights(layer) == 0 and type(layer) is torch.nn.Linear


@pytest.fixture
def avx2(monkeypatch):
    """Lay out as on a CPU with AVX2 and no AVX-512, whatever this machine has (results do not depend on
    it)."""
    from trainer_ext.modeling import cpu_layout

    if not cpu_layout._PACKING:
        pytest.skip("oneDNN's linear ops need PyTorch with oneDNN")
    monkeypatch.setattr(cpu_layout, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(cpu_layout, "cpu_supports_bf16", lambda: False)


def test_prepacked_float32_layer_trains_and_casts_as_nn_linear(avx2):
    from trainer_ext.modeling.cpu_layout import PrepackedLinear, use_prepacked_weights

    torch.manual_seed(0)
    layer, plain = torch.nn.Linear(32, 16), torch.nn.Linear(32, 16)
    plain.load_state_dict(layer.state_dict())
    assert use_prepacked_weights(layer) == 1
    x = torch.randn(3, 5, 32, requires_grad=True)
    layer(x).square().sum().backward()  # with gradients it is nn.Linear's own product
    plain(x.detach()).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad)
    with torch.no_grad():
        layer.weight.add_(1.0)  # changed in place: the packed copy is made again
        plain.weight.add_(1.0)
        torch.testing.assert_close(layer(x), plain(x), atol=1e-5, rtol=1e-4)
    layer.to(torch.bfloat16)  # packed for float32: in bf16 it runs nn.Linear's product
    with torch.no_grad():
        out = layer(x.detach().bfloat16())
    assert type(layer) is PrepackedLinear and "_packed_weight" not in layer.__dict__
    assert torch.equal(out, torch.nn.functional.linear(x.detach().bfloat16(), layer.weight, layer.bias))


@pytest.mark.parametrize("rows", [1, 3, 64, 200])  # 1 and 200: outside the weight-first range
@pytest.mark.parametrize("bias", [False, True])
def test_weight_first_layer_gives_nn_linear_results(rows, bias, monkeypatch):
    from trainer_ext.modeling.cpu_layout import WEIGHT_FIRST_ROWS, WeightFirstLinear

    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 300, bias=bias)
    plain = torch.nn.Linear(48, 300, bias=bias)
    plain.load_state_dict(layer.state_dict())
    layer.__class__ = WeightFirstLinear
    products = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: products.append(a) or real_mm(*a))
    x = torch.randn(1, rows, 48)  # (B, S, in): rows of one pass, as a model feeds its head
    with torch.no_grad():
        out, expected = layer(x), plain(x)
    assert out.shape == expected.shape == (1, rows, 300) and out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert len(products) == (rows in WEIGHT_FIRST_ROWS)  # its own product only where it was measured faster
    assert list(layer.state_dict()) == list(plain.state_dict())


def test_weight_first_layer_trains_as_nn_linear():
    from trainer_ext.modeling.cpu_layout import WeightFirstLinear

    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 40)
    plain = torch.nn.Linear(16, 40)
    plain.load_state_dict(layer.state_dict())
    layer.__class__ = WeightFirstLinear
    x = torch.randn(5, 16, requires_grad=True)
    layer(x).square().sum().backward()
    plain(x.detach()).square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad)
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_weight_first_head_gives_the_same_logits(tiny_model, arch):
    from trainer_ext.modeling.cpu_layout import WeightFirstLinear, use_weight_first_head

    model, _ = tiny_model(arch)
    ids = torch.randint(0, 500, (2, 12))  # (B, S): 24 rows through the head
    head = model.get_output_embeddings()
    weight = head.weight
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert use_weight_first_head(model) == 1
    assert type(model.get_output_embeddings()) is WeightFirstLinear and head.weight is weight
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    model.to(torch.bfloat16)  # a cast keeps the class; bf16 runs nn.Linear's own product
    with torch.no_grad():
        switched = model(input_ids=ids).logits
        head.__class__ = torch.nn.Linear
        assert torch.equal(model(input_ids=ids).logits, switched)
    assert use_weight_first_head(model) == 0  # a bf16 head is not switched


@pytest.mark.parametrize("capability", ["AVX512", "AVX2", "DEFAULT"])
def test_prediction_layout_follows_the_cpu_class(tiny_model, monkeypatch, capability):
    """AVX-512: column-major float32 weights. AVX2: prepacked float32 decoder weights and a weight-first LM
    head. Other CPUs (not measured): float32 layers left as they are."""
    from trainer_ext.modeling import cpu_layout

    monkeypatch.setattr(cpu_layout, "cpu_capability", lambda: capability)
    model, _ = tiny_model("llama")
    cpu_layout.lay_out_for_prediction(model, prepack=True)
    head = model.get_output_embeddings()
    decoder = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    assert decoder and all(m.weight.is_contiguous() == (capability != "AVX512") for m in decoder)
    packed = capability == "AVX2" and cpu_layout._PACKING
    assert all((type(m) is cpu_layout.PrepackedLinear) == packed for m in decoder)
    assert (type(head) is cpu_layout.WeightFirstLinear) == (capability == "AVX2")


def test_laid_out_layers_run_nn_linear_under_autocast(avx2):
    """A run evaluated with bf16 autocast is predicted under it: the laid-out layers must compute exactly as
    `nn.Linear` does there (autocast does not rewrite oneDNN's op, nor the weight-first bias addition)."""
    from trainer_ext.modeling.cpu_layout import PrepackedLinear, WeightFirstLinear, use_prepacked_weights

    torch.manual_seed(0)
    packed, head, plain = torch.nn.Linear(32, 16), torch.nn.Linear(32, 300), torch.nn.Linear(32, 16)
    plain.load_state_dict(packed.state_dict())
    plain_head = torch.nn.Linear(32, 300)
    plain_head.load_state_dict(head.state_dict())
    use_prepacked_weights(packed)
    head.__class__ = WeightFirstLinear
    assert type(packed) is PrepackedLinear
    x = torch.randn(4, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pairs = [(packed(x), plain(x)), (head(x), plain_head(x))]
    for out, expected in pairs:
        assert out.dtype == expected.dtype == torch.bfloat16 and torch.equal(out, expected)


def test_laid_out_layers_compile_and_take_weights_made_in_inference_mode(avx2):
    """Under `torch.compile` both layers trace as `nn.Linear` (Inductor cannot lower a prepacked weight);
    a weight made under `torch.inference_mode` has no version counter and is packed all the same."""
    from trainer_ext.modeling.cpu_layout import WeightFirstLinear, use_prepacked_weights

    torch.manual_seed(0)
    with torch.inference_mode():
        packed = torch.nn.Linear(32, 16)
    assert use_prepacked_weights(packed) == 1
    head, plain_head = torch.nn.Linear(32, 300), torch.nn.Linear(32, 300)
    plain_head.load_state_dict(head.state_dict())
    head.__class__ = WeightFirstLinear
    x = torch.randn(4, 32)
    with torch.inference_mode():
        expected = torch.nn.functional.linear(x, packed.weight, packed.bias)
        torch.testing.assert_close(packed(x), expected, atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(head, backend="aot_eager")(x), plain_head(x))
        torch.testing.assert_close(torch.compile(packed)(x), expected)  # Inductor, where it failed
