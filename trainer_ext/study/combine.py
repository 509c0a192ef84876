"""One study from the `compare.json` of several sittings, each of its own training seeds.

The shipped preset (11 rows, 3 seeds) takes about 5 hours of a 2-core CPU. Run it a seed at a time
(``--seeds 42``, then ``--seeds 1``, ...; a later sitting may leave out the rows that have no training seed,
which give the same scores every time), keep each sitting's ``compare.json``, and combine them::

    trainer-ext compare --combine runs/seed42/compare.json runs/seed1/compare.json runs/seed2/compare.json \\
        --output_dir runs/compare

The sittings must be of one study: the same settings (apart from their rows, seeds and directories), the
same model, labels and sample sizes; their seeds must not overlap. A seeded row is the mean and standard
deviation over every sitting's runs (`combine_seeds`); a row without training seeds (TF-IDF, zero- and
few-shot) is taken from the first sitting that has it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trainer_ext.study.runner import Study
from trainer_ext.study.scoring import RowResult, TransferResult, combine_seeds
from trainer_ext.study.settings import ROWS, SEEDED_ROWS, StudyError

logger = logging.getLogger(__name__)

# Settings that may differ between sittings: what each ran, and where. `recipe` is compared by file name,
# since a clone elsewhere resolves the same shipped recipe to another absolute path.
PER_SITTING = frozenset({"rows", "seeds", "output_dir", "runs_dir", "reuse", "recipe"})
SHARED_FIELDS = ("transfer_labels", "transfer_samples", "eval_samples", "test_samples", "train_samples")
SHARED_INFO = ("model", "quantization", "labels")


OLDER = "written by an older trainer-ext; run that sitting again with this version"


def _row(data: dict[str, Any]) -> RowResult:
    return RowResult(**(data | {"per_seed": [_row(run) for run in data.get("per_seed") or []]}))


def load_study(path: str | Path) -> tuple[Study, str]:
    """Read a `compare.json` written by `write_report` back into a `Study`.

    Returns:
        `(Study, str)`: the study and the command that ran it (empty if the file does not say).

    Raises:
        `StudyError`: the file is missing, not JSON, not a study's JSON, or from a version without seeds.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise StudyError(f"--combine {path}: cannot read it ({error.strerror}).") from None
    except ValueError as error:
        raise StudyError(f"--combine {path}: not valid JSON ({error}).") from None
    if not isinstance(data, dict) or not all(key in data for key in ("settings", "rows", "info")):
        raise StudyError(f"--combine {path}: not the compare.json of `trainer-ext compare`.")
    missing = [key for key in ("transfer", *SHARED_FIELDS) if key not in data]
    if missing or not isinstance(data["settings"], dict) or not data["settings"].get("seeds"):
        what = ", ".join(missing) if missing else "training seeds"
        raise StudyError(f"--combine {path}: a compare.json without {what}, {OLDER}.")
    try:
        study = Study(
            settings=data["settings"],
            rows=[_row(row) for row in data["rows"]],
            transfer=[TransferResult(**result) for result in data["transfer"]],
            info=dict(data["info"]),
            **{key: data[key] for key in SHARED_FIELDS},
        )
    except (TypeError, AttributeError) as error:
        raise StudyError(
            f"--combine {path}: a row or transfer result is malformed ({error}), {OLDER}."
        ) from None
    return study, str(data.get("command") or "")


def _check_same_study(first: Study, other: Study, first_path: Path, path: Path) -> None:
    """Raise `StudyError` naming the first value in which `other` is not a sitting of `first`'s study."""
    pairs = [(f"settings.{k}", first.settings.get(k), other.settings.get(k)) for k in first.settings]
    pairs += [(f"settings.{k}", None, other.settings[k]) for k in other.settings if k not in first.settings]
    pairs = [p for p in pairs if p[0].removeprefix("settings.") not in PER_SITTING]
    recipe = [Path(str(study.settings.get("recipe"))).name for study in (first, other)]
    pairs.append(("the recipe's file name", *recipe))
    pairs += [(key, getattr(first, key), getattr(other, key)) for key in SHARED_FIELDS]
    pairs += [(f"info.{key}", first.info.get(key), other.info.get(key)) for key in SHARED_INFO]
    # the recipe's content is not kept in the JSON; what it gave each row (parameters, epochs) is
    shapes = [
        {r.name: (r.trainable_params, r.epochs) for r in x.rows if r.status == "ok"} for x in (first, other)
    ]
    what = "'s (trainable parameters, epochs)"
    pairs += [(f"row {n}{what}", shapes[0][n], shapes[1][n]) for n in shapes[0] if n in shapes[1]]
    for name, want, got in pairs:
        if want != got:
            raise StudyError(
                f"--combine: {path} is not a sitting of the study of {first_path}: {name} is {got!r} there "
                f"and {want!r} in {first_path}. Combine only sittings run with the same preset and flags."
            )


