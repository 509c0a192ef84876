"""`trainer-ext compare --combine`: one study from sittings of their own seeds, and what it refuses."""

import json

import pytest

from trainer_ext.cli.compare import main
from trainer_ext.study.combine import combine_studies
from trainer_ext.study.report import write_report
from trainer_ext.study.runner import Study
from trainer_ext.study.scoring import RowResult, TransferResult, combine_seeds
from trainer_ext.study.settings import HEAD_ROW, StudyError, StudySettings


def _scores(accuracy: float) -> dict[str, float]:
    return {"accuracy": accuracy, "macro_f1": round(accuracy - 0.1, 4), "invalid_rate": 0.0}


def _run(name: str, seed: int, accuracy: float) -> RowResult:
    return RowResult(
        name,
        trainable_params=100,
        train_runtime=600.0 + seed,
        train_samples_per_second=2.0,
        peak_memory_mb=1000.0 + seed,
        constrained=_scores(accuracy),
        test=_scores(accuracy - 0.01),
        epochs=2.0,
        seed=seed,
    )


def _sitting(tmp_path, seed: int, accuracies: dict[str, float], tfidf: float | None = 0.75, **fields):
    """Write one sitting's report (trained rows of one seed, TF-IDF if given) and return its JSON path."""
    rows = ([] if tfidf is None else ["tfidf-logreg"]) + list(accuracies)
    settings = StudySettings(rows=rows, seeds=[seed], output_dir=f"runs/seed{seed}").to_dict()
    study = Study(
        settings=settings,
        rows=[combine_seeds(name, [_run(name, seed, acc)]) for name, acc in accuracies.items()],
        transfer=[
            TransferResult("base", "instruction", _scores(0.24), _scores(0.5)),
            TransferResult("lora-all", "instruction", _scores(0.5 + seed / 100), _scores(0.55), seed=seed),
        ],
        transfer_labels=["business", "sport", "tech"],
        transfer_samples=150,
        eval_samples=200,
        test_samples=900,
        train_samples=1000,
        info={"model": "m", "quantization": "8bit", "labels": ["hate", "offensive", "neutral"],
              "date": "2026-11-30", "cpu": f"CPU {seed}", "wall_seconds": 3000.0 + seed,
              "versions": {"torch": "2.13.0"}},
    )  # fmt: skip
    if tfidf is not None:
        study.rows.insert(0, RowResult("tfidf-logreg", trainable_params=9, constrained=_scores(tfidf)))
    for key, value in fields.items():
        setattr(study, key, value)
    out = tmp_path / f"seed{seed}"
    return write_report(study, out, f"trainer-ext compare --seeds {seed}")["json"]


def test_sittings_combine_into_one_study_with_every_seed(tmp_path, capsys):
    first = _sitting(tmp_path, 42, {"lora-all": 0.80, HEAD_ROW: 0.79})
    second = _sitting(tmp_path, 1, {HEAD_ROW: 0.77, "lora-all": 0.84}, tfidf=None)  # no TF-IDF again
    out = tmp_path / "both"
    assert main(["--combine", str(first), str(second), "--output_dir", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["settings"]["seeds"] == [42, 1]
    assert [row["name"] for row in data["rows"]] == ["tfidf-logreg", "lora-all", HEAD_ROW]  # table order
    lora = data["rows"][1]
    assert [run["seed"] for run in lora["per_seed"]] == [42, 1]
    assert lora["constrained"]["accuracy"] == 0.82 and lora["std"]["constrained"]["accuracy"] == 0.0283
    assert lora["test"]["accuracy"] == 0.81 and lora["train_runtime"] == 621.5
    assert lora["peak_memory_mb"] == 1042.0
    assert data["rows"][0]["constrained"]["accuracy"] == 0.75  # the one sitting that has it
    assert [(t["model"], t["seed"]) for t in data["transfer"]] == [("base", None), ("lora-all", 42),
                                                                   ("lora-all", 1)]  # fmt: skip
    assert [s["seeds"] for s in data["info"]["sittings"]] == [[42], [1]]
    assert data["info"]["sittings"][1]["command"] == "trainer-ext compare --seeds 1"
    assert data["info"]["wall_seconds"] == 6043.0
    text = (out / "compare.md").read_text(encoding="utf-8")
    assert "0.820 ± 0.028" in text and "`trainer-ext compare --seeds 1`" in text
    assert "Sitting 2 of 2 (2026-11-30, CPU 1, 50 min, seeds 1)" in text
    assert "Wall time of the sittings together: 100.7 min" in text
    assert "0.820 ± 0.028" in capsys.readouterr().out


def test_a_seed_in_two_sittings_is_refused(tmp_path):
    first = _sitting(tmp_path / "a", 42, {"lora-all": 0.80})
    again = _sitting(tmp_path / "b", 42, {"lora-all": 0.81})
    with pytest.raises(StudyError, match=r"training seed 42 is in both .*a/seed42.* and .*b/seed42"):
        combine_studies([first, again])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda data: data.update(test_samples=300), "test_samples is 300"),
        (lambda data: data["settings"].update(transfer_samples=5), "settings.transfer_samples is 5"),
        (lambda data: data["info"].update(model="other"), "info.model is 'other'"),
    ],
)
def test_sittings_of_another_study_are_refused_with_what_differs(tmp_path, change, named):
    first = _sitting(tmp_path, 42, {"lora-all": 0.80})
    other = _sitting(tmp_path, 1, {"lora-all": 0.80})
    _edit(other, change)
    with pytest.raises(StudyError, match=rf"is not a sitting of the study of .*: {named} there"):
        combine_studies([first, other])


