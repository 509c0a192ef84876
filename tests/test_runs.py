"""A run directory as a user meets it: trained from a relative model path and a task of one's own, then
reloaded from elsewhere, reproducing its own predictions, and told clearly when its base model moved."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_ext.hub.cards import render_model_card
from trainer_ext.inference.classifier import Classifier
from trainer_ext.runs.info import RunDirError, RunInfo

REPO = Path(__file__).resolve().parent.parent
POSITIVE = ["what a lovely day", "great work, thank you", "I love this song", "such a kind neighbour"]
NEGATIVE = ["this is awful", "worst service ever", "I hate waiting", "a terrible, sad film"]


def _sentiment_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(3):
            writer.writerows([[f"{text} {i}", "positive"] for text in POSITIVE])
            writer.writerows([[f"{text} {i}", "negative"] for text in NEGATIVE])
    return path


@pytest.fixture(scope="module", params=["false", "true"], ids=["fp32", "bf16-autocast"])
def trained(request, tiny_model_dir, tmp_path_factory):
    """A run trained from the working directory `work/` with the relative model path `tiny-model`, on a
    sentiment CSV with no labels, eval file or data directory given (labels found, eval held out)."""
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(tiny_model_dir("llama"), work / "tiny-model")
    _sentiment_csv(work / "reviews.csv")
    command = [
        sys.executable, "-m", "trainer_ext.cli.train",
        "--model_name_or_path", "tiny-model", "--quantization", "none", "--method", "lora-all",
        "--train_file", "reviews.csv", "--output_dir", "run", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--optim", "adamw_torch", "--bf16", request.param,
        "--disable_tqdm", "true", "--report_to", "none",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, work / "run"


def test_the_run_records_what_it_read_and_an_absolute_base_model(trained):
    work, run = trained
    info = RunInfo.load(run)
    assert info.base_model == str((work / "tiny-model").resolve())
    assert info.task["labels"] == ["negative", "positive"]  # found in the training file, sorted
    sources = {source.split: source for source in info.sources}
    assert sources["train"].path == str((work / "reviews.csv").resolve()) and sources["eval"].held_out
    assert sources["train"].rows + sources["eval"].rows == 24
    assert info.data["hub_dataset"] is None and "hate" not in json.dumps(info.to_dict())
    card = render_model_card(run)
    assert card.data.base_model is None and card.data.datasets is None
    readme = (run / "README.md").read_text(encoding="utf-8")  # the run's own card, not PEFT's template
    assert "pipeline_tag: text-classification" in readme and "Model Card for Model ID" not in readme
    assert str(work) not in str(card) and "a local model (`tiny-model`)" in str(card)


def test_a_reloaded_run_reproduces_its_predictions(trained, monkeypatch, tmp_path):
    _, run = trained
    monkeypatch.chdir(tmp_path)  # another working directory
    with (run / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    clf = Classifier.from_pretrained(run)
    info = RunInfo.load(run)
    assert clf.autocast == info.autocast and str(next(clf.model.parameters()).dtype) == f"torch.{info.dtype}"
    predictions = clf.predict([row["text"] for row in rows], batch_size=16)
    for row, prediction in zip(rows, predictions, strict=True):
        assert prediction.label == row["predicted"]
        for label, probability in prediction.probs.items():
            assert abs(probability - float(row[f"prob_{label}"])) < 1e-6


def test_a_merged_adapter_predicts_what_the_unmerged_one_does(trained):
    """`merge_adapter` folds LoRA into the base weights: no adapter layers left, the same probabilities up to
    float rounding (the tiny Llama ties its embeddings, and `lora-all` adapts the input side: merged into the
    shared weight, it would move the output layer too); with quantized base weights it is refused."""
    from peft.tuners.lora import LoraLayer

    _, run = trained
    texts = ["what a lovely day", "worst service ever, I hate waiting", "such a kind neighbour"]
    unmerged = Classifier.from_pretrained(run, quantization="none", dtype="float32")
    merged = Classifier.from_pretrained(run, quantization="none", dtype="float32", merge_adapter=True)
    assert any(isinstance(m, LoraLayer) for m in unmerged.model.modules())
    assert not any(isinstance(m, LoraLayer) for m in merged.model.modules())
    for a, b in zip(unmerged.predict(texts), merged.predict(texts), strict=True):
        assert a.label == b.label
        assert a.probs == pytest.approx(b.probs, abs=1e-6)
    with pytest.raises(RunDirError, match="merge_adapter needs unquantized base weights.*'none'"):
        Classifier.from_pretrained(run, quantization="8bit", merge_adapter=True)


def test_loading_a_run_shows_no_warning_of_what_is_handled(trained):
    """PEFT's tied-embedding warning (the merge unties first) and transformers' deprecation that PEFT
    triggers are not shown on loading; other warnings still are."""
    import warnings

    _, run = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Classifier.from_pretrained(run, quantization="none", dtype="float32", merge_adapter=True)
        warnings.warn("a warning of the user's own", UserWarning, stacklevel=1)
    shown = [str(w.message) for w in caught]
    assert not [m for m in shown if "tie_word_embeddings" in m or "is_gradient_checkpointing" in m], shown
    assert "a warning of the user's own" in shown


def test_a_moved_base_model_is_named_and_can_be_pointed_to(trained, tmp_path):
    work, run = trained
    moved_run = tmp_path / "run"
    shutil.copytree(run, moved_run)
    info = RunInfo.load(moved_run)
    info.base_model = str(tmp_path / "gone" / "tiny-model")
    info.save(moved_run)
    with pytest.raises(
        RunDirError, match=r"base model directory '.*gone/tiny-model' does not exist.*base_model="
    ):
        Classifier.from_pretrained(moved_run)
    clf = Classifier.from_pretrained(moved_run, base_model=str(work / "tiny-model"))
    assert clf.predict(["what a lovely day"])[0].label in ("negative", "positive")


def test_a_run_saved_over_an_earlier_one_leaves_no_stale_weights(trained, tmp_path, caplog):
    """An adapter left by an earlier LoRA run in the same directory would be loaded instead of the new
    run's `norms` weights: saving removes it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer_ext.runs.directory import ADAPTER_FILES, TRAINED_WEIGHTS, save_run
    from trainer_ext.tasks import LabelTask

    work, run = trained
    reused = tmp_path / "run"
    shutil.copytree(run, reused)
    assert all((reused / name).is_file() for name in ADAPTER_FILES)
    model = AutoModelForCausalLM.from_pretrained(work / "tiny-model")
    for param in model.parameters():
        param.requires_grad_(param.ndim == 1)  # the `norms` method trains the 1-D weights
    info = RunInfo.load(reused)
    info.method = "norms"
    with caplog.at_level("WARNING", logger="trainer_ext.runs.directory"):
        tokenizer = AutoTokenizer.from_pretrained(work / "tiny-model")
        save_run(reused, model, tokenizer, LabelTask.load(reused), info)
    assert not any((reused / name).exists() for name in ADAPTER_FILES)
    assert (reused / TRAINED_WEIGHTS).is_file()
    assert "Removing adapter_model.safetensors" in caplog.text
    assert not hasattr(Classifier.from_pretrained(reused).model, "peft_config")


