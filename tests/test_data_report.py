"""The data report at the start of training: counts per label and split, labels a split lacks, duplicates
within and across splits (and dropping them), texts that will be shortened; in the log and in run.json."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trainer_ext.runs.info import RunInfo
from trainer_ext.training.pipeline import prepare_data, run
from trainer_ext.training.recipe import parse_recipe


def _csv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows), encoding="utf-8")
    return str(path)


TRAIN = [(f"sunny day {i}", "good") for i in range(8)] + [(f"rainy day {i}", "bad") for i in range(8)]
TRAIN += [("sunny day 0", "good"), ("Rainy  Day 1", "bad")]  # two repeats of earlier rows
EVAL = [("sunny day 3", "good"), ("rainy day 5", "bad"), ("a new text", "good"), ("another one", "bad")]


def _recipe(tmp_path: Path, *extra: str):
    return parse_recipe(
        [
            "--train_file", _csv(tmp_path / "train.csv", TRAIN),
            "--eval_file", _csv(tmp_path / "eval.csv", EVAL),
            "--labels", "good", "bad", "meh",
            "--output_dir", str(tmp_path / "run"), *extra,
        ]
    )  # fmt: skip


def test_the_report_counts_and_warns(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        data = prepare_data(_recipe(tmp_path))
    report = data.report
    assert report.counts == {
        "train": {"good": 9, "bad": 9, "meh": 0},
        "eval": {"good": 2, "bad": 2, "meh": 0},
    }
    assert report.missing_labels == {"train": ["meh"], "eval": ["meh"]}
    assert report.duplicates_within == {"train": 2, "eval": 0}
    assert report.duplicates_across == {"eval": 2}
    assert "Data train has no row of label(s) ['meh']: the model cannot learn them" in caplog.text
    assert "2 eval row(s) repeat a training text" in caplog.text and "drop_eval_duplicates" in caplog.text
    assert "fewer than 20 rows" in caplog.text


def test_duplicates_can_be_dropped_from_the_eval_set(tmp_path):
    data = prepare_data(_recipe(tmp_path, "--drop_eval_duplicates", "true"))
    assert [example.text for example in data.eval] == ["a new text", "another one"]
    assert data.report.dropped_duplicates == 2


def test_the_report_is_in_run_json_with_truncated_counts(tiny_model_dir, tmp_path):
    recipe = _recipe(
        tmp_path, "--model_name_or_path", str(tiny_model_dir("llama")), "--quantization", "none",
        "--max_steps", "1", "--optim", "adamw_torch", "--prompt_style", "raw", "--max_length", "8",
        "--report_to", "none",
    )  # fmt: skip
    run(recipe)
    report = RunInfo.load(tmp_path / "run").notes["data_report"]
    assert report["counts"]["train"] == {"good": 9, "bad": 9, "meh": 0}
    assert report["duplicates_across"] == {"eval": 2}
    assert report["truncated"]["train"] > 0  # max_length 8 shortens the messages


@pytest.mark.parametrize("share", ["0", "1.5"])
def test_validation_split_must_be_a_share(tmp_path, share):
    from trainer_ext.training.recipe import RecipeError

    with pytest.raises(RecipeError, match="validation_split must be between 0 and 1"):
        _recipe(tmp_path, "--validation_split", share)