def _seeds(study: Study) -> list[int]:
    """The training seeds a sitting ran: its ``seeds``, if it ran a seeded row; none otherwise."""
    if not any(row.name in SEEDED_ROWS for row in study.rows):
        return []
    return [int(seed) for seed in study.settings["seeds"]]


def _sitting(study: Study, path: Path, command: str) -> dict[str, Any]:
    """What the combined study keeps of one sitting."""
    keep = ("date", "wall_seconds", "cpu", "cpu_capability", "cpus", "versions")
    return {"file": str(path), "command": command, "seeds": _seeds(study)} | {
        "rows": [row.name for row in study.rows],
        **{key: study.info.get(key) for key in keep},
    }


def _runs(row: RowResult, study: Study) -> list[RowResult]:
    """A seeded row's runs in one sitting; a row that failed as a whole (no runs) fails for each seed."""
    if row.per_seed:
        return row.per_seed
    return [RowResult(row.name, status=row.status, seed=seed, note=row.note) for seed in _seeds(study)]


def _add_note(row: RowResult, text: str) -> None:
    row.note = f"{row.note}; {text}" if row.note else text


def _seedless(name: str, found: list[tuple[RowResult, Path]]) -> RowResult:
    """A row without training seeds: the first sitting's that finished it; another that scored it otherwise
    is said in its note."""
    done = [(row, path) for row, path in found if row.status == "ok"] or found
    row, first_path = done[0]
    for other, path in done[1:]:
        for part in ("constrained", "generate", "test"):
            mine, theirs = getattr(row, part), getattr(other, part)
            if mine != theirs:
                logger.warning("Row %s: %s scores differ between %s and %s", name, part, first_path, path)
                _add_note(row, f"{part} scores from {first_path}; {path} has {theirs} (not {mine})")
    return row


def combine_studies(paths: list[str | Path]) -> Study:
    """One study from the `compare.json` files of several sittings of it.

    Args:
        paths (`list[str | Path]`): The `compare.json` files, in the order their seeds are listed; a single
            file gives its study again, the rows recombined from their runs and the report from this version.

    Returns:
        `Study`: rows in table order; seeded rows combined over every sitting's runs (a row that failed as a
        whole in a sitting counts as failed for each of its seeds; a row missing some seeds says which it
        has), rows without training seeds from the first sitting that finished them; transfer results of
        every run (the base model's once); ``info["sittings"]`` lists each sitting (file, command, seeds,
        rows, date, CPU, wall time, versions).

    Raises:
        `StudyError`: no file, a file that is not a study's JSON of this version, sittings of different
        studies (settings, recipe file name, model, labels, sample sizes, or a row's parameters or epochs),
        or a training seed in two sittings.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise StudyError("--combine: give one or more compare.json files, one per sitting.")
    loaded = [load_study(path) for path in paths]
    studies = [study for study, _ in loaded]
    first = studies[0]
    for study, path in zip(studies[1:], paths[1:], strict=True):
        _check_same_study(first, study, paths[0], path)
    owner: dict[int, Path] = {}
    for study, path in zip(studies, paths, strict=True):
        for seed in _seeds(study):
            if seed in owner:
                raise StudyError(
                    f"--combine: training seed {seed} is in both {owner[seed]} and {path}; each seed may "
                    "come from one sitting only."
                )
            owner[seed] = path
    seeds = list(owner)
    rows = []
    for name in ROWS:
        pairs = zip(studies, paths, strict=True)
        found = [(row, path, study) for study, path in pairs for row in study.rows if row.name == name]
        if not found:
            continue
        if name not in SEEDED_ROWS:
            rows.append(_seedless(name, [(row, path) for row, path, _ in found]))
            continue
        row = combine_seeds(name, [run for row, _, study in found for run in _runs(row, study)])
        have = [run.seed for run in row.per_seed]
        if len(seeds) > 1 and have != seeds:
            _add_note(row, f"seeds {', '.join(map(str, have))} only")
        rows.append(row)
    transfer, seen = [], set()
    for study in studies:
        for result in study.transfer:
            key = (result.model, result.prompt, result.seed)
            if key not in seen:
                seen.add(key)
                transfer.append(result)
    sittings = [_sitting(study, path, command) for (study, command), path in zip(loaded, paths, strict=True)]
    settings = first.settings | {
        "seeds": seeds or first.settings["seeds"],
        "rows": [row.name for row in rows],
    }
    info = first.info | {
        "wall_seconds": round(sum(study.info.get("wall_seconds") or 0.0 for study in studies), 1),
        "sittings": sittings,
    }
    for key in ("versions", "cpu"):
        if len({json.dumps(study.info.get(key), sort_keys=True) for study in studies}) > 1:
            logger.warning("The sittings ran with different %s; see info.sittings of the JSON.", key)
    return Study(
        settings=settings,
        rows=rows,
        transfer=transfer,
        info=info,
        **{key: getattr(first, key) for key in SHARED_FIELDS},
    )
