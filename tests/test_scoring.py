"""Constrained scoring and greedy generation against straightforward reference computations."""

import pytest
import torch

from trainer_ext.inference.classifier import Classifier
from trainer_ext.inference.packed_labels import packed_scores
from trainer_ext.inference.scoring import (
    LabelScorer,
    contextual_calibration,
    generate_labels,
    score_labels,
    shared_prefix_length,
)
from trainer_ext.tasks import LabelTask, resolve_template
from trainer_ext.training.tokenization import encode_prompt, label_token_ids

TEXTS = ["you are wonderful", "I hate mondays so much!!", "ok", "the game last night was a total disaster 😡"]


def naive_logprobs(model, prompt, completions):
    """Sum of log p(completion tokens | prompt) from one full forward pass per (prompt, label)."""
    scores = []
    for completion in completions:
        ids = torch.tensor([prompt + completion])
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)  # (T, V)
        start = len(prompt)
        scores.append(sum(logp[start + i - 1, tok].item() for i, tok in enumerate(completion)))
    return torch.tensor(scores)


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
@pytest.mark.parametrize("label_pass", ["packed", "second pass"])
def test_constrained_scores_match_full_forward(tiny_model, arch, label_pass, monkeypatch):
    """Both ways of scoring the label tokens after the first: packed into the prompt's own pass (a short
    label set), or a second pass after the prompts' KV cache (forced here by a tiny logits budget)."""
    from trainer_ext.inference import scoring

    if label_pass == "second pass":
        monkeypatch.setattr(scoring, "_LOGITS_PER_CHUNK", 1)
    calls = []
    monkeypatch.setattr(scoring, "packed_scores", lambda *a: calls.append(1) or packed_scores(*a))
    model, tokenizer = tiny_model(arch)
    # Labels of different token lengths exercise the padded label grid.
    task = LabelTask(["hate", "offensive", "neutral", "very long label name"])
    prompts = [encode_prompt(tokenizer, task, text, max_length=128) for text in TEXTS]
    completions = label_token_ids(tokenizer, task)
    result = score_labels(model, tokenizer, task, prompts, batch_size=3)  # batches of mixed lengths
    expected = torch.stack(
        [naive_logprobs(model, p, [completions[lb] for lb in task.labels]) for p in prompts]
    )
    torch.testing.assert_close(result.probs, expected.softmax(-1), atol=1e-4, rtol=1e-3)
    assert result.labels == [task.labels[i] for i in expected.argmax(-1).tolist()]
    assert bool(calls) == (label_pass == "packed")


def test_a_batch_over_the_logits_budget_is_packed_in_several_passes(tiny_model, monkeypatch):
    """A label set whose packed logits exceed the budget for the whole batch, but not for two rows, is
    scored in packed passes of fewer rows (fewer passes than a second label pass), with the same scores."""
    from trainer_ext.inference import scoring

    model, tokenizer = tiny_model("llama")
    task = LabelTask(["hate", "offensive", "neutral", "very long label name"])
    prompts = [encode_prompt(tokenizer, task, text, max_length=128) for text in TEXTS[:3]]
    completions = label_token_ids(tokenizer, task)
    appended = sum(len(completions[label]) - 1 for label in task.labels)
    passes = []
    monkeypatch.setattr(
        scoring,
        "packed_scores",
        lambda model, ids, *a: passes.append(len(ids)) or packed_scores(model, ids, *a),
    )
    monkeypatch.setattr(scoring, "_LOGITS_PER_CHUNK", 2 * (1 + appended) * model.config.vocab_size)
    result = score_labels(model, tokenizer, task, prompts, batch_size=3)
    assert sorted(passes) == [1, 2], "three prompts, two rows per packed pass at most"
    expected = torch.stack(
        [naive_logprobs(model, p, [completions[lb] for lb in task.labels]) for p in prompts]
    )
    torch.testing.assert_close(result.probs, expected.softmax(-1), atol=1e-4, rtol=1e-3)


