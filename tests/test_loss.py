"""The shared prompt prefix in training: the same loss and gradients as each sample computed whole."""

import pytest
import torch

from trainer_ext.tasks import LabelTask
from trainer_ext.training.collator import LabelCollator
from trainer_ext.training.loss import MIN_SHARED_PREFIX, completion_loss, shared_prompt_prefix
from trainer_ext.training.tokenization import encode_example

SAMPLES = [
    ("you are great", "neutral"),
    ("a much longer message with many more words in it, and then some", "offensive"),
    ("go away", "hate"),
    ("ok", "neutral"),
]


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
@pytest.mark.parametrize("weighted", [False, True])
def test_shared_prefix_loss_and_gradients_equal_the_unshared_ones(tiny_model, arch, weighted):
    model, tokenizer = tiny_model(arch)
    model.eval()  # no dropout: the two computations must see the same network
    task = LabelTask(["hate", "offensive", "neutral"])
    batch = LabelCollator(tokenizer)([encode_example(tokenizer, task, t, label, 96) for t, label in SAMPLES])
    if weighted:
        batch["sample_weight"] = torch.tensor([0.5, 2.0, 1.0, 1.5])
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = batch["labels"][:, 1:] != -100
    shared = shared_prompt_prefix(batch["input_ids"], batch["attention_mask"], keep)
    assert shared > 10  # the instruction naming the labels

    results = {}
    for share in (False, True):
        model.zero_grad()
        loss, outputs = completion_loss(model, batch, share_prefix=share)
        loss.backward()
        results[share] = (loss.detach(), outputs.logits.detach(), _grads(model))
    (loss_a, logits_a, grads_a), (loss_b, logits_b, grads_b) = results[False], results[True]
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_b, logits_a, atol=1e-4, rtol=1e-4)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad()


def test_shared_prompt_prefix_bounds():
    ids = torch.tensor([[1] * 12 + [5, 6, 7], [1] * 12 + [8, 9, 0]])
    mask = torch.ones_like(ids)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    assert shared_prompt_prefix(ids, mask, keep) == 12
    keep[1, 10] = True  # a scored position inside the common ids ends the prefix before it
    assert shared_prompt_prefix(ids, mask, keep) == 10
    assert shared_prompt_prefix(ids[:1], mask[:1], keep[:1]) == 0  # one row: nothing to share
    left = mask.clone()
    left[0, 0] = 0  # left padding: the first column is not real in every row
    assert shared_prompt_prefix(ids, left, torch.zeros_like(keep)) == 0
    short = torch.tensor([[1] * (MIN_SHARED_PREFIX - 1) + [2], [1] * (MIN_SHARED_PREFIX - 1) + [3]])
    assert shared_prompt_prefix(short, torch.ones_like(short), torch.zeros_like(short, dtype=torch.bool)) == 0
    same = torch.tensor([[4] * 10, [4] * 10])  # identical rows keep one position of their own
    assert shared_prompt_prefix(same, torch.ones_like(same), torch.zeros_like(same, dtype=torch.bool)) == 9
