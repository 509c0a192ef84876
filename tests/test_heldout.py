"""The held-out test benchmark (its draw stays outside the study's split, its paired test counts right) and
the job memory sampler's phases."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.heldout import differing_keys, markdown, mcnemar, study_sets
from trainer_ext.data import DataError
from trainer_ext.data.report import text_key


def test_the_study_test_set_is_balanced_seeded_and_outside_the_study_split(data_dir):
    train, evaluation, test = study_sets(300)
    assert (len(train), len(evaluation)) == (1000, 200)
    assert Counter(example.label for example in test) == {"hate": 100, "offensive": 100, "neutral": 100}
    study_texts = {text_key(example.text) for example in [*train, *evaluation]}
    assert not study_texts & {text_key(example.text) for example in test}
    assert [e.source for e in study_sets(300)[2]] == [e.source for e in test]
    # The shipped preset's own size.
    assert len(study_sets()[2]) == 900


def test_a_test_set_larger_than_the_unseen_rows_says_how_many_there_are(data_dir):
    with pytest.raises(DataError, match=r"test_samples 30000 is more than the \d+ rows"):
        study_sets(30_000)


def test_mcnemar_counts_the_discordant_pairs_and_gives_the_exact_p_value():
    gold = ["a"] * 12
    ours = ["a"] * 10 + ["b"] * 2  # right on the first 10
    theirs = ["a"] * 2 + ["b"] * 9 + ["a"]  # right on the first 2 and the last
    result = mcnemar(gold, ours, theirs)
    # Right only here: items 2..9 (8); right only there: item 11 (1); both wrong: item 10.
    assert (result["only_ours"], result["only_theirs"]) == (8, 1)
    # Two-sided binomial test at 1/2 on 9 pairs: 2 * P(X >= 8) = 2 * (9 + 1) / 2**9.
    assert result["p_value"] == pytest.approx(2 * 10 / 512, abs=1e-4)
    assert mcnemar(gold, ours, ours)["p_value"] == 1.0


def test_the_report_shows_mean_and_spread_per_row_and_the_paired_differences():
    scores = {"accuracy": 0.8, "macro_f1": 0.79}
    report = {
        "command": "python -m benchmarks.heldout --runs r1 r2",
        "test_size": 900,
        "eval_size": 200,
        "rows": [
            {"name": "tfidf-logreg", "per_seed": [{"seed": None, "eval": scores, "test": scores}]},
            {
                "name": "lora-all",
                "per_seed": [
                    {"seed": seed, "eval": scores, "test": {"accuracy": acc, "macro_f1": acc},
                     "vs_tfidf": {"only_ours": 30, "only_theirs": 10, "p_value": 0.002}}
                    for seed, acc in ((42, 0.84), (1, 0.86))
                ],
            },
        ],
    }  # fmt: skip
    text = markdown(report)
    assert "| lora-all | 2 | 0.800 ± 0.000 | 0.790 ± 0.000 | 0.850 ± 0.014 | 0.850 ± 0.014 |" in text
    assert "| lora-all | 42 | +0.040 | 30 / 10 | 0.0020 |" in text
    assert "0.028 on 200, 0.013 on 900" in text
    assert "Ablations" not in text


def test_an_ablation_row_names_the_keys_it_changes_and_is_paired_with_the_same_seed():
    main = {"learning_rate": 5e-4, "seed": 1, "output_dir": "a", "num_train_epochs": 2}
    variant = {"learning_rate": 1e-3, "seed": 1, "output_dir": "b", "neftune_noise_alpha": 5}
    assert differing_keys(main, variant) == {
        "learning_rate": 1e-3, "neftune_noise_alpha": 5, "num_train_epochs": None,
    }  # fmt: skip
    # A key a run does not list is at its default: 3 epochs left out of a run.json is 3, not "unset".
    assert differing_keys({"num_train_epochs": 2}, {}, {"num_train_epochs": 3.0}) == {"num_train_epochs": 3.0}
    assert differing_keys({"num_train_epochs": 3.0}, {}, {"num_train_epochs": 3.0}) == {}
    # Keys outside the training arguments count too: LoRA rank, prompt style, quantization.
    from benchmarks.heldout import recipe_keys

    info = {"quantization": "8bit", "lora": {"lora_r": 8}, "task": {"prompt_style": "instruction"},
            "data": {"data_dir": "d"}, "training": {"seed": 1, "learning_rate": 5e-4}}  # fmt: skip
    other = {**info, "lora": {"lora_r": 32}, "task": {"prompt_style": "raw"}, "training": {"seed": 2,
             "learning_rate": 5e-4}, "data": {"data_dir": "elsewhere"}}  # fmt: skip
    assert differing_keys(recipe_keys(info), recipe_keys(other)) == {"lora_r": 32, "prompt_style": "raw"}
    scores = {"accuracy": 0.8, "macro_f1": 0.79}
    entry = {
        "seed": 1,
        "eval": scores,
        "test": scores,
        "vs_tfidf": {"only_ours": 1, "only_theirs": 1, "p_value": 1},
    }
    report = {
        "command": "x", "test_size": 900, "eval_size": 200,
        "rows": [
            {"name": "tfidf-logreg", "per_seed": [{"seed": None, "eval": scores, "test": scores}]},
            {"name": "lora-all", "per_seed": [entry]},
            {"name": "lr1e-3", "variant": True, "per_seed": [
                {**entry, "differs": {"learning_rate": 1e-3},
                 "vs_lora_all": {"accuracy_difference": -0.012, "only_ours": 20, "only_theirs": 31,
                                 "p_value": 0.16}},
                {**entry, "seed": 7, "differs": {"learning_rate": 1e-3}},
            ]},
        ],
    }  # fmt: skip
    text = markdown(report)
    assert "| lr1e-3 | 1 | `learning_rate: 0.001` | -0.012 | 20 / 31 | 0.1600 |" in text
    assert "| lr1e-3 | 7 | `learning_rate: 0.001` | no lora-all run of this seed | | |" in text


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        (["lonely"], "--variant 'lonely': its run directories are missing"),
        (["RUN", "RUN"], "the first value is the row's name"),  # the name forgotten
        (["lora-all", "RUN"], "'lora-all': this name is a built-in row"),
        (["a", "RUN", "--variant", "a", "RUN"], "'a': this name is already taken"),
        (["a", "RUN", "RUN"], "in one row only, once; given twice: RUN"),
        (["a", "RUN", "--head", "RUN"], "in one row only, once; given twice: RUN"),  # a variant and the head
        (["a", "RUN", "--head", "HEAD", "HEAD"], "in one row only, once; given twice: HEAD"),
    ],
)
def test_bad_variants_are_refused_before_anything_is_scored(tmp_path, capsys, variant, message):
    from benchmarks.heldout import main

    run, head = str(tmp_path), str(tmp_path / "head")
    with pytest.raises(SystemExit):
        main(["--runs", "r", "--variant", *[{"RUN": run, "HEAD": head}.get(v, v) for v in variant]])
    assert message.replace("RUN", run).replace("HEAD", head) in capsys.readouterr().err


def test_the_job_memory_sampler_files_samples_under_the_phase_the_log_names():
    from benchmarks.job_memory import Phases

    phases = Phases()
    phases.add(100.0)
    phases.on_line("12:00:00 INFO trainer_ext.modeling.embedded: Using embedded model smollm2-135m")
    phases.add(300.0)
    phases.on_line("12:00:05 INFO trainer_ext.modeling.loading: Loaded smollm2-135m (8bit) with lora-all")
    phases.add(900.0)
    phases.on_line("{'loss': '0.9', 'epoch': '0.1'}")
    phases.add(950.0)
    phases.on_line("{'train_runtime': '10'}")
    phases.add(990.0)
    phases.on_line("{'eval_accuracy': '0.8'}")
    phases.add(980.0)
    phases.on_line("{'loss': '0.1'}")  # an earlier phase's line does not move it back
    phases.add(970.0)
    assert phases.samples == {
        "start-up and data": [100.0],
        "model loading": [300.0],
        "training, logging window 1": [900.0],
        "training, logging window 2": [950.0],
        "evaluation": [990.0],
        "writing the run directory": [980.0, 970.0],
    }


# The study's own loading of its test set.


def _settings(data_dir, **flags):
    from trainer_ext.study.settings import build_settings, row_argv
    from trainer_ext.training.recipe import parse_recipe

    settings = build_settings(None, flags, [], ["--data_dir", str(data_dir)])
    return settings, parse_recipe(row_argv(settings, "zero-shot", settings.runs_path / "zero-shot"))


def test_no_test_file_means_no_test_set(data_dir):
    from trainer_ext.study.heldout import load_test_set

    settings, recipe = _settings(data_dir, test_file="")
    assert load_test_set(settings, recipe, ["hate", "offensive", "neutral"], []) == []


def test_a_missing_test_file_says_where_it_was_looked_for_and_how_to_go_without(data_dir):
    from trainer_ext.study.heldout import load_test_set

    settings, recipe = _settings(data_dir, test_file="davidson/nope.csv")
    with pytest.raises(DataError, match=r"nope\.csv' does not exist .*data_dir.*--test_file ''"):
        load_test_set(settings, recipe, ["hate", "offensive", "neutral"], [])


def test_a_test_set_made_only_of_seen_rows_is_refused(data_dir):
    from trainer_ext.study.heldout import load_test_set

    settings, recipe = _settings(
        data_dir, test_file="seed_split/val.csv", test_text_column="text", test_label_column="label",
        test_label_mapping=None, test_samples=0,
    )  # fmt: skip
    seen = study_sets(300)[1]  # the 200 evaluation tweets: every row of val.csv
    with pytest.raises(DataError, match="every row is also in the training or evaluation data"):
        load_test_set(settings, recipe, ["hate", "offensive", "neutral"], seen)


def test_a_test_set_without_some_label_is_used_with_a_warning_naming_it(data_dir, caplog):
    from trainer_ext.study.heldout import load_test_set

    settings, recipe = _settings(
        data_dir, test_file="seed_split/val.csv", test_text_column="text", test_label_column="label",
        test_label_mapping=None, test_samples=2,
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="trainer_ext.study.heldout"):
        test = load_test_set(settings, recipe, ["hate", "offensive", "neutral"], [])
    absent = {"hate", "offensive", "neutral"} - {example.label for example in test}
    assert len(test) == 2 and len(absent) == 1
    assert f"has no example of {absent.pop()!r}" in caplog.text


def test_the_digest_changes_with_the_test_set():
    from trainer_ext.data import Example
    from trainer_ext.study.heldout import examples_digest

    one = [Example("a tweet", "hate", "t:1"), Example("another", "neutral", "t:2")]
    assert examples_digest(one) == examples_digest(list(one))
    assert examples_digest(one) != examples_digest(one[:1])
    assert examples_digest(one) != examples_digest([Example("a tweet", "offensive", "t:1"), one[1]])


def test_a_wrong_test_column_names_the_study_keys(data_dir):
    from trainer_ext.study.heldout import load_test_set

    settings, recipe = _settings(data_dir, test_label_column="wrong")
    with pytest.raises(DataError, match="test_label_column"):
        load_test_set(settings, recipe, ["hate", "offensive", "neutral"], [])


def test_the_benchmark_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    from benchmarks.heldout import main

    (tmp_path / "metrics.json").write_text("{}", encoding="utf-8")  # no run.json
    assert main(["--runs", str(tmp_path), "--no_embeddings"]) == 2
    assert "not a finished run directory" in capsys.readouterr().err


def test_a_run_json_not_written_by_training_is_refused_before_anything_is_scored(tmp_path, capsys):
    from benchmarks.heldout import main

    for name in ("metrics.json", "run.json"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    assert main(["--runs", str(tmp_path), "--no_embeddings"]) == 2
    assert "it was not written by a training run" in capsys.readouterr().err


# classification-head runs of the study, read from the labels they saved.


def _head_run(path, texts, argv):
    import json

    from trainer_ext.study.head import write_head_predictions
    from trainer_ext.study.runner import COMMAND_FILE

    path.mkdir()
    rows = [
        {"split": split, "text": text, "gold": "hate", "predicted": predicted}
        for split in ("eval", "test")
        for text, predicted in zip(texts, ["hate", "neutral", "hate"], strict=True)
    ]
    write_head_predictions(path, rows)
    (path / COMMAND_FILE).write_text(json.dumps(argv), encoding="utf-8")
    return path


def test_a_head_run_is_read_back_with_its_seed_and_refused_for_other_tweets(tmp_path):
    from types import SimpleNamespace

    from benchmarks.heldout import head_predictions

    texts = ['a, "quoted" tweet', "two\nlines", "plain"]  # CSV quoting survives the round trip
    sets = {name: [SimpleNamespace(text=t, label="hate") for t in texts] for name in ("eval", "test")}
    run = _head_run(tmp_path / "head", texts, ["--config", "x.yaml", "--seed", "1", "--seed", "2"])
    seed, predictions = head_predictions(run, sets)
    assert seed == 2  # the last --seed is the one the run trained with
    assert predictions == {"eval": ["hate", "neutral", "hate"], "test": ["hate", "neutral", "hate"]}
    other = {**sets, "test": sets["test"][:2]}
    with pytest.raises(ValueError, match="its 3 saved test predictions are not for this benchmark's 2 test"):
        head_predictions(run, other)
    (run / "predictions.csv").unlink()
    with pytest.raises(ValueError, match="no predictions file"):
        head_predictions(run, sets)
    with pytest.raises(ValueError, match="give a classification-head run of `trainer-ext compare`"):
        head_predictions(tmp_path, sets)


def test_the_head_row_is_described_and_paired_with_lora_all():
    scores = {"accuracy": 0.8, "macro_f1": 0.79}
    entry = {"seed": 42, "eval": scores, "test": scores, "vs_tfidf": {"only_ours": 1, "only_theirs": 1,
             "p_value": 1}}  # fmt: skip
    paired = {"accuracy_difference": 0.021, "only_ours": 40, "only_theirs": 21, "p_value": 0.02}
    report = {"command": "x", "test_size": 900, "eval_size": 200, "rows": [
        {"name": "tfidf-logreg", "per_seed": [{"seed": None, "eval": scores, "test": scores}]},
        {"name": "lora-all", "per_seed": [entry]},
        {"name": "classification-head", "variant": True, "change": "a linear head",
         "per_seed": [{**entry, "vs_lora_all": paired}]},
    ]}  # fmt: skip
    assert "| classification-head | 42 | a linear head | +0.021 | 40 / 21 | 0.0200 |" in markdown(report)


def test_main_pairs_a_head_run_and_a_variant_with_the_recipe_run_of_their_seed(tmp_path, monkeypatch):
    """The whole benchmark with the models' labels stubbed: a head run of the study and an ablation run."""
    import json

    import benchmarks.heldout as heldout
    from trainer_ext.study.head import write_head_predictions
    from trainer_ext.study.runner import COMMAND_FILE

    _, evaluation, test = study_sets(30)
    sets = {"eval": evaluation, "test": test}
    runs = {}
    for name, lora_r in (("recipe", 8), ("rank32", 32)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        info = {"training": {"seed": 42}, "lora": {"lora_r": lora_r}}
        (runs[name] / "run.json").write_text(json.dumps(info), encoding="utf-8")
        (runs[name] / "metrics.json").write_text("{}", encoding="utf-8")
    wrong_first = ["neutral" if ex.label == "hate" else "hate" for ex in test[:3]]
    labels = {  # the recipe right on every tweet, the ablation wrong on the first three test tweets
        runs["recipe"]: {k: [ex.label for ex in v] for k, v in sets.items()},
        runs["rank32"]: {"eval": [ex.label for ex in evaluation],
                         "test": wrong_first + [ex.label for ex in test[3:]]},
    }  # fmt: skip
    monkeypatch.setattr(heldout, "check_runs", lambda runs: None)
    monkeypatch.setattr(heldout, "run_predictions", lambda run, sets, batch_size: labels[run])
    head = tmp_path / "head"
    head.mkdir()
    write_head_predictions(head, [
        {"split": name, "text": ex.text, "gold": ex.label, "predicted": ex.label if i else wrong_first[0]}
        for name, examples in sets.items() for i, ex in enumerate(examples)
    ])  # fmt: skip
    (head / COMMAND_FILE).write_text(json.dumps(["--seed", "42"]), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--runs", str(runs["recipe"]), "--no_embeddings", "--test_size", "30", "--variant", "rank32",
            str(runs["rank32"]), "--head", str(head), "--out_dir", str(out)]  # fmt: skip
    assert heldout.main(argv) == 0
    rows = {row["name"]: row for row in json.loads((out / "heldout.json").read_text())["rows"]}
    assert list(rows) == ["tfidf-logreg", "lora-all", "rank32", "classification-head"]
    rank32, head_run = rows["rank32"]["per_seed"][0], rows["classification-head"]["per_seed"][0]
    assert rank32["differs"] == {"lora_r": 32}
    paired = {"only_ours": 0, "only_theirs": 3, "p_value": 0.25, "accuracy_difference": -0.1}
    assert rank32["vs_lora_all"] == paired
    assert head_run["seed"] == 42 and head_run["test"]["accuracy"] == pytest.approx(29 / 30, abs=1e-4)
    assert (head_run["vs_lora_all"]["only_ours"], head_run["vs_lora_all"]["only_theirs"]) == (0, 1)
    text = (out / "heldout.md").read_text()
    assert "| classification-head | 42 | a new linear head on the message's last token" in text