def test_with_labels_takes_a_longer_budget_and_predict_refuses_a_bad_batch_size(tiny_model):
    """An instruction prompt names every label: many long labels need a larger max_length, which
    `with_labels` takes; the error without it says that the labels count."""
    from trainer_ext.training.tokenization import EncodingError

    model, tokenizer = tiny_model("llama")
    clf = Classifier(model, tokenizer, LabelTask(["hate", "offensive", "neutral"]), "llama", max_length=64)
    topics = [f"topic number {i} about markets and politics and the weather" for i in range(6)]
    with pytest.raises(EncodingError, match=r"the labels \(an instruction prompt names every label\)"):
        clf.with_labels(topics).predict(["shares fall"])
    wide = clf.with_labels(topics, max_length=512)
    assert wide.max_length == 512 and clf.max_length == 64
    assert sum(wide.predict(["shares fall"])[0].probs.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="max_length must be a whole number of tokens, at least 8; got 4"):
        clf.with_labels(topics, max_length=4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a whole number of texts, at least 1"):
            clf.predict(["shares fall"], batch_size=bad)


SHOTS = [("lovely morning", "neutral"), ("shut up, idiot", "offensive"), ("go home, vermin", "hate")]


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
@pytest.mark.parametrize("style", ["instruction", "few-shot", "raw"])
def test_shared_prefix_gives_the_same_scores(tiny_model, arch, style):
    model, tokenizer = tiny_model(arch)
    labels = ["hate", "offensive", "neutral", "very long label name"]
    task = {
        "instruction": LabelTask(labels),
        "few-shot": LabelTask(labels, shots=SHOTS),
        "raw": LabelTask(labels, template=resolve_template("raw")),
    }[style]
    prompts = [encode_prompt(tokenizer, task, text, max_length=256) for text in TEXTS]
    shared = shared_prefix_length(prompts)
    # The instruction (and the examples) are shared; a raw prompt starts with the message.
    assert shared > {"instruction": 10, "few-shot": 30, "raw": -1}[style]
    with_prefix = score_labels(model, tokenizer, task, prompts, batch_size=3)
    without = score_labels(model, tokenizer, task, prompts, batch_size=3, share_prefix=False)
    torch.testing.assert_close(with_prefix.probs, without.probs, atol=1e-5, rtol=1e-4)
    assert with_prefix.labels == without.labels


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
@pytest.mark.parametrize("style", ["instruction", "few-shot"])
def test_kept_prefix_cache_equals_a_fresh_one_exactly(tiny_model, arch, style):
    model, tokenizer = tiny_model(arch)
    labels = ["hate", "offensive", "neutral", "very long label name"]
    task = LabelTask(labels, shots=SHOTS if style == "few-shot" else ())
    clf = Classifier(model, tokenizer, task, arch)
    scorer = clf.scorer()
    assert len(scorer.prefix_ids) > 10  # the template before the message
    assert all(p[: len(scorer.prefix_ids)] == scorer.prefix_ids for p in clf.prompts(TEXTS))
    # One message per call, as the Space calls it: the second call on reuses the first call's cache.
    kept = [clf.predict(text)[0].probs for text in TEXTS]
    assert clf.scorer() is scorer and scorer._prefix is not None
    for text, probs in zip(TEXTS, kept, strict=True):
        fresh = Classifier(model, tokenizer, task, arch)  # computes the prefix cache anew
        assert fresh.predict(text)[0].probs == probs  # bit for bit
    # The same scores as scoring every prompt whole, up to float rounding.
    whole = score_labels(model, tokenizer, task, clf.prompts(TEXTS), share_prefix=False)
    torch.testing.assert_close(
        torch.tensor([[p[label] for label in labels] for p in kept]), whole.probs, atol=1e-5, rtol=1e-4
    )


def test_scorer_falls_back_for_prompts_without_its_prefix(tiny_model):
    model, tokenizer = tiny_model("llama")
    task = LabelTask(["hate", "offensive", "neutral"])
    prompts = [encode_prompt(tokenizer, task, text, max_length=128) for text in TEXTS]
    reference = score_labels(model, tokenizer, task, prompts, share_prefix=False).probs
    # A prefix none of the prompts starts with: scored with the call's own shared prefix instead.
    scorer = LabelScorer(model, tokenizer, task, prefix_ids=[prompts[0][0] + 1, 5, 6])
    torch.testing.assert_close(scorer(prompts).probs, reference, atol=1e-5, rtol=1e-4)
    assert scorer._prefix is None
    # The right prefix is kept, and recomputed when the autocast state changes.
    scorer = LabelScorer(model, tokenizer, task, prefix_ids=prompts[0][: shared_prefix_length(prompts)])
    torch.testing.assert_close(scorer(prompts).probs, reference, atol=1e-5, rtol=1e-4)
    first = scorer._prefix
    scorer(prompts[:1])
    assert scorer._prefix is first
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scorer(prompts[:1])
    assert scorer._prefix is not first and scorer._prefix[0][1] is True
    assert scorer([]).probs.shape == (0, 3)


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]], 2),  # stops at the first difference
        ([[7, 8, 9], [7, 8, 9]], 2),  # identical prompts keep one id each
        ([[1, 2], [3, 4]], 0),
        ([[5, 6, 7]], 2),  # a single prompt
        ([[1], [1, 2, 3]], 0),  # the shortest prompt has nothing to spare
    ],
)
def test_shared_prefix_length(prompts, expected):
    assert shared_prefix_length(prompts) == expected


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generation_does_not_depend_on_batching(tiny_model, arch):
    model, tokenizer = tiny_model(arch)
    task = LabelTask(["hate", "offensive", "neutral"])
    prompts = [encode_prompt(tokenizer, task, text, max_length=128) for text in TEXTS]
    together = generate_labels(model, tokenizer, task, prompts, batch_size=4)
    alone = [generate_labels(model, tokenizer, task, [p], batch_size=1).completions[0] for p in prompts]
    assert together.completions == alone
    # A random tiny model does not answer with a label: those answers are invalid, not guessed.
    assert all(label is None or label in task.labels for label in together.labels)


