"""The CPU 8-bit layers' int8 paths (kernel, scaled product) against dequantize-then-matmul: forward,
gradients, fallbacks."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from trainer_ext.modeling import int8_cpu
from trainer_ext.modeling.int8_cpu import dequantize_rows, use_weight_only_int8

bnb = pytest.importorskip("bitsandbytes")

needs_kernel = pytest.mark.skipif(
    int8_cpu._INT8_KERNEL is None, reason="aten::_weight_int8pack_mm is not vectorized on this CPU"
)


def int8_layer(in_features: int, out_features: int, bias: bool = True, seed: int = 0):
    """A random CPU `Linear8bitLt` switched to the weight-only int8 matmul. Its rows differ in magnitude
    up to 15x (so a scale applied to the wrong row shows) and its bias is as large as its outputs (so a
    lost bias shows)."""
    torch.manual_seed(seed)
    layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias, has_fp16_weights=False)
    with torch.no_grad():
        layer.weight.data *= torch.linspace(0.2, 3.0, out_features).unsqueeze(1)
        if bias:
            layer.bias.data = torch.randn(out_features)
    layer = layer.to("cpu")
    assert use_weight_only_int8(layer) == 1
    return layer


def dequantized_reference(layer, x: torch.Tensor) -> torch.Tensor:
    """What every path must compute: dequantize to the activation dtype, then a matmul."""
    weight = dequantize_rows(layer.weight.data, layer.weight.SCB, x.dtype)
    return F.linear(x, weight, None if layer.bias is None else layer.bias.to(x.dtype))


def assert_close_bf16(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within a few bf16 roundings of the largest value (the two paths round differently)."""
    actual, expected = actual.float(), expected.float()
    scale = (expected.abs().max().item() if expected.numel() else 0.0) or 1.0
    torch.testing.assert_close(actual, expected, rtol=2**-6, atol=2**-6 * scale)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the real kernel, chosen as on a CPU without native bf16 (up to 2,048 rows)."""
    calls = []
    kernel = int8_cpu._INT8_KERNEL
    monkeypatch.setattr(int8_cpu, "KERNEL_MAX_ROWS", int8_cpu.KERNEL_MAX_ROWS_WITHOUT_NATIVE_BF16)

    def counting(x, weight, scales):
        calls.append((tuple(x.shape), tuple(weight.shape)))
        return kernel(x, weight, scales)

    monkeypatch.setattr(int8_cpu, "_INT8_KERNEL", counting)
    return calls


def force_no_kernel(monkeypatch) -> None:
    monkeypatch.setattr(int8_cpu, "_int8_kernel_fits", lambda x, weight: False)


def forward_backward(layer, x: torch.Tensor, lora: tuple[torch.Tensor, torch.Tensor]):
    """Output, input gradient and LoRA gradients of ``layer(x) + x @ A.T @ B.T`` under a nonlinear loss."""
    x = x.detach().requires_grad_(True)
    lora_a, lora_b = (p.detach().requires_grad_(True) for p in lora)
    out = layer(x).float() + x.float() @ lora_a.T @ lora_b.T  # (..., out)
    (out**2).mean().backward()  # the gradient reaching the int8 layer depends on its forward output
    return out.detach(), x.grad, lora_a.grad, lora_b.grad


# (in_features, out_features, input shape): 2-D and 3-D inputs, odd row counts and widths.
KERNEL_SHAPES = [
    (64, 48, (5, 64)),
    (48, 37, (2, 3, 48)),
    (576, 1, (1, 576)),
    (32, 5, (1, 1, 1, 32)),
    (160, 96, (int8_cpu.KERNEL_MAX_ROWS_WITHOUT_NATIVE_BF16, 160)),
    (96, 31, (3, 7, 96)),
]


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("in_features", "out_features", "shape"), KERNEL_SHAPES)
def test_kernel_forward_and_gradients_match_dequantize(
    monkeypatch, kernel_calls, in_features, out_features, shape, bias
):
    layer = int8_layer(in_features, out_features, bias=bias)
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.bfloat16)
    lora = (torch.randn(4, in_features) * 0.1, torch.randn(out_features, 4) * 0.1)

    kernel_results = forward_backward(layer, x, lora)
    assert kernel_calls == [((x.numel() // in_features, in_features), (out_features, in_features))]
    assert kernel_results[0].shape == (*shape[:-1], out_features)

    force_no_kernel(monkeypatch)
    dequantize_results = forward_backward(layer, x, lora)
    assert len(kernel_calls) == 1
    assert_close_bf16(layer(x), dequantized_reference(layer, x))
    for got, expected in zip(kernel_results, dequantize_results, strict=True):
        assert_close_bf16(got, expected)


@needs_kernel
def test_kernel_is_correct_beyond_the_rows_it_is_chosen_for(monkeypatch, kernel_calls):
    layer = int8_layer(64, 40)
    x = torch.randn(3, int8_cpu.KERNEL_MAX_ROWS_WITHOUT_NATIVE_BF16, 64, dtype=torch.bfloat16)
    assert not int8_cpu._int8_kernel_fits(x, layer.weight.data)
    monkeypatch.setattr(int8_cpu, "_int8_kernel_fits", lambda x, weight: True)
    assert_close_bf16(layer(x), dequantized_reference(layer, x))
    assert len(kernel_calls) == 1


def _misaligned(shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous bf16 tensor whose data starts 2 bytes after an aligned address."""
    flat = torch.randn(1 + torch.Size(shape).numel(), dtype=torch.bfloat16)
    return flat[1:].view(shape)


