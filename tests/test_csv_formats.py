"""Every reader of user files detects the CSV delimiter and the encoding, or names the delimiter it used."""

from __future__ import annotations

import pytest

from space.csv_batch import read_table
from space.errors import InputError
from trainer_ext.data import DataError, load_examples

LABELS = ["neutral", "offensive"]


def _write(path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)


@pytest.mark.parametrize(
    ("delimiter", "rows"),
    [
        (",", 'text,label\nhave a nice day,neutral\n"shut up, already",offensive\n'),
        (";", "text;label\nhave a nice day;neutral\nshut up, already;offensive\n"),
        ("\t", "text\tlabel\nhave a nice day\tneutral\nshut up, already\toffensive\n"),
        ("|", "text|label\nhave a nice day|neutral\nshut up, already|offensive\n"),
    ],
)
def test_training_and_predict_files_of_any_delimiter(tmp_path, delimiter, rows):
    path = _write(tmp_path / "messages.csv", rows)
    examples = load_examples(path, labels=LABELS)
    assert [(e.text, e.label) for e in examples] == [
        ("have a nice day", "neutral"),
        ("shut up, already", "offensive"),
    ]
    unlabelled = load_examples(path, labels=None)  # predict --input
    assert [e.text for e in unlabelled] == ["have a nice day", "shut up, already"]


def test_a_european_spreadsheet_export(tmp_path):
    # Semicolons, decimal commas, a byte-order mark, Windows-1252 text.
    text = "\ufefftext;score;label\nCafé crème, très bien;4,5;neutral\nTais-toi, idiot;1,0;offensive\n"
    path = _write(tmp_path / "export.csv", text.lstrip("\ufeff"), "cp1252")
    examples = load_examples(path, labels=LABELS)
    assert [(e.text, e.label) for e in examples] == [
        ("Café crème, très bien", "neutral"),
        ("Tais-toi, idiot", "offensive"),
    ]
    bom = _write(tmp_path / "bom.csv", text, "utf-8")
    assert load_examples(bom, labels=LABELS)[0].text == "Café crème, très bien"


def test_a_cyrillic_windows_1251_file(tmp_path):
    path = _write(tmp_path / "ru.csv", "text;label\nхорошего дня;neutral\nзаткнись;offensive\n", "cp1251")
    assert [e.text for e in load_examples(path, labels=LABELS)] == ["хорошего дня", "заткнись"]


def test_a_file_in_no_known_encoding_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\n\x81\x98\x81\x98,neutral\n")  # undefined in both cp1252 and cp1251
    with pytest.raises(DataError, match=r"not UTF-8 \(byte 0x81 at line 2.*nor cp1252 / cp1251"):
        load_examples(str(path), labels=LABELS)


def test_a_one_column_header_holding_a_delimiter_is_never_read_as_is(tmp_path):
    # The header is semicolon-separated, the rows comma-separated: read with commas, the header would be
    # the one column "message;label" and the texts would carry the labels; read with semicolons, the rows
    # do not fit. Either way the user is told, with the delimiter named.
    path = _write(tmp_path / "mixed.csv", 'message;label\n"hello, world",x\n"bye, now",y\n')
    with pytest.raises(
        InputError, match="the header is the single column 'message;label', which holds a semicolon"
    ):
        read_table(path)
    with pytest.raises(DataError, match="mixed.csv: malformed CSV at line 2: ';' expected"):
        load_examples(path, text_column="message", labels=None)
    rows = _write(tmp_path / "rows.csv", "message;label\nhello, world\nbye, now\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\), expected 2 fields separated by the semicolon"):
        load_examples(rows, text_column="message", labels=["x"])


def test_a_missing_column_error_names_the_delimiter_rule(tmp_path):
    path = _write(tmp_path / "m.csv", "message;label\nhi;neutral\n")
    with pytest.raises(DataError, match="delimiter is detected among comma, semicolon, tab and pipe"):
        load_examples(path, labels=LABELS)


def test_a_row_with_a_stray_delimiter_names_it(tmp_path):
    path = _write(tmp_path / "s.csv", "text;label\nfine;neutral\nbad; row;offensive\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\).*semicolon delimiter, found 3.*quote fields"):
        load_examples(path, labels=LABELS)


def test_the_demo_reads_a_semicolon_file_as_two_columns(tmp_path):
    path = _write(tmp_path / "upload.csv", "text;label\nhave a nice day;neutral\nshut up already;offensive\n")
    table = read_table(path)
    assert list(table.columns) == ["text", "label"]
    assert list(table["text"]) == ["have a nice day", "shut up already"]
    cp1252 = _write(tmp_path / "export.csv", "text;label\nCafé, très bien;neutral\n", "cp1252")
    assert list(read_table(cp1252)["text"]) == ["Café, très bien"]


def test_the_demo_names_the_delimiter_when_a_row_does_not_fit(tmp_path):
    path = _write(tmp_path / "upload.csv", "text;label\nfine;neutral\nnot; fine;offensive\n")
    with pytest.raises(
        InputError, match="line 3 has 3 fields .*read with the semicolon delimiter.*contain a semicolon"
    ):
        read_table(path)


def test_blank_lines_are_not_records_and_are_counted_in_the_log(tmp_path, caplog):
    text = "text,label\nhave a nice day,neutral\n\n  \t\nshut up,offensive\n\n"
    path = _write(tmp_path / "messages.csv", text)
    with caplog.at_level("INFO", logger="trainer_ext.data.readers"):
        examples = load_examples(path, labels=LABELS)
    assert [e.text for e in examples] == ["have a nice day", "shut up"]
    assert "3 blank line(s) skipped" in caplog.text and "messages.csv" in caplog.text
