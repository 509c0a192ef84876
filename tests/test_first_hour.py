"""A new user's first hour, through the real entry points: own task, bad inputs, help, estimates.

Every user-caused error is one line on stderr with exit status 2, and inputs are checked before any
model loads: the cases below name a model that does not exist, so an error about the model would mean
the input was not checked first.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_ext.cli import predict, train
from trainer_ext.cli.estimate import EstimateArguments
from trainer_ext.cli.push import PushArguments
from trainer_ext.study.settings import StudyArguments
from trainer_ext.training.recipe import LIGHT_SETTINGS

REPO = Path(__file__).resolve().parent.parent
NO_MODEL = "/nonexistent/model-dir"


def _run(*argv: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", *argv], input=stdin, capture_output=True, cwd=cwd, env=env, timeout=300
    )


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    return lines[-1]


def test_train_without_arguments_prints_usage_and_starts_nothing():
    done = _run("trainer_ext.cli.train")
    assert done.returncode == 2
    assert b"usage: trainer-ext train --config RECIPE.yaml" in done.stderr and b"Traceback" not in done.stderr


def test_help_answers_without_loading_torch_and_lists_the_projects_keys_first():
    code = (
        "import sys; from trainer_ext.cli.train import main; main(['--help']); "
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    out = done.stdout
    assert done.returncode == 0 and out.strip().endswith("NO_TORCH")
    for key in (
        "--config",
        "--model_name_or_path",
        "--train_file",
        "--labels",
        "--lora_r",
        "--eval_decoding",
    ):
        assert key in out
    assert "--help-all" in out and "--gradient_accumulation_steps" not in out
    assert out.index("--model_name_or_path") < out.index("--eval_decoding")


def test_help_after_a_config_and_the_full_list(capsys):
    recipe = str(REPO / "trainer_ext/configs/recipes/moderation_lora_all.yaml")
    assert train.main(["--config", recipe, "--help"]) == 0
    assert "--config" in capsys.readouterr().out
    assert train.main(["--help-all"]) == 0
    assert "--gradient_accumulation_steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fields",
    [*LIGHT_SETTINGS, EstimateArguments, PushArguments, StudyArguments, predict.PredictArguments],
    ids=lambda cls: cls.__name__,
)
def test_every_option_has_a_help_line(fields):
    for field in dataclasses.fields(fields):
        if field.init:
            assert field.metadata.get("help"), f"{fields.__name__}.{field.name} has no help"


def _csv(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


TWO_CLASSES = "text,label\n" + "fine,good\nbad,bad\n" * 6


@pytest.mark.parametrize(
    ("files", "extra", "message"),
    [
        ({"t.csv": "text,label\n"}, [], r"t.csv: no data rows \(only a header\?\)"),
        ({}, ["--train_file", "missing.csv"], "train_file '/.*/missing.csv' does not exist"),
        (
            {"t.csv": "text,label\na,b\n"},
            ["--eval_file", "nope.csv"],
            "eval_file '/.*/nope.csv' does not exist",
        ),
        ({"t.csv": "text,sentiment\nfine,good\n"}, [], r"t.csv: no row has a label in column 'label'"),
        (
            {"t.csv": "text,label\nfine,good\nbad,\n"},
            [],
            r"t.csv:row 2 \(line 3\): no label in column 'label'",
        ),
        ({"t.csv": TWO_CLASSES}, ["--tune_decision_bias", "true"], "tune_decision_bias needs a dev set"),
        (
            {"t.csv": TWO_CLASSES},
            ["--metric_for_best_model", "f1_mixed"],
            r"metric_for_best_model 'f1_mixed' is not a metric of this task; choose loss or one of accuracy",
        ),
        (
            {"t.csv": TWO_CLASSES},
            ["--class_weights", '{"good": 1, "mixed": 2, "bad": 1}'],
            r"class_weights: \['mixed'\] are not labels of the task; give one weight",
        ),
        ({"t.csv": TWO_CLASSES}, ["--learning_rate", "-1"], "learning_rate must not be negative, got -1"),
        (
            {"t.csv": TWO_CLASSES},
            ["--distractors", "3", "--distractor_pool", "cars", "food", "Cars"],
            "distractors=3 but the pool has only 2 labels",
        ),
        (
            {"t.csv": TWO_CLASSES + "meh,mixed\n"},
            [],
            r"label 'mixed' is not .* a class with a single row .* give every class 2 rows or more",
        ),
        (
            {"t.csv": "text,label\nfine,good\nbad,neutral\n"},
            ["--labels", "good", "bad"],
            "label 'neutral' is not",
        ),
        (
            {"t.csv": "text,label\nfine,good\n"},
            ["--lora_rank", "4"],
            "unknown key 'lora_rank'. Did you mean 'lora_r'",
        ),
        ({"t.csv": "text,label\nfine,good\n"}, ["--per_device_train_batch_size", "0"], "at least 1, got 0"),
        ({"t.csv": "text,label\nfine,good\n"}, ["--labels", "a, b", "c"], "contains a comma"),
        (
            {"t.csv": "text,label\nfine,good\nok,good\n"},
            [],
            r"one label \(\['good'\]\): a classifier needs at least two",
        ),
        ({"t.csv": "text,label\nfine,good\n"}, ["--lora_r", "four"], r"invalid int value: 'four'"),
        (
            {"t.csv": TWO_CLASSES},
            ["--label_smoothing_factor", "-0.1"],
            r"label_smoothing_factor must be between 0 and 1 .* got -0.1",
        ),
        (  # a YAML float for an int key is converted and checked as the command line's text would be
            {"t.csv": TWO_CLASSES, "r.yaml": "pad_to_multiple_of: 2.5\n"},
            ["--config", "r.yaml"],
            r"pad_to_multiple_of.*invalid int value: '2.5'",
        ),
        (
            {"t.csv": TWO_CLASSES, "r.yaml": "release_host_memory:\n"},
            ["--config", "r.yaml"],
            r"'r.yaml': release_host_memory is empty \(null\); give it a value or delete the line",
        ),
        (
            {"t.csv": "text,label\n" + "fine,good\nbad,bad\n" * 6},
            ["--labels", "good, bad"],
            r"model directory '/nonexistent/model-dir' does not exist",
        ),
    ],
)
def test_train_input_errors_come_before_the_model_loads(tmp_path, monkeypatch, capsys, files, extra, message):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        _csv(tmp_path / name, text)
    argv = ["--model_name_or_path", NO_MODEL, "--output_dir", "run"]
    if "--train_file" not in extra:
        argv += ["--train_file", "t.csv"]
    assert train.main(argv + extra) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("trainer-ext train: ")
    assert re.search(message, line), line


def test_numeric_labels_are_pointed_to_label_mapping(tmp_path, caplog):
    from trainer_ext.training.pipeline import prepare_data
    from trainer_ext.training.recipe import parse_recipe

    path = _csv(tmp_path / "n.csv", "text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(10)))
    recipe = parse_recipe(["--train_file", path, "--output_dir", str(tmp_path / "run")])
    with caplog.at_level("WARNING"):
        data = prepare_data(recipe)
    assert data.task.labels == ["0", "1"] and "Map them to words with label_mapping" in caplog.text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--decoding", "generate", "--calibrate", "hello"], "--calibrate needs --decoding constrained"),
        (["--batch_size", "0", "hello"], "--batch_size must be at least 1, got 0"),
        (["--device", "cuda", "hello"], "--device cuda: this torch build has no CUDA support"),
        (["--decoding", "beam", "hello"], "--decoding: unknown value 'beam'"),
        (["--input", "none.csv"], "none.csv: no such file"),
        (["--input", "x.csv", "hello"], "Give texts as arguments or --input, not both"),
        (["--resume", "hello"], "--resume and --overwrite need --output"),
        (["hello"], "--model '/nonexistent/model-dir': no such directory"),
        (["--input", "empty.csv"], "empty.csv: no texts to classify"),
    ],
)
def test_predict_input_errors_come_before_the_model_loads(tmp_path, monkeypatch, capsys, argv, message):
    import torch

    if "cuda" in argv and torch.version.cuda is not None:
        pytest.skip("this torch build has CUDA; the case is the CPU build's")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.csv").write_text("text\n", encoding="utf-8")
    assert predict.main(["--model", NO_MODEL, *argv]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("trainer-ext predict: ") and message in line, line


def test_predict_reads_stdin_and_refuses_latin1_with_the_line():
    done = _run("trainer_ext.cli.predict", "--model", NO_MODEL, stdin="fine\ncafé crème\n".encode("latin-1"))
    assert done.returncode == 2
    line = _one_line(done.stderr.decode())
    assert "standard input, line 2: not UTF-8 text (byte 0xe9)" in line and "iconv" in line


def test_an_existing_output_is_never_overwritten_silently(tmp_path, capsys):
    out = _csv(tmp_path / "preds.csv", "row,text\n1,kept\n")
    assert predict.main(["--model", NO_MODEL, "--output", out, "hello"]) == 2
    assert "exists; pass --resume" in capsys.readouterr().err
    assert Path(out).read_text() == "row,text\n1,kept\n"


def test_predict_asks_a_base_model_for_labels(capsys):
    assert predict.main(["--model", "smollm2-135m", "hello"]) == 2
    assert "is a base model, not a trained run: give the labels" in capsys.readouterr().err
    args, texts = predict.parse(["--model", "m", "--labels", "sport, politics", "a text", "another"])
    assert args.labels == ["sport", "politics"] and texts == ["a text", "another"]


# (CPU, bf16 value, fp16, weights' dtype) -> bf16 autocast, and the lines logged before training: "auto"
# when auto chose false, "slow" for half precision (autocast or weights) whose matmuls are slow on this CPU,
# "hint" for bf16 autocast converted with AVX-512.
CPU_PRECISION_CASES = [
    ("native", "auto", False, "bfloat16", True, ()),
    ("native", "true", False, "bfloat16", True, ()),
    ("avx512", "auto", False, "bfloat16", True, ("hint",)),
    ("avx512", "true", False, "bfloat16", True, ("hint",)),
    ("avx512", "false", False, "float32", False, ()),
    ("avx512", "false", True, "float32", False, ("slow",)),  # fp16 is slow on any CPU
    ("avx2", "auto", False, "float32", False, ("auto",)),
    ("avx2", "AUTO", False, "float32", False, ("auto",)),
    ("avx2", "auto", False, "bfloat16", False, ("auto", "slow")),
    ("avx2", "auto", True, "float32", False, ("auto", "slow")),
    ("avx2", "true", False, "float32", True, ("slow",)),
    ("avx2", "false", False, "bfloat16", False, ("slow",)),
    ("avx2", "false", False, "float32", False, ()),
]
LOGGED = {
    "auto": "bf16: auto -> false",
    "slow": "on a CPU where its matmuls run in a slow fallback",
    "hint": "--bf16 false --dtype float32 trained the main job 1.4x faster",
}


@pytest.mark.parametrize(("cpu", "bf16", "fp16", "dtype", "autocast", "logged"), CPU_PRECISION_CASES)
def test_bf16_auto_follows_the_cpu_and_half_precision_says_when_it_is_slow(
    monkeypatch, caplog, cpu, bf16, fp16, dtype, autocast, logged
):
    import logging

    import torch

    from trainer_ext.modeling import cpu_features, loading
    from trainer_ext.training.pipeline import _hint_cpu_precision
    from trainer_ext.training.recipe import parse_recipe

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for module in (cpu_features, loading):
        monkeypatch.setattr(module, "cpu_supports_bf16", lambda: cpu == "native")
        monkeypatch.setattr(module, "cpu_bf16_is_slow", lambda: cpu == "avx2")
    argv = ["--output_dir", "run", "--use_cpu", "true", f"--bf16={bf16}", "--fp16", str(fp16)]
    recipe = parse_recipe(argv)
    assert recipe.training.bf16 is autocast and recipe.training.fp16 is fp16
    assert recipe.bf16_auto is (bf16.lower() == "auto")
    with caplog.at_level(logging.INFO, logger="trainer_ext"):
        _hint_cpu_precision(recipe, getattr(torch, dtype))
    for key, line in LOGGED.items():
        assert (line in caplog.text) is (key in logged), (key, caplog.text)
    if "auto" in logged:
        computes = "computes in half precision" if "slow" in logged else "training computes in float32"
        assert computes in caplog.text


# (file's bf16, command line, CUDA: None or whether it has bf16 natively, environment) -> the bf16 that
# applies, the use_cpu default set (None: none), whether auto applied. The CPU here has AVX2 only.
RESOLVE_CASES = [
    (None, ["--bf16", "auto"], None, {}, False, True, True),  # float32, and the CPU is used
    (None, ["--bf16=auto"], None, {}, False, True, True),
    ("auto", [], None, {}, False, True, True),
    ("auto", ["--bf16", "true"], None, {}, True, None, False),  # the command line wins
    ("true", ["--bf16", "auto"], None, {}, False, True, True),
    (None, ["--bf16", "auto", "--lora_r", "4", "--bf16", "false"], None, {}, False, None, False),
    (None, ["--bf16", "false", "--bf16=auto"], None, {}, False, True, True),
    (None, ["--bf16", "auto"], True, {}, True, None, True),  # an Ampere GPU
    (None, ["--bf16", "auto"], False, {}, False, None, True),  # a T4 / V100: emulated bf16 is not enough
    (None, ["--bf16", "auto", "--use-cpu", "t"], True, {}, False, None, True),  # the GPU is not used
    (None, ["--bf16", "auto"], True, {"ACCELERATE_USE_CPU": "true"}, False, None, True),
    ("auto", ["--use_cpu"], None, {}, False, None, True),  # a bare flag is true
]


@pytest.mark.parametrize(
    ("file_bf16", "argv", "cuda_bf16", "environ", "bf16", "use_cpu", "auto"), RESOLVE_CASES
)
def test_resolve_auto_bf16(monkeypatch, file_bf16, argv, cuda_bf16, environ, bf16, use_cpu, auto):
    import torch
    from transformers.hf_argparser import string_to_bool

    from trainer_ext.modeling import cpu_features
    from trainer_ext.training.recipe import resolve_auto_bf16

    monkeypatch.setattr(cpu_features, "cpu_bf16_is_slow", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_bf16 is not None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bool(cuda_bf16))
    file_values = {} if file_bf16 is None else {"bf16": file_bf16}
    argv = list(argv)
    assert resolve_auto_bf16(file_values, argv, environ) is auto
    values = [argv[i + 1] for i, a in enumerate(argv) if a == "--bf16"]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--bf16=")]
    values += [str(file_values["bf16"])] if "bf16" in file_values else []
    assert not any(value.lower() == "auto" for value in values)  # every occurrence replaced
    last = next((argv[i + 1] for i in reversed(range(len(argv))) if argv[i] == "--bf16"), None)
    assert string_to_bool(last if last is not None else file_values["bf16"]) is bf16
    assert file_values.get("use_cpu") is use_cpu


def test_a_bad_bf16_value_names_its_choices():
    from trainer_ext.training.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError, match="Command line: bf16 is 'sometimes'; give true, false or auto"):
        parse_recipe(["--output_dir", "run", "--bf16", "sometimes"])


def test_bf16_auto_in_a_recipe_file_and_the_command_line_wins(monkeypatch, tmp_path):
    from trainer_ext.modeling import cpu_features
    from trainer_ext.training.recipe import RecipeError, parse_recipe

    monkeypatch.setattr(cpu_features, "cpu_bf16_is_slow", lambda: True)
    config = tmp_path / "recipe.yaml"
    config.write_text("output_dir: run\nuse_cpu: true\nbf16: auto\n", encoding="utf-8")
    recipe = parse_recipe(["--config", str(config)])
    assert recipe.training.bf16 is False and recipe.bf16_auto
    assert recipe.to_dict().get("bf16", False) is False  # what the run records: the value chosen
    recipe = parse_recipe(["--config", str(config), "--bf16", "true"])
    assert recipe.training.bf16 is True and not recipe.bf16_auto
    with pytest.raises(RecipeError, match="Command line: bf16 is 'sometimes'"):
        parse_recipe(["--config", str(config), "--bf16", "sometimes"])
    config.write_text("output_dir: run\nbf16: maybe\n", encoding="utf-8")
    expected = re.escape(f"Recipe file '{config}': bf16 is 'maybe'; give true, false or auto")
    with pytest.raises(RecipeError, match=expected):
        parse_recipe(["--config", str(config)])