# (case, in_features, input): what the kernel cannot compute (it would read past rows or fault) or
# should not (fp16/fp32 run a scalar loop on x86; many rows are faster on the other paths).
FALLBACK_CASES = [
    ("float32", 64, lambda: torch.randn(5, 64)),
    ("float16", 64, lambda: torch.randn(5, 64, dtype=torch.float16)),
    ("width 40", 40, lambda: torch.randn(5, 40, dtype=torch.bfloat16)),
    ("odd width", 33, lambda: torch.randn(2, 3, 33, dtype=torch.bfloat16)),
    ("many rows", 64, lambda: torch.randn(int8_cpu.KERNEL_MAX_ROWS + 1, 64, dtype=torch.bfloat16)),
    ("no rows", 64, lambda: torch.randn(0, 64, dtype=torch.bfloat16)),
    ("non-contiguous", 64, lambda: torch.randn(64, 5, dtype=torch.bfloat16).T),
    ("misaligned", 64, lambda: _misaligned((5, 64))),
]


@pytest.mark.parametrize(
    ("case", "in_features", "make_input"), FALLBACK_CASES, ids=[c[0] for c in FALLBACK_CASES]
)
def test_unsupported_inputs_do_without_the_kernel(monkeypatch, case, in_features, make_input):
    def must_not_run(*args):
        raise AssertionError(f"the int8 kernel ran on an unsupported input ({case})")

    monkeypatch.setattr(int8_cpu, "_INT8_KERNEL", must_not_run)
    layer = int8_layer(in_features, 24)
    x = make_input()
    assert not int8_cpu._int8_kernel_fits(x, layer.weight.data)
    x.requires_grad_(True)
    out = layer(x)
    assert_close_bf16(out, dequantized_reference(layer, x))
    out.float().sum().backward()
    assert x.grad.shape == x.shape


def test_unavailable_kernel_is_done_without(monkeypatch):
    monkeypatch.setattr(int8_cpu, "_INT8_KERNEL", None)
    layer = int8_layer(64, 24)
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16, requires_grad=True)
    assert not int8_cpu._int8_kernel_fits(x, layer.weight.data)
    out = layer(x)
    assert_close_bf16(out, dequantized_reference(layer, x))
    out.float().sum().backward()
    expected = torch.ones(2, 3, 24, dtype=torch.bfloat16) @ dequantize_rows(
        layer.weight.data, layer.weight.SCB, torch.bfloat16
    )
    assert_close_bf16(x.grad, expected)


