"""The `classification-head` row: the base LM as a sequence classifier, trained like lora-all.

The causal LM is loaded as ``AutoModelForSequenceClassification``: the LM head is dropped and a new
linear layer maps the hidden state of the last token of the message (no prompt) to one logit per label.
LoRA adapters go where lora-all puts them (every linear layer of the blocks and the input embedding, same
rank, alpha and dropout), the new head is trained whole (PEFT ``modules_to_save``), with the recipe's
quantization, dtype, optimizer, epochs and learning rate, and a plain `transformers.Trainer` with the
model's own cross-entropy loss.

What it cannot do: the label set is fixed by the head, so it has no zero-shot transfer to new labels,
and the recipe's class weights, balanced sampling, decision bias, dev-set evaluation and best-checkpoint
selection do not apply (the study's `row_argv` turns the last two off; a dev set is still held out).

`train_head` is one whole run (data, model, training, scoring) and returns flat metrics in the keys of
a training run's `metrics.json`; the study calls it in a fresh process, so its peak memory is its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from trainer_ext.evaluation.reports import PREDICTIONS_FILE
from trainer_ext.study.scoring import RowResult, short_scores

logger = logging.getLogger(__name__)

SCORES = ("accuracy", "macro_f1", "invalid_rate")


def head_name(model: nn.Module, num_labels: int) -> str:
    """The name of the classification layer of a sequence classifier: its top-level linear layer with
    one output per label (``score`` for Llama, GPT-2, GPT-NeoX and GPT-J).

    Raises:
        `ValueError`: When the model has no such layer.
    """
    for name, module in model.named_children():
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            return name
    raise ValueError(
        f"{type(model).__name__} has no top-level linear layer with {num_labels} outputs to train as a head."
    )


def load_sequence_classifier(recipe, labels: Sequence[str]):
    """Load the recipe's base model as a sequence classifier over `labels`, with its quantization and dtype.

    Returns:
        `(model, tokenizer, device)`: the model (head newly initialised), its tokenizer (pad token set,
        padding on the right) and the device.
    """
    from transformers import AutoModelForSequenceClassification

    from trainer_ext.modeling.int8_cpu import use_weight_only_int8
    from trainer_ext.modeling.loading import (
        default_device,
        load_tokenizer,
        quantization_config,
        resolve_dtype,
        resolve_source,
    )

    m = recipe.model
    device = default_device()
    dtype = resolve_dtype(m.dtype, m.quantization, device, "lora-all")
    tokenizer = load_tokenizer(m.model_name_or_path, m.revision, m.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_source(m.model_name_or_path),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
        dtype=dtype,
        quantization_config=quantization_config(m.quantization, dtype, device),
        device_map={"": device},
    )
    # The last token is found as the last one that is not padding; padding is on the right.
    model.config.pad_token_id = tokenizer.pad_token_id
    if m.quantization == "8bit":
        use_weight_only_int8(model)
    return model, tokenizer, device


def add_lora(model: nn.Module, lora, num_labels: int) -> nn.Module:
    """LoRA adapters where lora-all puts them, and the classification head trained whole.

    Args:
        model (`PreTrainedModel`): A sequence classifier.
        lora (`LoraSettings`): Rank, alpha, dropout and (optionally) the target modules.
        num_labels (`int`): The number of labels (finds the head).

    Returns:
        `PeftModel`: The model with only the adapters and the head trainable.
    """
    from peft import LoraConfig, get_peft_model

    from trainer_ext.modeling.methods import lora_targets

    config = LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.lora_target_modules or lora_targets(model, "all")),
        fan_in_fan_out=any(type(module).__name__ == "Conv1D" for module in model.modules()),
        bias="none",
        task_type="SEQ_CLS",
        modules_to_save=[head_name(model, num_labels)],
    )
    model.requires_grad_(False)
    return get_peft_model(model, config)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, side: str = "right") -> list[list[int]]:
    """Token ids of each text, shortened to `max_length` as the recipe's `truncation_side` says."""
    from trainer_ext.training.tokenization import cut_message

    return [cut_message(tokenizer(text)["input_ids"], max_length, side) for text in texts]