def test_one_file_gives_its_study_again(tmp_path):
    study = combine_studies([_sitting(tmp_path, 42, {"lora-all": 0.80})])
    assert [row.name for row in study.rows] == ["tfidf-logreg", "lora-all"]
    assert study.rows[1].constrained["accuracy"] == 0.8 and study.settings["seeds"] == [42]
    with pytest.raises(StudyError, match="give one or more"):
        combine_studies([])


def test_a_row_scored_differently_by_two_sittings_says_so(tmp_path):
    first = _sitting(tmp_path, 42, {"lora-all": 0.80})
    second = _sitting(tmp_path, 1, {"lora-all": 0.80}, tfidf=0.70)
    tfidf = combine_studies([first, second]).rows[0]
    assert tfidf.constrained["accuracy"] == 0.75
    assert "constrained scores from" in tfidf.note and "'accuracy': 0.7," in tfidf.note


def test_bad_files_are_named_and_nothing_is_written(tmp_path, capsys):
    good = _sitting(tmp_path, 42, {"lora-all": 0.80})
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"rows": []}', encoding="utf-8")
    cases = [
        ([str(good), str(tmp_path / "missing.json")], "missing.json: cannot read it"),
        ([str(good), str(tmp_path / "broken.json")], "broken.json: not valid JSON"),
        ([str(good), str(tmp_path / "other.json")], "other.json: not the compare.json of"),
    ]
    out = tmp_path / "out"
    for files, message in cases:
        assert main(["--combine", *files, "--output_dir", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert main(["--combine", str(good), str(good), "--seeds", "3", "--output_dir", str(out)]) == 2
    assert "--seeds do(es) not apply" in capsys.readouterr().err
    assert not out.exists()


def _edit(path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_row_failed_in_one_sitting_stays_failed_for_its_seeds(tmp_path, capsys):
    first = _sitting(tmp_path, 42, {"lora-all": 0.80, "embedding-logreg": 0.74})
    second = _sitting(tmp_path, 1, {"lora-all": 0.84, "embedding-logreg": 0.74})

    def failed_as_a_whole(data):  # what the study writes when the row's model is missing: no runs at all
        row = next(r for r in data["rows"] if r["name"] == "embedding-logreg")
        row.update(status="failed", per_seed=[], constrained=None, test=None, note="needs the package")

    _edit(second, failed_as_a_whole)
    out = tmp_path / "both"
    assert main(["--combine", str(first), str(second), "--output_dir", str(out)]) == 1
    assert "row(s) embedding-logreg failed in a sitting" in capsys.readouterr().err
    row = next(r for r in combine_studies([first, second]).rows if r.name == "embedding-logreg")
    assert row.has_failure and [(run.seed, run.status) for run in row.per_seed] == [(42, "ok"), (1, "failed")]
    assert "seed 1 failed: needs the package" in row.note and row.constrained["accuracy"] == 0.74


def test_a_sitting_of_untrained_rows_only_and_rows_missing_seeds(tmp_path):
    first = _sitting(tmp_path, 42, {"lora-all": 0.80, "full": 0.70})
    second = _sitting(tmp_path, 1, {"lora-all": 0.84}, tfidf=None)
    untrained = _sitting(tmp_path, 7, {})  # TF-IDF only: it trained no seed, so seed 7 is not one
    _edit(untrained, lambda data: data["settings"].update(seeds=[42, 1, 2]))  # the preset's seeds
    study = combine_studies([second, first, untrained])
    assert study.settings["seeds"] == [1, 42]
    full = next(row for row in study.rows if row.name == "full")
    assert full.note.endswith("seeds 42 only") and [run.seed for run in full.per_seed] == [42]
    assert [s["seeds"] for s in study.info["sittings"]] == [[1], [42], []]


def test_sittings_from_two_clones_combine_but_another_recipe_does_not(tmp_path):
    first = _sitting(tmp_path, 42, {"lora-all": 0.80})
    moved = _sitting(tmp_path, 1, {"lora-all": 0.80})
    _edit(moved, lambda data: data["settings"].update(recipe="/elsewhere/recipes/moderation_lora_all.yaml",
                                                      runs_dir="/elsewhere/runs"))  # fmt: skip
    assert combine_studies([first, moved]).settings["seeds"] == [42, 1]

    def one_epoch(data):
        next(r for r in data["rows"] if r["name"] == "lora-all")["epochs"] = 1.0

    _edit(moved, one_epoch)
    with pytest.raises(StudyError, match=r"row lora-all's \(trainable parameters, epochs\) is \(100, 1.0\)"):
        combine_studies([first, moved])


def test_older_files_and_an_output_over_an_input_are_refused(tmp_path, capsys):
    first = _sitting(tmp_path, 42, {"lora-all": 0.80})
    older = _sitting(tmp_path, 1, {"lora-all": 0.80})
    _edit(older, lambda data: data["settings"].pop("seeds"))
    with pytest.raises(StudyError, match="without training seeds, written by an older trainer-ext"):
        combine_studies([first, older])
    assert main(["--combine", str(first), "--output_dir", str(first.parent)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(["--combine", str(first), "--seeds=3", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--seeds=3 do(es) not apply" in capsys.readouterr().err
