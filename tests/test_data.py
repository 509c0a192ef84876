"""Loading messages: formats, columns, label mapping, HTML entities, bad input, balanced samples, splits."""

from __future__ import annotations

import json
import logging
from collections import Counter

import datasets
import pandas as pd
import pytest
from transformers import HfArgumentParser

from trainer_ext.data import (
    DataError,
    DataSettings,
    Example,
    balanced_sample,
    load_examples,
    load_split,
)

LABELS = ["hate", "offensive", "neutral"]
DAVIDSON_CSV = (
    ",count,hate_speech,offensive_language,neither,class,tweet\n"
    '0,3,0,0,3,2,"!!! RT @user: a quote &#8220;here&#8221; &amp; there"\n'
    '1,3,0,3,0,1,"line one\nline two"\n'
    "2,3,2,1,0,0,third tweet\n"
)


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_csv_with_mapping_html_and_quoted_newlines(tmp_path):
    path = write(tmp_path, "labeled_data.csv", DAVIDSON_CSV)
    examples = load_examples(
        path, "tweet", "class", {0: "hate", 1: "offensive", 2: "neutral"}, decode_html=True, labels=LABELS
    )
    assert [e.label for e in examples] == ["neutral", "offensive", "hate"]
    assert examples[0].text == "!!! RT @user: a quote \u201chere\u201d & there"
    assert examples[1].text == "line one\nline two"
    assert [e.source for e in examples] == [
        "labeled_data.csv:row 1 (line 2)",
        "labeled_data.csv:row 2 (line 3)",
        "labeled_data.csv:row 3 (line 5)",
    ]
    raw = load_examples(path, "tweet", "class", '{"0": "hate", "1": "offensive", "2": "neutral"}')
    assert "&#8220;" in raw[0].text and raw[0].label == "neutral"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("data.jsonl", '{"text": "a", "label": "hate"}\n\n{"text": "b", "label": "neutral"}\n'),
        ("data.json", '[{"text": "a", "label": "hate"}, {"text": "b", "label": "neutral"}]'),
        ("data.json", '{"text": ["a", "b"], "label": ["hate", "neutral"]}'),
        ("data.tsv", "text\tlabel\na\thate\nb\tneutral\n"),
    ],
    ids=["jsonl", "json-records", "json-columns", "tsv"],
)
def test_other_file_formats(tmp_path, name, content):
    examples = load_examples(write(tmp_path, name, content), labels=LABELS)
    assert [(e.text, e.label) for e in examples] == [("a", "hate"), ("b", "neutral")]
    assert examples[0].source.startswith(name + ":")


def test_parquet_dataframe_and_dataset(tmp_path):
    frame = pd.DataFrame({"message": ["a &amp; b", "c"], "y": ["hate", "neutral"]})
    frame.to_parquet(tmp_path / "data.parquet")
    for source in (tmp_path / "data.parquet", frame, datasets.Dataset.from_pandas(frame)):
        examples = load_examples(source, "message", "y", decode_html=True, labels=LABELS)
        assert [(e.text, e.label) for e in examples] == [("a & b", "hate"), ("c", "neutral")]
        assert examples[1].source.endswith("row 1")


def test_dataset_class_labels_use_names_or_the_mapping(tmp_path):
    features = datasets.Features(
        {
            "tweet": datasets.Value("string"),
            "class": datasets.ClassLabel(names=["hate speech", "offensive", "neither"]),
        }
    )
    dataset = datasets.Dataset.from_dict({"tweet": ["x", "y"], "class": [0, 2]}, features=features)
    assert [e.label for e in load_examples(dataset, "tweet", "class")] == ["hate speech", "neither"]
    mapped = load_examples(dataset, "tweet", "class", {"0": "hate", "neither": "neutral"}, labels=LABELS)
    assert [e.label for e in mapped] == ["hate", "neutral"]
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert load_examples(str(tmp_path / "saved"), "tweet", "class")[1].label == "neither"
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved_dict"))
    assert len(load_examples(str(tmp_path / "saved_dict"), "tweet", "class")) == 2


