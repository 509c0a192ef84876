"""Imbalanced data: class-weighted loss, balanced sampler, stratified dev split, best checkpoint and early
stopping on generated-label metrics, decision tuning, and what the run reports."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hub_server import fake_hub_fixture  # noqa: F401  (provides the `fake_hub` fixture)
from safetensors.torch import load_file

from trainer_ext.data import Example
from trainer_ext.data.splits import split_dev
from trainer_ext.hub import download_model_dir, push_run
from trainer_ext.inference.classifier import Classifier
from trainer_ext.inference.decision import apply_decision_bias, fit_decision_bias
from trainer_ext.runs.info import RunInfo
from trainer_ext.tasks import LabelTask
from trainer_ext.training.collator import LabelCollator
from trainer_ext.training.pipeline import prepare_data, run
from trainer_ext.training.recipe import parse_recipe
from trainer_ext.training.trainer import LabelDataset, LabelTrainer, LabelTrainingArguments, completion_loss
from trainer_ext.training.weights import WeightsError, class_weights

REPO = Path(__file__).resolve().parent.parent
TASK = LabelTask(["rare", "common"])
WORDS = {"rare": "storm", "common": "sunshine"}


def _examples(n_rare: int, n_common: int) -> list[Example]:
    out = [Example(f"today {WORDS['rare']} number {i}", "rare", f"toy:{i}") for i in range(n_rare)]
    out += [
        Example(f"today {WORDS['common']} number {i}", "common", f"toy:{n_rare + i}") for i in range(n_common)
    ]
    return out


def test_weighted_loss_equals_a_hand_computation_also_accumulated(tiny_model):
    model, tokenizer = tiny_model("llama")
    examples = _examples(1, 2)
    weights = class_weights(examples, TASK.labels, "balanced")  # rare 1.5, common 0.75 (mean 1)
    assert weights == pytest.approx({"rare": 1.5, "common": 0.75})
    dataset = LabelDataset(examples, tokenizer, TASK, 64, class_weights=weights)
    batch = LabelCollator(tokenizer)([dataset[i] for i in range(3)])
    assert batch["sample_weight"].tolist() == pytest.approx([1.5, 0.75, 0.75])
    with torch.no_grad():
        loss, _ = completion_loss(model, batch)
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits  # (B, T, V)
    total, count = 0.0, 0
    for b in range(3):
        for t in range(batch["labels"].shape[1] - 1):
            target = int(batch["labels"][b, t + 1])
            if target != -100:
                total += (
                    float(batch["sample_weight"][b])
                    * F.cross_entropy(logits[b, t].float(), torch.tensor(target)).item()
                )
                count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    # Accumulated over two micro-batches (or split over two processes), with the Trainer's global token count.
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        first, _ = completion_loss(model, {k: v[:2] for k, v in batch.items()}, tokens)
        second, _ = completion_loss(model, {k: v[2:] for k, v in batch.items()}, tokens)
    assert (first + second).item() == pytest.approx(loss.item(), rel=1e-5)


def test_class_weight_mappings_are_checked():
    examples = _examples(2, 6)
    assert class_weights(examples, TASK.labels, "none") is None
    assert class_weights(examples, TASK.labels, '{"rare": 3, "common": 1}') == pytest.approx(
        {"rare": 2.0, "common": 2 / 3}
    )
    with pytest.raises(
        WeightsError, match=r"\['other'\] are not labels of the task and \['common'\] have no weight"
    ):
        class_weights(examples, TASK.labels, {"rare": 1, "other": 2})
    with pytest.raises(WeightsError, match="must be a positive number"):
        class_weights(examples, TASK.labels, {"rare": 0, "common": 1})


def test_the_balanced_sampler_draws_classes_equally(tiny_model, tmp_path):
    model, tokenizer = tiny_model("llama")
    args = LabelTrainingArguments(output_dir=str(tmp_path), train_sampling="balanced", use_cpu=True, seed=3)
    dataset = LabelDataset(_examples(10, 90), tokenizer, TASK, 64)
    trainer = LabelTrainer(
        model=model, args=args, task=TASK, processing_class=tokenizer, train_dataset=dataset
    )
    sampler = trainer._get_train_sampler()
    drawn = Counter(dataset.examples[i].label for _ in range(20) for i in sampler)  # 20 epochs
    assert sum(drawn.values()) == 20 * 100
    assert 0.45 < drawn["rare"] / 2000 < 0.55  # 10% of the data, half of the draws
    with pytest.raises(ValueError, match="use one of them"):
        LabelTrainingArguments(output_dir=str(tmp_path), train_sampling="balanced", class_weights="balanced")


def test_the_dev_split_is_stratified_seeded_and_disjoint():
    examples = _examples(10, 90)
    train, dev = split_dev(examples, 0.2, seed=7)
    assert (train, dev) == split_dev(examples, 0.2, seed=7)
    assert len(dev) == 20 and Counter(e.label for e in dev) == {"rare": 2, "common": 18}
    assert not {e.source for e in train} & {e.source for e in dev}


def _csv(path: Path, n_rare: int, n_common: int) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([e.text, e.label] for e in _examples(n_rare, n_common))
    return str(path)


def _recipe(model_dir: Path, tmp_path: Path, *extra: str):
    train = _csv(tmp_path / "train.csv", 12, 36)
    test = _csv(tmp_path / "test.csv", 4, 12)
    return parse_recipe([
        "--model_name_or_path", str(model_dir), "--quantization", "none", "--train_file", train,
        "--eval_file", test, "--validation_split", "0.25", "--output_dir", str(tmp_path / "run"),
        "--per_device_train_batch_size", "6", "--optim", "adamw_torch", "--bf16", "false",
        "--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true",
        "--metric_for_best_model", "macro_f1", "--disable_tqdm", "true", "--report_to", "none", *extra,
    ])  # fmt: skip


def _dev_history(run_dir: Path) -> dict[int, float]:
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return {
        entry["step"]: entry["eval_macro_f1"] for entry in state["log_history"] if "eval_macro_f1" in entry
    }


def test_best_checkpoint_on_dev_macro_f1_is_the_saved_adapter(tiny_model_dir, tmp_path):
    recipe = _recipe(tiny_model_dir("llama"), tmp_path, "--num_train_epochs", "4", "--learning_rate", "3e-3")
    data = prepare_data(recipe)
    assert len(data.dev) == 12 and data.report.counts["dev"] == {"rare": 3, "common": 9}
    metrics = run(recipe, data)
    out = tmp_path / "run"
    history = _dev_history(out)
    best = RunInfo.load(out).notes["best_checkpoint"]
    assert best["step"] == max(history, key=lambda step: (history[step], -step))
    assert "macro_f1 on the dev set" in best["why"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    chosen = load_file(str(out / f"checkpoint-{best['step']}" / "adapter_model.safetensors"))
    assert saved.keys() == chosen.keys() and all(torch.equal(saved[k], chosen[k]) for k in saved)
    assert {"dev_macro_f1", "eval_macro_f1", "rarest_class", "eval_rarest_class_recall"} <= set(metrics)
    assert metrics["rarest_class"] == "rare" and metrics["dev_macro_f1"] == pytest.approx(
        history[best["step"]]
    )


def test_early_stopping_stops(tiny_model_dir, tmp_path):
    # With a learning rate of 0 the dev metric never improves: training stops after the patience.
    recipe = _recipe(
        tiny_model_dir("llama"), tmp_path, "--num_train_epochs", "6", "--learning_rate", "0",
        "--early_stopping_patience", "1", "--warmup_steps", "0",
    )  # fmt: skip
    run(recipe)
    best = RunInfo.load(tmp_path / "run").notes["best_checkpoint"]
    assert best["stopped_early"] and len(_dev_history(tmp_path / "run")) == 2, (
        best,
        _dev_history(tmp_path / "run"),
    )


def test_decision_bias_moves_the_argmax_as_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    shifted = apply_decision_bias(probs, ["a", "b"], {"b": 0.5})
    by_hand = torch.softmax(probs.log() + torch.tensor([0.0, 0.5]), dim=-1)
    assert torch.allclose(shifted, by_hand) and shifted.argmax(-1).tolist() == [0, 1, 1]
    gold = ["a", "b", "b"]
    bias = fit_decision_bias(probs, gold, ["a", "b"])
    assert apply_decision_bias(probs, ["a", "b"], bias).argmax(-1).tolist() == [0, 1, 1]


def test_decision_bias_survives_save_push_and_reload(tiny_model_dir, tmp_path, fake_hub):
    recipe = _recipe(tiny_model_dir("llama"), tmp_path, "--max_steps", "2", "--tune_decision_bias", "true")
    run(recipe)
    out = tmp_path / "run"
    bias = LabelTask.load(out).decision_bias
    assert set(bias) == {"rare", "common"} and bias["common"] == 0.0  # the first label is the reference
    local = Classifier.from_pretrained(out)
    token = fake_hub.add_user("alice")
    push_run(out, "alice/imbalanced", token=token)
    pulled = Classifier.from_pretrained(download_model_dir("alice/imbalanced", cache_dir=tmp_path / "cache"))
    assert pulled.task.decision_bias == local.task.decision_bias == bias
    texts = ["today storm number 99", "today sunshine number 99"]
    raw = Classifier(
        local.model, local.tokenizer, LabelTask(local.task.labels), local.base_model, autocast=local.autocast
    )
    expected = apply_decision_bias(
        torch.tensor([[p.probs[label] for label in local.task.labels] for p in raw.predict(texts)]),
        local.task.labels,
        bias,
    ).argmax(-1)
    assert [p.label for p in pulled.predict(texts)] == [local.task.labels[i] for i in expected.tolist()]


def test_two_processes_agree_on_the_best_checkpoint(tiny_model_dir, tmp_path):
    recipe_args = [
        "--model_name_or_path", str(tiny_model_dir("gpt2")), "--quantization", "none",
        "--train_file", _csv(tmp_path / "train.csv", 12, 36),
        "--eval_file", _csv(tmp_path / "test.csv", 4, 12),
        "--validation_split", "0.25", "--output_dir", str(tmp_path / "ddp"),
        "--per_device_train_batch_size", "3", "--optim", "adamw_torch", "--num_train_epochs", "3",
        "--learning_rate", "3e-3", "--class_weights", "balanced",
        "--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true",
        "--metric_for_best_model", "macro_f1", "--disable_tqdm", "true", "--report_to", "none",
    ]  # fmt: skip
    config = REPO / "trainer_ext" / "configs" / "accelerate" / "cpu_ddp2.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", "0", "-m", "trainer_ext.cli.train", *recipe_args]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "ddp"
    info = RunInfo.load(out)
    history = _dev_history(out)
    assert info.notes["best_checkpoint"]["step"] == max(history, key=lambda step: (history[step], -step))
    assert info.notes["class_weights"] == pytest.approx({"rare": 2.0, "common": 2 / 3})
    saved = load_file(str(out / "adapter_model.safetensors"))
    chosen = load_file(
        str(out / f"checkpoint-{info.notes['best_checkpoint']['step']}" / "adapter_model.safetensors")
    )
    assert all(torch.equal(saved[k], chosen[k]) for k in saved)