def test_a_cpu_with_native_bf16_uses_the_kernel_for_few_rows_only(monkeypatch):
    """There oneDNN's bf16 matmul beats the kernel above about 32 rows (int8_matmul_epyc.md)."""
    from trainer_ext.modeling.cpu_features import cpu_supports_bf16

    expected = 32 if cpu_supports_bf16() else 2048
    assert expected == int8_cpu.KERNEL_MAX_ROWS
    layer = int8_layer(64, 24)
    monkeypatch.setattr(int8_cpu, "KERNEL_MAX_ROWS", int8_cpu.KERNEL_MAX_ROWS_WITH_NATIVE_BF16)
    available = int8_cpu._INT8_KERNEL is not None
    for rows, fits in ((1, available), (32, available), (33, False), (512, False)):
        x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
        assert int8_cpu._int8_kernel_fits(x, layer.weight.data) == fits, rows


def _reference_forward_backward(layer, x: torch.Tensor, lora: tuple[torch.Tensor, torch.Tensor]):
    """`forward_backward` through plain autograd on the dequantized weight: what every path must equal."""
    weight = dequantize_rows(layer.weight.data, layer.weight.SCB, x.dtype)  # (out, in), no gradient
    bias = None if layer.bias is None else layer.bias.detach().to(x.dtype)
    return forward_backward(lambda inputs: F.linear(inputs, weight, bias), x, lora)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_scaled_product_forward_and_gradients_match_dequantize(monkeypatch, dtype, bias):
    """The path without the kernel applies the row scales to the product (bf16, float32) or dequantizes
    first (float16); either way output, input gradient and LoRA gradients equal the dequantized weight's."""
    force_no_kernel(monkeypatch)
    layer = int8_layer(96, 40, bias=bias, seed=3)
    torch.manual_seed(4)
    x = (torch.randn(2, 9, 96) * 3).to(dtype)
    lora = (torch.randn(4, 96) * 0.1, torch.randn(40, 4) * 0.1)
    got = forward_backward(layer, x, lora)
    expected = _reference_forward_backward(layer, x, lora)
    for actual, reference in zip(got, expected, strict=True):
        assert actual.dtype == reference.dtype
        if dtype == torch.float32:  # one rounding apart, not a bf16 one
            torch.testing.assert_close(actual, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
        else:
            assert_close_bf16(actual, reference)
    assert got[1].dtype == dtype and got[0].shape == (2, 9, 40)


def test_float16_products_do_not_overflow_without_the_row_scales():
    """An unscaled int8 product of large float16 activations would pass 65,504; float16 dequantizes first."""
    layer = int8_layer(1536, 8, bias=False)
    x = torch.full((1, 1536), 30.0, dtype=torch.float16)
    assert int8_cpu.matmul_paths(x, layer.weight.data) == ("dequantize", False)
    out = layer(x)
    assert torch.isfinite(out).all()
    assert_close_bf16(out, dequantized_reference(layer, x))


@pytest.mark.parametrize(
    ("rows", "in_features", "expected"),
    [(1, 64, ("scaled", True)), (63, 64, ("scaled", True)), (64, 64, ("dequantize", False))],
)
def test_the_row_scales_go_where_they_multiply_fewer_values(monkeypatch, rows, in_features, expected):
    """Scaled product while there are fewer rows than input features, dequantized weight from then on; the
    path taken is the path picked (a wrong path would call, or not call, `dequantize_rows`)."""
    force_no_kernel(monkeypatch)
    layer = int8_layer(in_features, 24)
    x = torch.randn(rows, in_features, dtype=torch.bfloat16, requires_grad=True)
    assert int8_cpu.matmul_paths(x, layer.weight.data) == expected
    expected_output = dequantized_reference(layer, x.detach())
    dequantized = []
    real = int8_cpu.dequantize_rows
    monkeypatch.setattr(int8_cpu, "dequantize_rows", lambda *args: dequantized.append(1) or real(*args))
    out = layer(x)
    out.float().sum().backward()
    assert len(dequantized) == (0 if expected[0] == "scaled" else 2)  # forward and backward
    assert_close_bf16(out, expected_output)


@needs_kernel
def test_the_kernel_output_can_be_changed_in_place(kernel_calls):
    """PEFT adds the adapters' output to the base layer's; in place, that must not hit a Function's view."""
    layer = int8_layer(64, 24, bias=False)
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16, requires_grad=True)
    out = layer(x)
    assert len(kernel_calls) == 1
    out.add_(1.0)
    out.float().sum().backward()
    assert_close_bf16(out.detach(), dequantized_reference(layer, x.detach()) + 1.0)
    assert x.grad is not None and x.grad.shape == x.shape


