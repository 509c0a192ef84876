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
