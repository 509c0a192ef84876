"""The study's main rows on a larger held-out test set: is the LM's lead over the alternatives real?

    python -m benchmarks.heldout --runs runs/transfer/plain-seed42 runs/transfer/plain-seed1 \\
        runs/transfer/plain-seed2
    python -m benchmarks.heldout --runs runs/transfer/plain-seed42 --no_embeddings \\
        --variant neftune5 runs/ablation/neftune5-seed42 --out_dir docs/benchmarks/ablation
    python -m benchmarks.heldout --runs runs/transfer/pad16-seed42 --no_embeddings \\
        --head runs/compare/runs/classification-head/seed-42

The reference split's 200 evaluation tweets give an accuracy near 0.8 a binomial standard error of
0.028: a lead of a point or two is noise. So the study preset has a larger test set, 900 Davidson tweets
(`../shared/data/davidson/labeled_data.csv`), balanced over the three labels, seed 42, none of them in
the study's 1,200 (`trainer_ext.study.heldout`). This benchmark draws the very same test set and scores,
without training anything again:

- the given runs of the main recipe (``--runs``, one per training seed), loaded as evaluated (their
  quantization, dtype and autocast), constrained decoding (the study's main score);
- `tfidf-logreg` fitted on the study's 1,000 training tweets (the study's row; deterministic);
- `embedding-logreg` on the same tweets, one fit per ``--seeds`` seed (needs the ``embeddings`` extra;
  ``--no_embeddings`` leaves it out);
- ablations of the main recipe (``--variant NAME RUN [RUN ...]``, repeatable): runs trained with other
  recipe keys, each scored the same way, listed with the keys that differ from the first ``--runs`` run
  and paired with the main recipe's run of the same seed;
- `classification-head` (``--head RUN [RUN ...]``): the head runs of `trainer-ext compare` with the shipped
  preset (``runs/compare/runs/classification-head/seed-N``), read from the labels they saved for the same
  tweets (nothing is loaded or trained), paired with the main recipe's run of the same seed.

Every row is compared with `tfidf-logreg` on the same test tweets by McNemar's exact test (the paired test
for two classifiers scored on one set; Dietterich 1998, "Approximate statistical tests for comparing
supervised classification learning algorithms"), per seed. Writes ``OUT_DIR/heldout.json`` and
``heldout.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import DATA_DIR, REPO_ROOT, count_type, report_header, write_report

LABELS = ["hate", "offensive", "neutral"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run directories of the main recipe")
    parser.add_argument(
        "--test_size", type=count_type(1), help="held-out tweets (default: the study preset's 900)"
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "RUN"),
        help="an ablation row: its name, then its run directories (one per seed); repeatable",
    )
    head_help = "classification-head runs of `trainer-ext compare` (its runs/classification-head/seed-N)"
    parser.add_argument("--head", nargs="+", default=[], metavar="RUN", help=head_help)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="embedding-logreg seeds")
    parser.add_argument("--embedding_model", default="all-minilm-l6-v2")
    parser.add_argument("--no_embeddings", action="store_true", help="leave out embedding-logreg")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out_dir", default=str(REPO_ROOT / "docs" / "benchmarks"))
    return parser


def study_sets(test_size: int | None = None) -> tuple[list[Any], list[Any], list[Any]]:
    """The study's training, evaluation and test examples, drawn as `trainer-ext compare` with the shipped
    preset draws them (``test_size`` overrides the preset's ``test_samples``)."""
    from trainer_ext.data import load_split
    from trainer_ext.study.heldout import load_test_set
    from trainer_ext.study.settings import build_settings, row_argv
    from trainer_ext.training.recipe import parse_recipe

    flags = {"test_samples": test_size} if test_size else {}
    settings = build_settings(None, flags, [], ["--data_dir", str(DATA_DIR)])
    recipe = parse_recipe(row_argv(settings, "zero-shot", settings.runs_path / "zero-shot"))
    labels = list(recipe.task.labels)
    train = load_split(recipe.data, "train", labels=labels)
    evaluation = load_split(recipe.data, "eval", labels=labels)
    return train, evaluation, load_test_set(settings, recipe, labels, [*train, *evaluation])


def _scores(gold: list[str], predicted: list[str]) -> dict[str, float]:
    from trainer_ext.evaluation.metrics import classification_metrics

    metrics = classification_metrics(gold, predicted, LABELS)
    return {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4)}


