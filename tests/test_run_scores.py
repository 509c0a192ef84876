"""A finished run's scores kept beside it: read back for the very same run and inputs, measured again
otherwise, and deleted when the run is trained again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer_ext.data import Example
from trainer_ext.study import run_scores
from trainer_ext.study.run_scores import SCORES_FILE, load_scores, save_scores, score_run, scores_key
from trainer_ext.study.runner import train_row
from trainer_ext.study.scoring import TransferResult
from trainer_ext.study.settings import StudySettings

TEST = [Example("you are awful", "offensive"), Example("nice day", "neutral")]
HEADLINES = [Example("Shares fall", "business"), Example("Cup final tonight", "sport")]
TOPICS = ["business", "sport"]
ARGV = ["--method", "lora-all", "--seed", "42"]


def _key(settings=None, argv=ARGV, test=TEST, headlines=HEADLINES, topics=TOPICS):
    return scores_key(argv, settings or StudySettings(), test, headlines, topics)


def test_the_key_changes_with_everything_the_scores_depend_on():
    base = _key()
    assert _key() == base and json.loads(json.dumps(base)) == base  # stable, and JSON-ready
    changed = [
        _key(argv=[*ARGV[:-1], "1"]),
        _key(test=TEST[:1]),
        _key(test=[Example("you are awful", "hate"), TEST[1]]),  # same text, another gold label
        _key(headlines=HEADLINES[::-1]),
        _key(topics=["business", "sport", "tech"]),
        _key(settings=StudySettings(transfer_prompts=["instruction"])),
        _key(settings=StudySettings(transfer_decoding="both")),
    ]
    assert all(key != base for key in changed)
    assert base["prompts"]["instruction"]  # the prompt's text, not only its name


def test_kept_scores_round_trip_and_are_refused_for_another_key(tmp_path):
    transfer = [TransferResult("lora-all", "instruction", {"accuracy": 0.5}, {"accuracy": 0.6}, seed=42)]
    save_scores(tmp_path, _key(), {"accuracy": 0.75}, transfer)
    assert load_scores(tmp_path, _key()) == ({"accuracy": 0.75}, transfer)
    assert load_scores(tmp_path, _key(test=TEST[:1])) is None
    assert load_scores(tmp_path / "elsewhere", _key()) is None


def test_an_unreadable_scores_file_is_measured_again_not_raised(tmp_path, caplog):
    (tmp_path / SCORES_FILE).write_text("{not json", encoding="utf-8")
    assert load_scores(tmp_path, _key()) is None
    assert "Cannot read" in caplog.text and SCORES_FILE in caplog.text


class _Counted:
    """Stands for the model load and the two scoring passes, counting the calls."""

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


def test_score_run_measures_once_then_reads_back_until_an_input_changes(tmp_path, monkeypatch):
    counted = _Counted(monkeypatch)
    settings = StudySettings()
    first = score_run(settings, "lora-all", 42, tmp_path, ARGV, TEST, HEADLINES, TOPICS)
    assert counted.loads == 1 and first[0] == {"accuracy": 0.5} and first[1][0].seed == 42
    again = score_run(settings, "lora-all", 42, tmp_path, ARGV, TEST, HEADLINES, TOPICS)
    assert counted.loads == 1 and again == first  # read back: no model load
    other = score_run(settings, "lora-all", 42, tmp_path, ARGV, TEST[:1], HEADLINES, TOPICS)
    assert counted.loads == 2 and other[0] == {"accuracy": 0.25}  # another test set: measured again
    kept = json.loads((tmp_path / SCORES_FILE).read_text(encoding="utf-8"))
    assert kept["test"] == {"accuracy": 0.25}  # and the file now holds the new scores


def test_training_a_run_again_deletes_its_kept_scores(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_scores(run_dir, _key(), {"accuracy": 0.9}, [])
    result = train_row(StudySettings(), "lora-all", ["--no_such_flag"], run_dir, tmp_path / "logs", 42)
    assert result.status == "failed"  # the bad flag fails the run, after the old scores are gone
    assert not (run_dir / SCORES_FILE).exists()


@pytest.mark.parametrize("field", ["transfer", "test"])
def test_a_scores_file_missing_a_part_is_measured_again(tmp_path, field):
    save_scores(tmp_path, _key(), {"accuracy": 0.9}, [])
    record = json.loads((tmp_path / SCORES_FILE).read_text(encoding="utf-8"))
    del record[field]
    Path(tmp_path / SCORES_FILE).write_text(json.dumps(record), encoding="utf-8")
    assert load_scores(tmp_path, _key()) is None