def test_misaligned_weight_falls_back():
    layer = int8_layer(64, 24)
    weight = torch.empty(1 + layer.weight.numel(), dtype=torch.int8)[1:].view(24, 64)
    assert not int8_cpu._int8_kernel_fits(torch.randn(5, 64, dtype=torch.bfloat16), weight)


def _loss_and_lora_grads(model, input_ids: torch.Tensor):
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt")
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@needs_kernel
def test_tiny_llama_lora_trains_the_same_through_the_kernel(monkeypatch, kernel_calls, tiny_model_dir):
    from trainer_ext.modeling.loading import load_model

    # bf16 as on a CPU with AVX-512 (dtype "auto" computes in float32 where bf16 is slow)
    path = str(tiny_model_dir("llama"))
    loaded = load_model(path, quantization="8bit", method="lora-all", dtype="bfloat16", device="cpu")
    assert loaded.dtype is torch.bfloat16
    model = loaded.model.eval()  # no LoRA dropout: both passes see the same adapters' inputs
    for name, param in model.named_parameters():  # LoRA B starts at zero: give the adapters an effect
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    input_ids = torch.randint(0, 1000, (2, 6))

    kernel_loss, kernel_grads = _loss_and_lora_grads(model, input_ids)
    assert len(kernel_calls) == 2 * 7  # every int8 layer of both blocks, in the forward pass only
    force_no_kernel(monkeypatch)
    dequantize_loss, dequantize_grads = _loss_and_lora_grads(model, input_ids)

    around_int8 = [name for name in kernel_grads if ".lora_A." in name or ".lora_B." in name]
    assert len(around_int8) == 2 * 7 * 2
    assert all(kernel_grads[name].abs().max() > 0 for name in around_int8)
    torch.testing.assert_close(kernel_loss, dequantize_loss, rtol=1e-2, atol=1e-2)
    for name, grad in kernel_grads.items():
        scale = dequantize_grads[name].abs().max().item()
        # bf16 differences in the forward pass compound over the layers: a looser bound than per layer.
        torch.testing.assert_close(grad.float(), dequantize_grads[name].float(), rtol=0.05, atol=0.05 * scale)


def test_released_checkpoint_pages_keep_the_model_as_it_was(tiny_model_dir):
    """`release_checkpoint_pages` copies the floating-point tensors only (the int8 ones stay where they
    are), keeps tied weights tied and the outputs bit for bit."""
    from trainer_ext.modeling.int8_cpu import release_checkpoint_pages
    from trainer_ext.modeling.loading import load_model

    path = str(tiny_model_dir("llama"))
    model = load_model(path, quantization="8bit", method="none", dtype="bfloat16").model
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    before = model(input_ids=ids).logits
    int8 = {name: t.data_ptr() for name, t in model.state_dict().items() if t.dtype == torch.int8}
    floating = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    assert int8 and release_checkpoint_pages(model) == len(floating)
    assert int8 == {name: t.data_ptr() for name, t in model.state_dict().items() if t.dtype == torch.int8}
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("rows", [3, 64])  # the scaled product, the dequantized weight
def test_a_trainable_bias_gets_its_gradient(monkeypatch, rows):
    """PEFT's ``bias="all"`` trains the 8-bit layers' biases: their gradient is the output gradient summed
    over the rows, on every path."""
    force_no_kernel(monkeypatch)
    layer = int8_layer(64, 24)
    layer.bias.requires_grad_(True)
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    grad_out = torch.randn(rows, 24, dtype=torch.bfloat16)
    layer(x).backward(grad_out)
    assert layer.bias.grad is not None and layer.bias.grad.dtype == layer.bias.dtype
    assert_close_bf16(layer.bias.grad, grad_out.float().sum(0))