def mcnemar(gold: list[str], ours: list[str], theirs: list[str]) -> dict[str, Any]:
    """McNemar's exact test of two classifiers on the same examples.

    Returns:
        `dict`: ``only_ours`` (right where the other is wrong), ``only_theirs``, and the two-sided exact
        ``p_value`` (a binomial test of ``only_ours`` out of the discordant pairs at 1/2; scipy's
        `binomtest`). Discordant pairs only carry information; ties are left out.
    """
    from scipy.stats import binomtest

    only_ours = sum(o == g != t for g, o, t in zip(gold, ours, theirs, strict=True))
    only_theirs = sum(t == g != o for g, o, t in zip(gold, ours, theirs, strict=True))
    discordant = only_ours + only_theirs
    p_value = binomtest(only_ours, discordant, 0.5).pvalue if discordant else 1.0
    return {"only_ours": only_ours, "only_theirs": only_theirs, "p_value": round(float(p_value), 4)}


def check_runs(runs: list[Path]) -> str | None:
    """What is wrong with `runs` as finished runs of `trainer-ext train`, before anything is scored."""
    from trainer_ext.runs.info import RunDirError, RunInfo

    missing = [
        str(run) for run in runs if not ((run / "metrics.json").is_file() and (run / "run.json").is_file())
    ]
    if missing:
        return (
            "not a finished run directory (metrics.json and run.json of `trainer-ext train`): "
            + ", ".join(missing)
        )
    for run in runs:
        try:
            RunInfo.load(run)
        except RunDirError as error:
            return str(error)
    return None


def run_predictions(run: Path, sets: dict[str, list[Any]], batch_size: int) -> dict[str, list[str]]:
    """The labels a run directory's classifier predicts on each set (constrained decoding, loaded as the run
    was evaluated: its quantization, dtype and autocast)."""
    import gc

    from trainer_ext.inference.classifier import Classifier

    classifier = Classifier.from_pretrained(run)
    predictions = {
        name: [p.label for p in classifier.predict([ex.text for ex in examples], "constrained", batch_size)]
        for name, examples in sets.items()
    }
    del classifier
    gc.collect()
    return predictions


def head_predictions(run: Path, sets: dict[str, list[Any]]) -> tuple[int, dict[str, list[str]]]:
    """The seed of a `trainer-ext compare` classification-head run and the labels it saved for each set.

    Raises:
        `ValueError`: When the run lacks its files, or its saved texts are not the sets' (another test set).
    """
    from trainer_ext.study.head import read_head_predictions
    from trainer_ext.study.runner import COMMAND_FILE

    stamp = run / COMMAND_FILE
    if not stamp.is_file():
        raise ValueError(f"{run}: no {COMMAND_FILE}; give a classification-head run of `trainer-ext compare`")
    argv = json.loads(stamp.read_text(encoding="utf-8"))
    seeds = [argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag == "--seed"]  # the last one holds
    seed = int(seeds[-1]) if seeds else 42
    try:
        saved = read_head_predictions(run)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(str(error)) from error
    predictions = {}
    for name, examples in sets.items():
        rows = saved.get(name, [])
        if [row["text"] for row in rows] != [example.text for example in examples]:
            raise ValueError(
                f"{run}: its {len(rows)} saved {name} predictions are not for this benchmark's "
                f"{len(examples)} {name} tweets; rerun the row with the shipped preset "
                "(`trainer-ext compare --rows classification-head`) or give the matching --test_size"
            )
        predictions[name] = [row["predicted"] for row in rows]
    return seed, predictions


def seed_entry(
    seed: int | None, predictions: dict[str, list[str]], gold: dict[str, list[str]], tfidf: list[str], **extra
) -> dict[str, Any]:
    """One run's scores on each set (`gold`'s keys), paired with tfidf-logreg's `tfidf` test labels; its
    test labels are kept under ``predictions`` for `pair_with_lora`."""
    return {
        "seed": seed,
        **{name: _scores(gold[name], predictions[name]) for name in gold},
        "vs_tfidf": mcnemar(gold["test"], predictions["test"], tfidf),
        "predictions": predictions["test"],
        **extra,
    }