def test_a_run_in_bf16_warns_on_a_cpu_whose_bf16_is_slow(trained, monkeypatch, caplog):
    """Reloaded as evaluated, a run in bf16 (autocast or weights) computes in bf16; on a CPU without native
    bf16 or AVX-512 that is a slow fallback, and the warning says the faster way. A dtype asked for is
    what the caller chose: no warning."""
    import logging

    from trainer_ext.modeling import cpu_features

    _, run = trained
    monkeypatch.setattr(cpu_features, "cpu_bf16_is_slow", lambda: True)
    info = RunInfo.load(run)
    in_bf16 = "bfloat16" in (info.autocast, info.dtype)
    with caplog.at_level(logging.WARNING, logger="trainer_ext"):
        Classifier.from_pretrained(run, device="cpu")
    assert ("Float32 is faster here" in caplog.text) is in_bf16
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer_ext"):
        Classifier.from_pretrained(run, device="cpu", dtype="bfloat16")
    assert "Float32 is faster here" not in caplog.text


def test_the_avx2_layout_predicts_what_nn_linear_does(trained, monkeypatch):
    """On an AVX2 CPU a `Classifier` computes its LM head weight first and, unquantized, prepacks the other
    float32 layers; it predicts what plain `nn.Linear` layers do (up to float rounding; bit for bit under
    the run's bf16 autocast, where both layouts step aside). Quantized weights get the head only."""
    from trainer_ext.modeling import cpu_layout

    _, run = trained
    texts = ["what a lovely day", "worst service ever, I hate waiting", "such a kind neighbour"]
    monkeypatch.setattr(cpu_layout, "cpu_capability", lambda: "DEFAULT")  # not measured: left as it is
    plain = Classifier.from_pretrained(run, quantization="none", merge_adapter=True)
    monkeypatch.setattr(cpu_layout, "cpu_capability", lambda: "AVX2")
    laid = Classifier.from_pretrained(run, quantization="none", merge_adapter=True)
    quantized = Classifier.from_pretrained(run, quantization="8bit")
    assert not {cpu_layout.WeightFirstLinear, cpu_layout.PrepackedLinear} & {
        type(m) for m in plain.model.modules()
    }
    kinds = [type(m) for m in laid.model.modules()]
    assert cpu_layout.WeightFirstLinear in kinds
    assert (cpu_layout.PrepackedLinear in kinds) == cpu_layout._PACKING
    kinds = [type(m) for m in quantized.model.modules()]
    assert cpu_layout.WeightFirstLinear in kinds and cpu_layout.PrepackedLinear not in kinds
    for a, b in zip(plain.predict(texts), laid.predict(texts), strict=True):
        assert a.label == b.label
        if laid.autocast:
            assert a.probs == b.probs
        else:
            assert a.probs == pytest.approx(b.probs, abs=1e-5)
