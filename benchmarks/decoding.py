"""Speed of label decoding behind `make bench`: constrained scoring (with and without the
shared-prefix cache), batched greedy generation, and the plain one-prompt-at-a-time `model.generate` loop a
user writes first, on the same model and texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.training import cpu_snapshot, others_cpu_share


def plain_generate_labels(
    model, tokenizer, task, texts: Sequence[str], max_new_tokens: int
) -> list[str | None]:
    """The loop a user writes first: one prompt at a time, tokenizer-encoded, greedy `generate`, parsed."""
    import torch

    device = next(model.parameters()).device
    labels = []
    for text in texts:
        encoded = tokenizer(task.prompt(text), return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        answer = tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        labels.append(task.label_from_completion(answer))
    return labels


def _decoding_classifier(spec: dict[str, Any], recipe):
    """The trained run of `spec["run_dir"]` when it holds one, else the recipe's base model with its task."""
    from trainer_ext.inference.classifier import Classifier
    from trainer_ext.tasks import LabelTask

    run_dir = spec.get("run_dir")
    if run_dir and (Path(run_dir) / "task.json").is_file():
        return Classifier.from_pretrained(run_dir), f"trained run {run_dir}"
    task = LabelTask.from_settings(recipe.task)
    m = recipe.model
    classifier = Classifier.from_base(
        m.model_name_or_path, task, m.quantization, max_length=recipe.task.max_length
    )
    return classifier, f"base model {m.model_name_or_path} (no trained run at {run_dir}), zero-shot"


def run_decoding(spec: dict[str, Any]) -> dict[str, Any]:
    """Time constrained scoring (with and without the shared-prefix cache), batched generation and a plain
    `generate` loop on the eval prompts.

    Every mode gets the same texts (the recipe's eval split, HTML decoded as in training) and the same model;
    each first decodes a few prompts untimed (warm-up).
    """
    from trainer_ext.data import load_split
    from trainer_ext.evaluation.metrics import classification_metrics
    from trainer_ext.inference.scoring import generate_labels, score_labels
    from trainer_ext.training.recipe import parse_recipe
    from trainer_ext.training.tokenization import encode_prompt, label_token_ids

    recipe = parse_recipe(
        ["--config", spec["recipe"], *spec.get("overrides", []), "--output_dir", spec["output_dir"]]
    )
    clf, source = _decoding_classifier(spec, recipe)
    model, tokenizer, task = clf.model.eval(), clf.tokenizer, clf.task
    examples = load_split(recipe.data, "eval", labels=list(task.labels))[: spec.get("samples")]
    texts, gold = [e.text for e in examples], [e.label for e in examples]
    prompts = [encode_prompt(tokenizer, task, text, clf.max_length) for text in texts]
    batch_size = spec.get("batch_size", recipe.training.per_device_eval_batch_size)
    longest = max(len(ids) for ids in label_token_ids(tokenizer, task).values())  # longest label + EOS
    modes = {
        "constrained": lambda n: score_labels(model, tokenizer, task, prompts[:n], batch_size).labels,
        # The same without running the prompts' shared ids once (ablation of the prefix cache).
        "constrained_unshared": lambda n: (
            score_labels(model, tokenizer, task, prompts[:n], batch_size, share_prefix=False).labels
        ),
        "generate": lambda n: generate_labels(model, tokenizer, task, prompts[:n], batch_size).labels,
        "plain_generate_loop": lambda n: plain_generate_labels(model, tokenizer, task, texts[:n], longest),
    }
    results: dict[str, Any] = {}
    for name in spec.get("modes") or list(modes):
        modes[name](min(4, len(texts)))  # warm-up
        start = cpu_snapshot()
        predicted = modes[name](len(texts))
        end = cpu_snapshot()
        scores = classification_metrics(gold, predicted, task.labels)
        results[name] = {
            "seconds": round(end[0] - start[0], 3),
            "samples_per_second": round(len(texts) / (end[0] - start[0]), 2),
            "accuracy": round(scores["accuracy"], 4),
            "macro_f1": round(scores["macro_f1"], 4),
            "invalid_rate": round(scores["invalid_rate"], 4),
            "others_cpu_share": others_cpu_share(start, end),
        }
    return {"model": source, "samples": len(texts), "batch_size": batch_size, "modes": results}