def test_contextual_calibration_removes_a_constant_bias():
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.9, 0.1]])
    calibrated = contextual_calibration(probs, torch.tensor([0.7, 0.3]))
    assert calibrated.argmax(-1).tolist() == [0, 1, 0]
    torch.testing.assert_close(calibrated.sum(-1), torch.ones(3))


def test_predict_refuses_empty_texts(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    clf = Classifier(model, tokenizer, LabelTask(["hate", "offensive", "neutral"]), "gpt2")
    with pytest.raises(ValueError, match="Text 1 is empty"):
        clf.predict(["fine", "  \n", "also fine"])
    with pytest.raises(TypeError, match="item 0 is int"):
        clf.predict([3])
    for texts, shown in [(None, "not NoneType"), (42, "not int"), (b"hi", r"not bytes \(decode bytes")]:
        with pytest.raises(TypeError, match=f"texts must be a string or a list of strings, {shown}"):
            clf.predict(texts)
    assert [p.label for p in clf.predict(("fine", "also fine"))] == [
        p.label for p in clf.predict(["fine", "also fine"])
    ]
    assert [p.label for p in clf.predict(t for t in ["fine"])] == [clf.predict("fine")[0].label]


def _head_inputs(model) -> tuple[list[torch.Tensor], object]:
    """Every input the LM head receives, recorded by a forward pre-hook; returns (inputs, handle)."""
    seen: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    return seen, handle


def _plain_strides(x: torch.Tensor) -> bool:
    """Strides of a freshly allocated tensor of this shape (a sliced view of one row is `is_contiguous()`
    too, yet sends the matmul down a slow path)."""
    return x.stride() == torch.empty(x.shape).stride()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lm_head_reads_contiguous_rows_when_scoring_and_in_the_loss(tiny_model, arch):
    """The head is fed gathered rows, never a strided slice of the hidden states (`modeling.positions`)."""
    from trainer_ext.training.collator import LabelCollator
    from trainer_ext.training.loss import completion_loss
    from trainer_ext.training.tokenization import encode_example

    model, tokenizer = tiny_model(arch)
    task = LabelTask(["hate", "offensive", "neutral"])
    seen, handle = _head_inputs(model)
    try:
        prompts = [encode_prompt(tokenizer, task, text, max_length=128) for text in TEXTS]
        for batch_size in (1, 3):
            score_labels(model, tokenizer, task, prompts, batch_size=batch_size)
        samples = [encode_example(tokenizer, task, text, "hate", 128) for text in TEXTS]
        completion_loss(model, LabelCollator(tokenizer)(samples), share_prefix=True)
    finally:
        handle.remove()
    assert len(seen) > 4
    assert all(_plain_strides(x) for x in seen), [(tuple(x.shape), x.stride()) for x in seen]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_labels_under_eager_attention(tiny_model, arch, monkeypatch):
    """Eager attention takes the packed pass's mask as additive floats, SDPA as booleans: same scores."""
    from trainer_ext.inference import scoring

    model, tokenizer = tiny_model(arch)
    task = LabelTask(["hate", "offensive", "neutral", "very long label name"])
    prompts = [encode_prompt(tokenizer, task, text, max_length=128) for text in TEXTS]
    packed = score_labels(model, tokenizer, task, prompts, batch_size=3)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    eager = score_labels(model, tokenizer, task, prompts, batch_size=3)
    monkeypatch.setattr(scoring, "_LOGITS_PER_CHUNK", 1)  # the second pass, as the reference
    reference = score_labels(model, tokenizer, task, prompts, batch_size=3)
    torch.testing.assert_close(eager.probs, reference.probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed.probs, reference.probs, atol=1e-5, rtol=1e-4)
