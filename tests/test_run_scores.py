"""A finished run's scores kept beside it: read back for the very same trained files and inputs, measured
again otherwise, and deleted (with the run's stamp) when the study trains the run again."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from trainer_ext.data import Example
from trainer_ext.study import run_scores
from trainer_ext.study.run_scores import SCORES_FILE, load_scores, save_scores, score_run, scores_key
from trainer_ext.study.runner import COMMAND_FILE, train_row
from trainer_ext.study.scoring import TransferResult
from trainer_ext.study.settings import StudySettings

TEST = [Example("you are awful", "offensive"), Example("nice day", "neutral")]
HEADLINES = [Example("Shares fall", "business"), Example("Cup final tonight", "sport")]
TOPICS = ["business", "sport"]
ARGV = ["--method", "lora-all", "--seed", "42"]


@pytest.fixture
def run_dir(tmp_path):
    """A finished run's files, as far as the fingerprint reads them."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"train_runtime": 12.5}', encoding="utf-8")
    (run / "adapter_model.safetensors").write_bytes(b"weights")
    return run


def _key(run, settings=None, argv=ARGV, test=TEST, headlines=HEADLINES, topics=TOPICS):
    return scores_key(run, argv, settings or StudySettings(), test, headlines, topics)


def test_the_key_changes_with_everything_the_scores_depend_on(run_dir, monkeypatch):
    base = _key(run_dir)
    assert _key(run_dir) == base and json.loads(json.dumps(base)) == base  # stable, and JSON-ready
    changed = [
        _key(run_dir, argv=[*ARGV[:-1], "1"]),
        _key(run_dir, test=TEST[:1]),
        _key(run_dir, test=[Example("you are awful", "hate"), TEST[1]]),  # same text, another gold label
        _key(run_dir, headlines=HEADLINES[::-1]),
        _key(run_dir, topics=["business", "sport", "tech"]),
        _key(run_dir, settings=StudySettings(transfer_prompts=["instruction"])),
        _key(run_dir, settings=StudySettings(transfer_decoding="both")),
        _key(run_dir, settings=StudySettings(batch_size=3)),
    ]
    assert all(key != base for key in changed)
    # The same prompt name with another text (a changed template) is another key.
    monkeypatch.setattr(run_scores, "transfer_template", lambda prompt: f"{prompt}: {{text}} =>")
    assert _key(run_dir) != base


def test_the_key_changes_when_the_run_is_trained_again(run_dir):
    base = _key(run_dir)
    (run_dir / "metrics.json").write_text('{"train_runtime": 12.6}', encoding="utf-8")
    retrained = _key(run_dir)
    assert retrained != base
    weights = run_dir / "adapter_model.safetensors"
    weights.write_bytes(b"other!!")  # the same size: told apart by the modification time
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert _key(run_dir) != retrained


def test_kept_scores_round_trip_and_are_refused_for_another_key(run_dir, tmp_path):
    transfer = [TransferResult("lora-all", "instruction", {"accuracy": 0.5}, {"accuracy": 0.6}, seed=42)]
    save_scores(run_dir, _key(run_dir), {"accuracy": 0.75}, transfer)
    assert load_scores(run_dir, _key(run_dir)) == ({"accuracy": 0.75}, transfer)
    assert load_scores(run_dir, _key(run_dir, test=TEST[:1])) is None
    assert load_scores(tmp_path / "elsewhere", _key(run_dir)) is None
    assert not list(run_dir.glob("*.partial"))


@pytest.mark.parametrize("content", ["{not json", "[]", "null", '{"key": 1}'])
def test_an_unreadable_scores_file_is_measured_again_not_raised(run_dir, caplog, content):
    (run_dir / SCORES_FILE).write_text(content, encoding="utf-8")
    assert load_scores(run_dir, _key(run_dir)) is None
    if content != '{"key": 1}':  # valid, only for another key
        assert "Cannot read" in caplog.text and SCORES_FILE in caplog.text


@pytest.mark.parametrize("part", ["transfer", "test"])
def test_a_scores_file_missing_a_part_is_measured_again(run_dir, part):
    save_scores(run_dir, _key(run_dir), {"accuracy": 0.9}, [])
    record = json.loads((run_dir / SCORES_FILE).read_text(encoding="utf-8"))
    del record[part]
    (run_dir / SCORES_FILE).write_text(json.dumps(record), encoding="utf-8")
    assert load_scores(run_dir, _key(run_dir)) is None


def test_scores_that_cannot_be_written_are_logged_not_raised(tmp_path, caplog):
    save_scores(tmp_path / "no-such-dir", {}, None, [])
    assert "Cannot keep the scores" in caplog.text


class _Counted:
    """Stands for the model load and the two scoring passes, counting the loads."""

    def __init__(self, monkeypatch):
        self.loads = 0
        from trainer_ext.inference.classifier import Classifier

        def load(run_dir):
            self.loads += 1
            return object()

        def tested(classifier, examples, batch_size, desc):
            return {"constrained": {"accuracy": len(examples) / 4}}

        def transferred(classifier, row, settings, headlines, topics, seed):
            return [TransferResult(row, "instruction", {"accuracy": 0.4}, {}, None, seed)]

        monkeypatch.setattr(Classifier, "from_pretrained", staticmethod(load))
        monkeypatch.setattr(run_scores, "score_test", tested)
        monkeypatch.setattr(run_scores, "transfer_scores", transferred)


def test_score_run_measures_once_then_reads_back_until_an_input_changes(run_dir, monkeypatch):
    counted = _Counted(monkeypatch)
    settings = StudySettings()
    first = score_run(settings, "lora-all", 42, run_dir, ARGV, TEST, HEADLINES, TOPICS)
    assert counted.loads == 1 and first[0] == {"accuracy": 0.5} and first[1][0].seed == 42
    again = score_run(settings, "lora-all", 42, run_dir, ARGV, TEST, HEADLINES, TOPICS)
    assert counted.loads == 1 and again == first  # read back: no model load
    other = score_run(settings, "lora-all", 42, run_dir, ARGV, TEST[:1], HEADLINES, TOPICS)
    assert counted.loads == 2 and other[0] == {"accuracy": 0.25}  # another test set: measured again
    kept = json.loads((run_dir / SCORES_FILE).read_text(encoding="utf-8"))
    assert kept["test"] == {"accuracy": 0.25}  # and the file now holds the new scores


def test_training_a_run_again_deletes_its_kept_scores_and_its_stamp_first(run_dir, tmp_path, monkeypatch):
    save_scores(run_dir, _key(run_dir), {"accuracy": 0.9}, [])
    (run_dir / COMMAND_FILE).write_text(json.dumps(ARGV), encoding="utf-8")
    seen = {}

    def train(command, **kwargs):  # the training subprocess, dying half-way
        seen["files"] = sorted(path.name for path in run_dir.iterdir())
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(subprocess, "run", train)
    result = train_row(StudySettings(), "lora-all", ARGV, run_dir, tmp_path / "logs", 42)
    assert result.status == "failed"
    assert seen["files"] == ["adapter_model.safetensors", "metrics.json"]  # gone before training started
    # The old metrics are left, but without the stamp --reuse can no longer take them for a finished run.
    reused = train_row(StudySettings(reuse=True), "lora-all", ARGV, run_dir, tmp_path / "logs", 42)
    assert reused.status == "failed" and "exit 1" in reused.note