def test_prediction_input_needs_no_label_column(tmp_path):
    examples = load_examples(write(tmp_path, "in.csv", "text\nhello\nworld\n"))
    assert examples == [
        Example("hello", None, "in.csv:row 1 (line 2)"),
        Example("world", None, "in.csv:row 2 (line 3)"),
    ]
    partial = load_examples(write(tmp_path, "p.csv", "text,label\nhello,\nworld,hate\n"))
    assert [e.label for e in partial] == [None, "hate"]


BAD_INPUTS = [
    # (file name, content, load_examples kwargs, message pattern)
    (
        "m.csv",
        "message,label\nhi,hate\n",
        {},
        r"m\.csv: missing column\(s\) \['text'\]; found \['message', 'label'\]",
    ),
    ("m.csv", "text,y\nhi,hate\n", {}, r"missing column\(s\) \['label'\]"),
    (
        "e.csv",
        "text,label\nfine,hate\n   ,hate\n",
        {},
        r"e\.csv, row 2 \(line 3\), column 'text': empty text",
    ),
    (
        "n.jsonl",
        '{"text": "ok", "label": "hate"}\n{"text": 42, "label": "hate"}\n',
        {},
        r"n\.jsonl, line 2, column 'text': text must be a string, got int",
    ),
    ("z.jsonl", '{"text": null, "label": "hate"}\n', {}, r"line 1, column 'text': missing text"),
    (
        "l.csv",
        "text,label\nhi,hate\nyo,spam\n",
        {},
        r"row 2 \(line 3\), column 'label': label 'spam' is not in the label set",
    ),
    ("c.csv", "text,label\nhi,Hate\n", {}, r"case-sensitive"),
    ("q.csv", "text,label\nhi,\n", {}, r"row 1 \(line 2\), column 'label': missing label"),
    (
        "k.csv",
        "text,label\nhi,7\n",
        {"label_mapping": {0: "hate"}},
        r"value '7' is not a key of label_mapping",
    ),
    (
        "w.csv",
        "text,label\nhi,hate\nsay, hi, there,hate\n",
        {},
        r"row 2 \(line 3\), expected 2 fields separated by the comma delimiter, found 4",
    ),
    ("b.csv", 'text,label\n"hi"x,hate\n', {}, r"malformed CSV at line 2"),
    ("d.csv", "text,text\nhi,hate\n", {}, r"more than once"),
    ("0.csv", "", {}, r"0\.csv: the file is empty"),
    (
        "u.csv",
        b"text,label\nok,hate\n\x81\x98,hate\n",  # undefined in UTF-8, cp1252 and cp1251
        {},
        r"u\.csv: not UTF-8 \(byte 0x81 at line 3.*nor cp1252 / cp1251",
    ),
    ("j.jsonl", '{"text": "a", "label": "hate"}\n{"text": \n', {}, r"j\.jsonl:line 2: invalid JSON"),
    ("r.json", '["just a string"]', {}, r"record 1 is a str, expected an object"),
    ("s.json", '{"text": ["a", "b"], "label": ["hate"]}', {}, r"different lengths"),
    ("x.xlsx", "whatever", {}, r"unsupported file type '\.xlsx'"),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "match"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_clear_error(tmp_path, name, content, kwargs, match):
    with pytest.raises(DataError, match=match):
        load_examples(write(tmp_path, name, content), labels=LABELS, **kwargs)


def test_missing_file_duplicate_labels_and_bad_sources(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load_examples(tmp_path / "nope.csv")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataError, match=r"folder\.csv: not a regular file"):
        load_examples(tmp_path / "folder.csv")
    with pytest.raises(DataError, match="Duplicate labels"):
        load_examples(write(tmp_path, "a.csv", "text,label\nhi,hate\n"), labels=["hate", "hate"])
    with pytest.raises(DataError, match="Unsupported data source"):
        load_examples(12345)
    with pytest.raises(
        DataError, match="Could not load the dataset 'no-such-owner/no-such-data'.*local files"
    ):
        load_examples("no-such-owner/no-such-data")
    frame = pd.DataFrame({"text": ["ok", float("nan")], "label": ["hate", "hate"]})
    with pytest.raises(DataError, match=r"DataFrame, row 1, column 'text': missing text"):
        load_examples(frame, labels=LABELS)


def test_skip_mode_logs_every_skipped_row(tmp_path, caplog):
    content = "text,label\ngood,hate\n,hate\nbad,spam\nalso good,neutral\nx,y,z\n"
    path = write(tmp_path, "s.csv", content)
    with caplog.at_level(logging.WARNING, logger="trainer_ext.data"):
        examples = load_examples(path, labels=LABELS, on_bad_row="skip")
    assert [e.text for e in examples] == ["good", "also good"]
    messages = [record.getMessage() for record in caplog.records]
    assert any("row 2 (line 3)" in m and "empty text" in m for m in messages)
    assert any("row 3 (line 4)" in m and "'spam'" in m for m in messages)
    assert any("row 5 (line 6)" in m and "expected 2 fields" in m for m in messages)
    assert any("Skipped 3 bad row(s)" in m and "kept 2" in m for m in messages)


def _pool(counts: dict[str, int]) -> list[Example]:
    return [
        Example(f"{label} {i}", label, f"pool:{label}:{i}") for label, n in counts.items() for i in range(n)
    ]


@pytest.mark.parametrize("n", [3, 10, 100, 101])
def test_balanced_sample_counts_differ_by_at_most_one(n):
    sample = balanced_sample(_pool({"hate": 60, "offensive": 200, "neutral": 80}), n, seed=1)
    counts = Counter(e.label for e in sample)
    assert len(sample) == n == len(set(sample))
    assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == 3


def test_balanced_sample_is_seeded_and_fills_short_labels(caplog):
    pool = _pool({"hate": 10, "offensive": 200, "neutral": 80})
    assert balanced_sample(pool, 60, seed=5) == balanced_sample(pool, 60, seed=5)
    assert balanced_sample(pool, 60, seed=5) != balanced_sample(pool, 60, seed=6)
    with caplog.at_level(logging.WARNING, logger="trainer_ext.data"):
        sample = balanced_sample(pool, 90, seed=0)
    assert Counter(e.label for e in sample) == {"hate": 10, "offensive": 40, "neutral": 40}
    assert "too few examples" in caplog.text
    assert balanced_sample(pool, None, seed=0) == pool
    with pytest.raises(DataError, match="291 from 290"):
        balanced_sample(pool, 291, seed=0)
    with pytest.raises(DataError, match="needs a label"):
        balanced_sample([Example("x", None, "p:1")], 1, seed=0)


SEED_SPLIT = {"train_file": "seed_split/train.csv", "eval_file": "seed_split/val.csv", "decode_html": True}


def test_load_split_from_the_shared_seed_split(data_dir):
    settings = DataSettings(
        data_dir=str(data_dir), train_samples=90, eval_samples=30, sample_seed=0, **SEED_SPLIT
    )
    train, evaluation = load_split(settings, "train", LABELS), load_split(settings, "eval", LABELS)
    assert Counter(e.label for e in train) == {"hate": 30, "offensive": 30, "neutral": 30}
    assert len(evaluation) == 30 and all(e.source.startswith("val.csv:") for e in evaluation)
    assert not any("&#8220;" in e.text or "&amp;" in e.text for e in train)
    full = load_split(DataSettings(data_dir=str(data_dir), **SEED_SPLIT), "train", LABELS)
    assert len(full) == 1000 and any("\u201c" in e.text for e in full)


def test_load_split_holds_out_eval_from_a_single_file(tmp_path):
    rows = "".join(f"{i},{i % 3},tweet number {i}\n" for i in range(90))
    write(tmp_path, "all.csv", "id,class,tweet\n" + rows)
    settings = DataSettings(
        data_dir=str(tmp_path),
        train_file="all.csv",
        eval_file=None,
        hub_dataset=None,
        text_column="tweet",
        label_column="class",
        label_mapping={"0": "hate", "1": "offensive", "2": "neutral"},
        eval_samples=15,
    )
    evaluation = load_split(settings, "eval")
    train = load_split(settings, "train")
    assert len(evaluation) == 15 and len(train) == 75
    assert not {e.source for e in evaluation} & {e.source for e in train}
    settings.train_samples = 30
    assert load_split(settings, "eval") == evaluation  # the held-out set does not depend on train_samples
    assert Counter(e.label for e in load_split(settings, "train")) == {
        "hate": 10,
        "offensive": 10,
        "neutral": 10,
    }
    # Without eval_samples a tenth is held out (at least one per label), as --help says.
    settings.eval_samples, settings.train_samples = None, None
    assert len(load_split(settings, "eval")) == 9 and len(load_split(settings, "train")) == 81
    settings.eval_samples = 90
    with pytest.raises(DataError, match="Cannot hold 90 evaluation examples out of 90"):
        load_split(settings, "eval")


def test_load_split_reads_a_hub_style_dataset(tmp_path):
    features = datasets.Features(
        {"tweet": datasets.Value("string"), "class": datasets.ClassLabel(num_classes=3)}
    )
    rows = {"tweet": [f"tweet &amp; {i}" for i in range(30)], "class": [i % 3 for i in range(30)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        str(tmp_path / "hub")
    )
    settings = DataSettings(
        data_dir=str(tmp_path),
        hub_dataset=str(tmp_path / "hub"),
        decode_html=True,
        text_column="tweet",
        label_column="class",
        label_mapping={"0": "hate", "1": "offensive", "2": "neutral"},
        eval_samples=6,
    )
    train = load_split(settings, "train")
    assert len(train) == 24 and train[0].text.startswith("tweet & ")
    assert len(load_split(settings, "eval")) == 6
    # A dataset with a validation split of its own: no hold-out needed.
    splits = {name: datasets.Dataset.from_dict(rows, features=features) for name in ("train", "validation")}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hub2"))
    settings.hub_dataset, settings.eval_samples = str(tmp_path / "hub2"), None
    assert len(load_split(settings, "train")) == 30
    assert {e.source.split(":")[0] for e in load_split(settings, "eval")} == {
        f"{tmp_path / 'hub2'}[validation]"
    }


def test_load_split_uses_only_the_data_it_names(tmp_path):
    # No default data set leaks in: nothing named is an error, and a named file that is missing is an error
    # naming it, never a fall-back to another data set.
    with pytest.raises(DataError, match="No training data: set train_file"):
        load_split(DataSettings(), "train", LABELS)
    missing = DataSettings(data_dir=str(tmp_path), train_file="nope/train.csv")
    with pytest.raises(DataError, match=r"train_file '.*nope/train\.csv' does not exist"):
        load_split(missing, "train", LABELS)
    write(tmp_path, "train.csv", "text,label\na,hate\nb,neutral\n")
    with pytest.raises(DataError, match=r"eval_file '.*val\.csv' does not exist"):
        load_split(DataSettings(data_dir=str(tmp_path), train_file="train.csv", eval_file="val.csv"), "eval")
    with pytest.raises(DataError, match="Both train_file"):
        DataSettings(train_file="a.csv", hub_dataset="user/data")
    with pytest.raises(DataError, match="'train' or 'eval'"):
        load_split(missing, "test")
    assert DataSettings().hub_dataset is None and DataSettings().data_dir is None
    assert DataSettings(data_dir=str(tmp_path), train_file="train.csv").sources() == {
        "train_file": str((tmp_path / "train.csv").resolve())
    }


def test_data_settings_command_line():
    (settings,) = HfArgumentParser(DataSettings).parse_args_into_dataclasses(
        ["--label_mapping", json.dumps({0: "hate"}), "--train_samples", "10", "--decode_html"]
    )
    assert settings.label_mapping == {"0": "hate"} and settings.train_samples == 10 and settings.decode_html
    with pytest.raises(DataError, match="train_samples must be a positive"):
        DataSettings(train_samples=0)
    with pytest.raises(DataError, match="not valid JSON"):
        DataSettings(label_mapping="{0: hate}")
