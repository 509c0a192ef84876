"""Constrained scoring computes only the log-probabilities it needs: the same scores, in bounded memory."""

from functools import partial

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from trainer_ext.inference import scoring
from trainer_ext.inference.scoring import score_labels, shared_prefix_length
from trainer_ext.tasks import LabelTask
from trainer_ext.training.tokenization import encode_prompt, label_token_ids

TEXTS = [
    "you are wonderful",
    "I hate mondays so much!!",
    "ok",
    "the game last night was a total disaster",
    "go home",
    "what a lovely morning, thank you all",
    "no",
    "shut up",
    "this is the best day of my life and nobody can take it away",
]
# Several tokens each, and labels that start with the same tokens as others.
LABELS = ["not hate", "not hate speech", "hate", "hate speech", "offensive language", "neutral", "a b c d e"]
WORDS = ["red", "green", "blue", "black", "white", "dark", "light", "big", "small", "old", "new", "good"]


def many_labels(count: int) -> list[str]:
    """`count` distinct labels of 1 to 5 words (1 to 5 GPT-2 tokens)."""
    return [" ".join(WORDS[(i + 7 * k) % len(WORDS)] for k in range(1 + i % 5)) for i in range(count)]


def reference_logprobs(model, prompt: list[int], completions: list[list[int]]) -> torch.Tensor:
    """`(L,)` sums of log p(completion tokens | prompt): full logits of prompt + completion, log-softmax."""
    scores = []
    for completion in completions:
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]  # (T, V)
        logp = logits.float().log_softmax(-1)
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
        scores.append(logp[positions, torch.tensor(completion)].sum())
    return torch.stack(scores)


@pytest.fixture(scope="module")
def reference(tiny_model):
    """Factory: ``reference(arch) -> (model, tokenizer, task, prompts, expected (N, L) log-probs)``."""
    cache = {}

    def build(arch: str):
        if arch not in cache:
            model, tokenizer = tiny_model(arch)
            task = LabelTask(LABELS)
            prompts = [encode_prompt(tokenizer, task, text, max_length=128) for text in TEXTS]
            completions = [label_token_ids(tokenizer, task)[label] for label in task.labels]
            with torch.no_grad():
                expected = torch.stack([reference_logprobs(model, p, completions) for p in prompts])
            cache[arch] = model, tokenizer, task, prompts, expected
        return cache[arch]

    return build


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("share_prefix", [True, False])
# 3 rows per chunk: chunks that end inside a label's rows, and at different prompts.
@pytest.mark.parametrize(("batch_size", "rows_per_chunk"), [(1, None), (7, None), (7, 3)])
def test_scores_equal_the_full_logits_reference(
    reference, monkeypatch, arch, share_prefix, batch_size, rows_per_chunk
):
    model, tokenizer, task, prompts, expected = reference(arch)
    assert shared_prefix_length(prompts) > 10  # the instruction is shared
    if rows_per_chunk:
        monkeypatch.setattr(scoring, "_LOGITS_PER_CHUNK", rows_per_chunk * len(tokenizer))
    result = score_labels(model, tokenizer, task, prompts, batch_size=batch_size, share_prefix=share_prefix)
    torch.testing.assert_close(result.probs, expected.softmax(-1), atol=2e-6, rtol=0)
    assert result.labels == [task.labels[i] for i in expected.argmax(-1).tolist()]


def record_logits(model) -> list[torch.Size]:
    """Shapes of every output of the model's output layer, appended as the model runs."""
    shapes: list[torch.Size] = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: shapes.append(out.shape))
    return shapes


def test_largest_logits_tensor_does_not_grow_with_labels(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    shapes = record_logits(model)
    batch_size, vocab = 8, len(tokenizer)
    largest, all_at_once = {}, {}
    for count in (3, 15, 60):
        task = LabelTask(many_labels(count))
        prompts = [encode_prompt(tokenizer, task, text, max_length=512) for text in TEXTS[:batch_size]]
        shapes.clear()
        score_labels(model, tokenizer, task, prompts, batch_size=batch_size)
        largest[count] = max(shape.numel() for shape in shapes)
        width = max(len(ids) for ids in label_token_ids(tokenizer, task).values()) - 1
        all_at_once[count] = batch_size * count * width * vocab  # (B, L, C - 1, V) in one label pass
    # 60 labels of up to 5 tokens (+ EOS) would put 120M logits (482 MB in float32) in one tensor.
    assert all_at_once[60] == batch_size * 60 * 5 * vocab
    assert all_at_once[60] > 10 * scoring._LOGITS_PER_CHUNK
    assert all(largest[count] <= scoring._LOGITS_PER_CHUNK for count in largest), largest


def peak_tensor_bytes(run) -> int:
    """Peak of the bytes of live CPU tensors allocated while `run()` runs (torch.profiler)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


def test_memory_of_60_labels_stays_within_the_logits_budget(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    batch_size = 16
    peaks = {}
    for count in (3, 60):
        task = LabelTask(many_labels(count))
        prompts = [encode_prompt(tokenizer, task, text, max_length=512) for text in TEXTS * 2][:batch_size]
        peaks[count] = peak_tensor_bytes(partial(score_labels, model, tokenizer, task, prompts, batch_size))
    # At most _LOGITS_PER_CHUNK logits exist at once (32 MiB in float32), in the packed pass (3 labels) as in
    # the chunked second pass (60 labels): 23 and 88 MB measured, the rest being the model's activations and
    # caches. The code before the chunks, all 60 labels' logits at once and their log-softmax, took 2,240 MB
    # (peak RSS in `python -m benchmarks.scoring_memory`, batch 16).
    budget = 4 * 4 * scoring._LOGITS_PER_CHUNK  # bytes
    assert peaks[3] <= budget and peaks[60] <= budget, peaks
