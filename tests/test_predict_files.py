"""`trainer-ext predict` on real files: rows streamed to disk, an interrupted run resumed, empty rows
skipped and counted, blank stdin lines reported, long texts marked as truncated."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_ext.cli import predict
from trainer_ext.inference.classifier import Classifier
from trainer_ext.tasks import LabelTask
from trainer_ext.training.tokenization import cut_message

REPO = Path(__file__).resolve().parent.parent
LABELS = ["sport", "politics"]


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> str:
    """A tiny base model: with --labels, predict classifies zero-shot (no training needed)."""
    return str(tiny_model_dir("llama"))


def _input(path: Path, n: int, empty: tuple[int, ...] = ()) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for row in range(1, n + 1):
            writer.writerow([row, "" if row in empty else f"headline number {row} about the match"])
    return path


def _argv(base: str, *extra: str) -> list[str]:
    return [
        "--model",
        base,
        "--labels",
        ", ".join(LABELS),
        "--quantization",
        "none",
        "--batch_size",
        "4",
        *extra,
    ]


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_empty_rows_are_skipped_counted_and_named(base, tmp_path, caplog):
    source = _input(tmp_path / "in.csv", 12, empty=(3, 9))
    out = tmp_path / "out.csv"
    with caplog.at_level(logging.WARNING):
        assert predict.main(_argv(base, "--input", str(source), "--output", str(out))) == 0
    rows = _rows(out)
    assert rows[0][:4] == ["row", "text", "predicted", "truncated"] and len(rows) == 1 + 10
    assert [row[0] for row in rows[1:]] == [str(r) for r in range(1, 13) if r not in (3, 9)]
    assert "row 3 (line 4)" in caplog.text and "row 9 (line 10)" in caplog.text
    assert "Skipped 2 bad row(s)" in caplog.text
    assert (
        predict.main(
            _argv(base, "--input", str(source), "--output", str(tmp_path / "o2.csv"), "--on_bad_row", "error")
        )
        == 2
    )


def test_an_interrupted_run_keeps_its_rows_and_resumes_to_the_same_output(base, tmp_path, monkeypatch):
    source = _input(tmp_path / "in.csv", 18)
    whole = tmp_path / "whole.csv"
    assert predict.main(_argv(base, "--input", str(source), "--output", str(whole))) == 0

    calls = {"n": 0}
    real_predict = Classifier.predict

    def crash_on_third_batch(self, texts, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the machine stops mid-file
        return real_predict(self, texts, **kwargs)

    broken = tmp_path / "broken.csv"
    monkeypatch.setattr(Classifier, "predict", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        predict.main(_argv(base, "--input", str(source), "--output", str(broken)))
    assert len(_rows(broken)) == 1 + 8  # two batches of 4 were on disk before the crash
    monkeypatch.setattr(Classifier, "predict", real_predict)
    assert (
        predict.main(_argv(base, "--input", str(source), "--output", str(broken))) == 2
    )  # no silent overwrite
    assert predict.main(_argv(base, "--input", str(source), "--output", str(broken), "--resume")) == 0
    assert _rows(broken) == _rows(whole)
    other = _input(tmp_path / "other.csv", 18, empty=(1,))
    assert predict.main(_argv(base, "--input", str(other), "--output", str(broken), "--resume")) == 2


def test_blank_stdin_lines_are_reported(base):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "trainer_ext.cli.predict", *_argv(base)],
        input="first headline\n\nsecond headline\n   \n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Skipped 2 empty line(s) of standard input: line(s) 2, 4" in done.stderr
    rows = list(csv.reader(done.stdout.splitlines()))
    assert [row[:2] for row in rows[1:]] == [["1", "first headline"], ["3", "second headline"]]


def test_long_texts_are_marked_and_the_side_kept_is_chosen(base, tmp_path, caplog):
    long_text = "start of a very long headline " + "filler words " * 80 + "the end that matters"
    out = tmp_path / "t.csv"
    with caplog.at_level(logging.WARNING):
        code = predict.main(_argv(base, "--max_length", "48", "--output", str(out), "short one", long_text))
    assert code == 0
    rows = _rows(out)
    assert [row[3] for row in rows[1:]] == ["0", "1"]
    assert (
        "1 text(s) were longer than max_length=48 tokens and were shortened (the start kept): row(s) 2"
        in caplog.text
    )
    clf = Classifier.from_base(base, LabelTask(LABELS), quantization="none", max_length=48)
    ((right, cut_right),) = clf.encode([long_text])
    clf.truncation_side = "left"
    ((left, cut_left),) = clf.encode([long_text])
    assert cut_right and cut_left and len(right) == len(left) <= 48 and right != left
    assert cut_message(list(range(10)), 4, "both") == [0, 1, 8, 9]


def test_labels_too_long_for_max_length_fail_before_anything_is_written(base, tmp_path, capsys):
    out = tmp_path / "t.csv"
    out.write_text("kept\n", encoding="utf-8")
    labels = ", ".join(f"topic number {i} about markets and politics and the weather" for i in range(6))
    argv = ["--model", base, "--labels", labels, "--quantization", "none", "--max_length", "48"]
    assert predict.main([*argv, "--output", str(out), "--overwrite", "shares fall"]) == 2
    assert "an instruction prompt names every label" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "kept\n", "the file it would have replaced is untouched"
    assert predict.main([*argv, "shares fall"]) == 2
    assert capsys.readouterr().out == "", "no CSV header on standard output either"


def test_an_unknown_dtype_names_the_values_to_give(capsys):
    """The choices listed are those a user can type: no ``None`` (the option left out)."""
    assert predict.main(["--model", "any-run", "--dtype", "bogus", "a text"]) == 2
    err = capsys.readouterr().err
    assert "--dtype: unknown value 'bogus'; choose one of auto, float32" in err and "None" not in err