def predict_labels(
    model, tokenizer, ids: Sequence[list[int]], labels: Sequence[str], batch_size: int
) -> list[str]:
    """The most probable label of each encoded text."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    predicted: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            batch = tokenizer.pad({"input_ids": list(ids[start : start + batch_size])}, return_tensors="pt")
            logits = model(**batch.to(device)).logits  # (B, L)
            predicted += [labels[i] for i in logits.argmax(-1).tolist()]
    return predicted


def train_head(argv: list[str], test: Sequence[Any] = ()) -> dict[str, Any]:
    """Train and score the classification-head row of one recipe (one seed).

    Args:
        argv (`list[str]`): Recipe arguments (the study's lora-all arguments with this row's seed).
        test (`Sequence[Example]`, *optional*): The study's test set, scored too when given.

    Returns:
        `dict`: ``trainable_params``, ``total_params``, ``train_runtime``, ``train_samples_per_second``,
        ``eval_accuracy``, ``eval_macro_f1``, ``eval_invalid_rate``, ``peak_memory_mb``,
        ``num_train_epochs``, ``quantization``, ``optimizer``; with a test set also ``test_accuracy``,
        ``test_macro_f1`` and ``test_invalid_rate``; and ``predictions``, one dict per scored text
        (``split``: ``"eval"`` or ``"test"``, ``text``, ``gold``, ``predicted``) for
        `write_head_predictions`.
    """
    from transformers import DataCollatorWithPadding, Trainer, set_seed

    from trainer_ext.evaluation.metrics import classification_metrics, flat_metrics
    from trainer_ext.evaluation.reports import peak_memory_mb
    from trainer_ext.modeling.methods import count_parameters
    from trainer_ext.training.host_memory import fix_mmap_threshold
    from trainer_ext.training.pipeline import prepare_data
    from trainer_ext.training.recipe import parse_recipe

    recipe = parse_recipe(argv)
    data = prepare_data(recipe)
    labels, args = list(data.task.labels), recipe.training
    if args.release_host_memory and args.device.type == "cpu":
        fix_mmap_threshold()  # the recipe's memory keys hold for this row too
    set_seed(args.seed)
    model, tokenizer, device = load_sequence_classifier(recipe, labels)
    model = add_lora(model, recipe.lora, len(labels))
    trainable, total = count_parameters(model)
    side = recipe.task.truncation_side
    ids = encode_texts(tokenizer, [ex.text for ex in data.train], recipe.task.max_length, side)
    train = [{"input_ids": x, "label": labels.index(ex.label)} for x, ex in zip(ids, data.train, strict=True)]
    logger.info("classification-head: %s trainable parameters, %d examples", f"{trainable:,}", len(train))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=args.pad_to_multiple_of),
    )
    started = time.perf_counter()
    result = trainer.train()
    runtime = result.metrics.get("train_runtime", time.perf_counter() - started)
    rows: list[dict[str, str]] = []

    def predict(split: str, examples: Sequence[Any]) -> dict[str, float]:
        ids = encode_texts(tokenizer, [ex.text for ex in examples], recipe.task.max_length, side)
        predicted = predict_labels(model, tokenizer, ids, labels, args.per_device_eval_batch_size)
        rows.extend(
            {"split": split, "text": ex.text, "gold": ex.label, "predicted": label}
            for ex, label in zip(examples, predicted, strict=True)
        )
        return classification_metrics([ex.label for ex in examples], predicted, labels)

    scores = predict("eval", data.eval)
    tested = {}
    if test:
        test_scores = predict("test", test)
        tested = flat_metrics({k: test_scores[k] for k in SCORES}, prefix="test_")
    return {
        "trainable_params": trainable,
        "total_params": total,
        "train_runtime": float(runtime),
        "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
        **flat_metrics({k: scores[k] for k in SCORES}),
        **tested,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "num_train_epochs": float(args.num_train_epochs),
        "quantization": recipe.model.quantization,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "predictions": rows,
    }


PREDICTIONS_COLUMNS = ("split", "text", "gold", "predicted")


def write_head_predictions(run_dir: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write the head's label for each scored text to ``run_dir/predictions.csv`` (columns `split`, `text`,
    `gold`, `predicted`), so that the run can be paired with others on the same texts
    (``benchmarks.heldout --head``). Returns the file's path."""
    import csv

    path = run_dir / PREDICTIONS_FILE
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=PREDICTIONS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_head_predictions(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """The rows of a head run's ``predictions.csv`` per split (see `write_head_predictions`).

    Raises:
        `FileNotFoundError`: When the run has no predictions file (runs of earlier versions wrote none).
        `ValueError`: When the file lacks one of the columns.
    """
    import csv

    path = run_dir / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no predictions file; rerun the classification-head row with `trainer-ext compare`"
        )
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        missing = set(PREDICTIONS_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: columns {sorted(missing)} are missing; it is not a head run's file")
        splits: dict[str, list[dict[str, str]]] = {}
        for row in reader:
            splits.setdefault(row["split"], []).append(row)
    return splits


def seed_row(metrics: dict[str, Any], run_dir: str, seed: int, reused: bool = False) -> RowResult:
    """The study's run of the classification-head row for one seed, from what `train_head` returned."""
    quantization = metrics["quantization"]
    weights = "unquantized weights" if quantization == "none" else f"{quantization} weights"
    return RowResult(
        "classification-head",
        trainable_params=int(metrics["trainable_params"]),
        train_runtime=round(float(metrics["train_runtime"]), 1),
        train_samples_per_second=round(float(metrics["train_samples_per_second"]), 3),
        peak_memory_mb=metrics["peak_memory_mb"],
        constrained=short_scores({k: metrics[f"eval_{k}"] for k in SCORES}),
        test=short_scores({k: metrics[f"test_{k}"] for k in SCORES}) if "test_accuracy" in metrics else None,
        epochs=float(metrics["num_train_epochs"]),
        run_dir=run_dir,
        seed=seed,
        note=f"{weights}, optimizer {metrics['optimizer']}; lora-all's adapters and a new linear head on the "
        "last token, trained with the model's cross-entropy; a fixed label set, so no transfer"
        + ("; reused a finished run (trained by an earlier study)" if reused else ""),
    )