def pair_with_lora(entry: dict[str, Any], lora: list[dict[str, Any]], gold: list[str]) -> None:
    """Add ``vs_lora_all`` to `entry`: McNemar's test against the main recipe's run of the same seed on the
    `gold` test labels, and the accuracy difference (nothing when no run of that seed was given)."""
    same_seed = [run for run in lora if run["seed"] == entry["seed"]]
    if same_seed:
        main_run = same_seed[0]
        entry["vs_lora_all"] = mcnemar(gold, entry["predictions"], main_run["predictions"])
        entry["vs_lora_all"]["accuracy_difference"] = round(
            entry["test"]["accuracy"] - main_run["test"]["accuracy"], 4
        )


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _distinct(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs, or only the first when every seed scored the same (a deterministic fit)."""
    keys = [json.dumps({k: run[k] for k in ("eval", "test", "vs_tfidf") if k in run}) for run in runs]
    return runs[:1] if len(runs) > 1 and len(set(keys)) == 1 else runs


# Keys of a run's recipe that name the run rather than the recipe.
_RUN_KEYS = {"output_dir", "seed", "disable_tqdm", "data_dir"}


def training_defaults() -> dict[str, Any]:
    """The default of every training argument: ``run.json`` "training" leaves out the ones a run keeps."""
    import dataclasses

    from trainer_ext.training.trainer import LabelTrainingArguments

    defaults = LabelTrainingArguments(output_dir="unused", report_to="none")
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults) if f.init}


def recipe_keys(info: dict[str, Any]) -> dict[str, Any]:
    """A run's recipe as one flat dict, from its ``run.json``: the training arguments, and the model, LoRA,
    task (prompt) and data keys, so that an ablation of ``lora_r`` or ``prompt_style`` shows too."""
    keys = {key: info[key] for key in ("base_model", "quantization", "method", "dtype") if key in info}
    for section in ("lora", "task", "data"):
        keys.update(info.get(section) or {})
    return {**keys, **info["training"]}


def differing_keys(
    main: dict[str, Any], variant: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The recipe keys of `variant` (a run's `recipe_keys`) whose value differs from `main`'s. A training key
    a run does not list has its default from `defaults` (see `training_defaults`), or shows as `None`."""
    defaults = defaults or {}
    keys = (set(main) | set(variant)) - _RUN_KEYS

    def value(run: dict[str, Any], key: str) -> Any:
        return run[key] if key in run else defaults.get(key)

    return {key: value(variant, key) for key in sorted(keys) if value(main, key) != value(variant, key)}


def markdown(report: dict[str, Any]) -> str:
    from trainer_ext.study.scoring import standard_error

    n_test, n_eval = report["test_size"], report["eval_size"]
    lines = [
        "# The study's rows on a larger held-out test set",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Test set: the study's, {n_test} Davidson tweets balanced over the labels (seed 42), none of them "
        f"in the study's 1,200; the study's evaluation set is the {n_eval} of "
        "`seed_split/val.csv`. Standard error of an accuracy near 0.8: "
        f"{standard_error(0.8, n_eval):.3f} on {n_eval}, {standard_error(0.8, n_test):.3f} on {n_test}.",
        "",
        f"| row | seeds | accuracy, {n_eval} | macro-F1, {n_eval} "
        f"| accuracy, {n_test} | macro-F1, {n_test} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        runs, seeds = _distinct(row["per_seed"]), str(len(row["per_seed"]))
        if len(runs) < len(row["per_seed"]):
            seeds = f"{len(row['per_seed'])}, identical (a deterministic fit)"
        cells = [
            _mean_std([run[split][metric] for run in runs])
            for split in ("eval", "test")
            for metric in ("accuracy", "macro_f1")
        ]
        lines.append(f"| {row['name']} | {seeds} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Paired against tfidf-logreg on the {n_test} test tweets (McNemar's exact test, per seed)",
        "",
        "| row | seed | accuracy difference | right only here / only tfidf | p |",
        "|---|---|---:|---:|---:|",
    ]
    tfidf = report["rows"][0]["per_seed"][0]["test"]["accuracy"]
    for row in report["rows"][1:]:
        for run in _distinct(row["per_seed"]):
            paired = run["vs_tfidf"]
            lines.append(
                f"| {row['name']} | {run['seed']} | {run['test']['accuracy'] - tfidf:+.3f} | "
                f"{paired['only_ours']} / {paired['only_theirs']} | {paired['p_value']:.4f} |"
            )
    variants = [row for row in report["rows"] if row.get("variant")]
    if variants:
        lines += [
            "",
            f"## Ablations and the head: each against the main recipe's run of the same seed, on the "
            f"{n_test} test tweets",
            "",
            "| row | seed | keys that differ | accuracy difference | right only here / only lora-all | p |",
            "|---|---|---|---:|---:|---:|",
        ]
        for row in variants:
            for run in row["per_seed"]:
                differs = row.get("change") or (
                    ", ".join(f"`{key}: {value}`" for key, value in run["differs"].items()) or "none"
                )
                paired = run.get("vs_lora_all")
                cells = (
                    f"{paired['accuracy_difference']:+.3f} | "
                    f"{paired['only_ours']} / {paired['only_theirs']} | {paired['p_value']:.4f}"
                    if paired
                    else "no lora-all run of this seed | |"
                )
                lines.append(f"| {row['name']} | {run['seed']} | {differs} | {cells} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    runs = [Path(run) for run in args.runs]
    variants: dict[str, list[Path]] = {}
    for name, *paths in args.variant:
        problem = (
            "its run directories are missing: give the row's name, then its runs"
            if not paths
            else "this is a directory: the first value is the row's name, then come its runs"
            if Path(name).is_dir() or not name.strip()
            else "this name is already taken by another --variant"
            if name in variants
            else "this name is a built-in row; choose another"
            if name in ("lora-all", "tfidf-logreg", "embedding-logreg")
            else None
        )
        if problem:
            parser.error(f"--variant {name!r}: {problem}")
        variants[name] = [Path(path) for path in paths]
    every_run = [*runs, *(run for paths in variants.values() for run in paths)]
    heads = [Path(run) for run in args.head]
    given = [run.resolve() for run in (*every_run, *heads)]  # runs/x and /abs/runs/x are one directory
    repeated = sorted({str(run) for run in given if given.count(run) > 1})
    if repeated:
        parser.error(f"each run directory can be in one row only, once; given twice: {', '.join(repeated)}")
    if problem := check_runs(every_run):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from trainer_ext.data import DataError

    try:
        train, evaluation, test = study_sets(args.test_size)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sets = {"eval": evaluation, "test": test}
    gold = {name: [example.label for example in examples] for name, examples in sets.items()}
    try:
        saved_heads = [(run, *head_predictions(run, sets)) for run in heads]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from trainer_ext.study.baselines import tfidf_logreg

    fitted = tfidf_logreg(train, evaluation, LABELS, test=test)
    tfidf_predictions = {"eval": fitted.predictions, "test": fitted.test_predictions}
    tfidf_test = tfidf_predictions["test"]
    rows = [{"name": "tfidf-logreg", "per_seed": [
        {"seed": None, **{name: _scores(gold[name], tfidf_predictions[name]) for name in sets}}
    ]}]  # fmt: skip

    if not args.no_embeddings:
        from trainer_ext.study.embeddings import embedding_logreg

        fits = embedding_logreg(train, evaluation, LABELS, args.embedding_model, args.seeds, test=test)
        rows.append({"name": "embedding-logreg", "model": args.embedding_model, "per_seed": [
            seed_entry(seed, {"eval": fit.predictions, "test": fit.test_predictions}, gold, tfidf_test)
            for seed, fit in zip(args.seeds, fits, strict=True)
        ]})  # fmt: skip

    def scored(paths: list[Path]) -> list[dict[str, Any]]:
        entries = []
        for run in paths:
            print(f"Scoring {run} on {len(evaluation)} + {len(test)} tweets", file=sys.stderr)
            info = json.loads((run / "run.json").read_text(encoding="utf-8"))
            metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
            predictions = run_predictions(run, sets, args.batch_size)
            entry = seed_entry(info["training"].get("seed", 42), predictions, gold, tfidf_test, run=str(run))
            entry["recipe"] = recipe_keys(info)
            # The run's own evaluation, for a check that the run is scored here as it was evaluated.
            entry["run_eval_accuracy"] = metrics.get("eval_accuracy")
            entries.append(entry)
        return entries

    lora = scored(runs)
    defaults = training_defaults() if variants else {}
    rows.append({"name": "lora-all", "per_seed": lora})

    for name, paths in variants.items():
        entries = scored(paths)
        for entry in entries:
            entry["differs"] = differing_keys(lora[0]["recipe"], entry["recipe"], defaults)
            pair_with_lora(entry, lora, gold["test"])
        rows.append({"name": name, "variant": True, "per_seed": entries})
    if saved_heads:
        entries = []
        for run, seed, predictions in saved_heads:
            entries.append(seed_entry(seed, predictions, gold, tfidf_test, run=str(run)))
            pair_with_lora(entries[-1], lora, gold["test"])
        change = "a new linear head on the message's last token (no prompt) instead of generating the label"
        rows.append({"name": "classification-head", "variant": True, "change": change, "per_seed": entries})
    for row in rows:
        for entry in row["per_seed"]:
            entry.pop("predictions", None)
            entry.pop("recipe", None)
    report = {
        **report_header("heldout", argv),
        "test_size": len(test),
        "eval_size": len(evaluation),
        "rows": rows,
    }
    write_report(args.out_dir, "heldout", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
