"""`make bench`: an end-to-end run on a tiny model (no timing asserted), the busy-machine refusal,
and the derived figures and report of a made-up result."""

from __future__ import annotations

import json
import os

import pytest
import torch

from benchmarks.report import summarize, write_markdown
from benchmarks.speed import main


def test_bench_runs_end_to_end_and_writes_its_json_and_report(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "bench"
    argv = [
        "--only", "trl-bf16", "ours-bf16", "decoding",
        "--warmup_steps", "1", "--steps", "2", "--profile_steps", "1",
        "--eval_samples", "6", "--matmul_seconds", "0.05",
        "--run_dir", str(tmp_path / "no-run"),  # no trained run: the base model decodes
        "--out_dir", str(out),
        "--force",  # the test machine is not quiet; the report says so
        "--model_name_or_path", str(tiny_model_dir("llama")),
        "--train_samples", "48", "--data_dir", str(data_dir),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "speed.json").read_text(encoding="utf-8"))
    trl, ours = report["training"]["trl-bf16"], report["training"]["ours-bf16"]
    for result in (trl, ours):
        assert "error" not in result, result.get("error")
        assert result["timed_steps"] == 2 and result["samples_per_second"] > 0
        assert result["mean_real_tokens_per_batch"] <= result["mean_padded_tokens_per_batch"]
        assert result["peak_memory_mb"] > result["weights_mb"] > 0
        assert result["profile"] and all(0 <= op["share"] <= 1 for op in result["profile"])
        assert 0 < result["startup_seconds"] < result["whole_run_seconds"]
        assert 0 < result["whole_run_samples_per_second"] < result["samples_per_second"]
    # The same adapters and the same learned tokens (label + EOS of each of the 8 samples) in both trainers.
    assert trl["trainable_params"] == ours["trainable_params"] > 0
    assert trl["mean_loss_tokens_per_batch"] == ours["mean_loss_tokens_per_batch"] == 16
    assert set(report["matmul"]["gflops"]) == {"float32", "bfloat16"}
    decoding = report["decoding"]
    assert decoding["samples"] == 6 and decoding["model"].startswith("base model")
    assert set(decoding["modes"]) == {
        "constrained",
        "constrained_unshared",
        "generate",
        "plain_generate_loop",
    }
    assert all(0 <= m["accuracy"] <= 1 for m in decoding["modes"].values())
    assert decoding["modes"]["constrained"]["invalid_rate"] == 0  # constrained decoding always names a label
    assert report["summary"]["pairs"][0]["precision"] == "bf16"
    markdown = (out / "speed.md").read_text(encoding="utf-8")
    assert "| ours-bf16 | ours | bf16 | group_by_length |" in markdown
    assert "--model_name_or_path" in markdown and "| plain_generate_loop |" in markdown
    assert "## Where the time goes" in markdown


def test_bench_refuses_a_busy_machine_without_writing_anything(tmp_path, capsys):
    assert os.getloadavg()[0] > 0  # this test process itself keeps the load above zero
    assert main(["--max_load", "0", "--out_dir", str(tmp_path / "bench")]) == 3
    assert "machine is busy" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def test_bench_names_an_unknown_recipe_key(capsys):
    assert main(["--lora_rank", "4"]) == 2
    assert "lora_rank" in capsys.readouterr().err


def _result(trainer: str, precision: str, samples_per_second: float, gflops: float = 10.0, **extra) -> dict:
    return {
        "trainer": trainer,
        "precision": precision,
        "sampling": "group_by_length" if trainer == "ours" else "random",
        "batch_real_tokens": [400, 400],
        "samples_per_second": samples_per_second,
        "real_tokens_per_second": samples_per_second * 50,
        "mean_real_tokens_per_batch": 400.0,
        "mean_padded_tokens_per_batch": 420.0,
        "seconds_per_step": 8 / samples_per_second,
        "peak_memory_mb": 1000.0 if trainer == "trl" else 500.0,
        "estimated_gflops_per_second": gflops,
        "others_cpu_share": 0.01,
        "startup_seconds": 20.0 if trainer == "trl" else 10.0,
        "whole_run_samples_per_second": samples_per_second / (3 if trainer == "trl" else 2),
        **extra,
    }


def _report(decoding_modes: dict) -> dict:
    shape = "2048x576 @ 576x1536"
    return {
        "command": "python -m benchmarks.speed",
        "date": "2026-01-01 00:00 UTC",
        "machine": {"cpu": "Test CPU", "cores": 2, "native_bf16": True},
        "versions": {"torch": "x"},
        "load_before": 0.3,
        "load_after": 2.0,
        "max_load": 1.5,
        "recipe": "moderation_lora_all.yaml",
        "recipe_overrides": [],
        "model": "smollm2-135m",
        "method": "lora-all",
        "lora_r": 8,
        "lora_alpha": 16,
        "optimizer": "adamw_bnb_8bit",
        "batch_size": 8,
        "warmup_steps": 3,
        "steps": 20,
        "matmul": {
            "gflops": {"float32": {shape: 100.0}, "bfloat16": {shape: 400.0}},
            "torch_threads": 2,
        },
        "training": {
            "trl-fp32": _result("trl", "fp32", 2.0),
            "ours-fp32": _result("ours", "fp32", 3.0, gflops=50.0),
            "trl-bf16": _result("trl", "bf16", 4.0),
            "ours-bf16": _result("ours", "bf16", 6.0),
            "trl-8bit": _result("trl", "8bit", 5.0),
            "ours-8bit": _result("ours", "8bit", 9.0, batch_real_tokens=[400, 380]),
            "trl-8bit-grouped": _result(
                "trl", "8bit", 4.5, sampling="group_by_length", batch_real_tokens=[400, 380]
            ),
            "trl-bf16-grouped": _result(
                "trl", "bf16", 4.8, sampling="group_by_length", batch_real_tokens=[400, 381]
            ),
            "ours-bf16-random": {
                "trainer": "ours",
                "precision": "bf16",
                "sampling": "random",
                "error": "boom",
            },
        },
        "decoding": {
            "samples": 200,
            "batch_size": 16,
            "model": "trained run runs/x",
            "modes": decoding_modes,
        },
    }


def _mode(samples_per_second: float, accuracy: float) -> dict:
    return {
        "samples_per_second": samples_per_second,
        "seconds": 200 / samples_per_second,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "invalid_rate": 0.0,
    }


def test_summary_pairs_each_precision_and_judges_the_targets_against_trls_faster_mode():
    report = _report(
        {"constrained": _mode(30.0, 0.8), "generate": _mode(9.0, 0.8), "plain_generate_loop": _mode(3.0, 0.8)}
    )
    summary = summarize(report)
    assert [(p["precision"], p["speedup_samples"]) for p in summary["pairs"]] == [
        ("fp32", 1.5),
        ("bf16", 1.5),
        ("8bit", 1.8),
    ]
    assert [p["speedup_whole_run"] for p in summary["pairs"]] == [2.25, 2.25, 2.7]
    main_job = summary["main_job_vs_trl"]
    # TRL's faster mode of fp32 / bf16 is bf16 (4.0): 9.0 / 4.0; the 8-bit TRL run is the fastest of any kind.
    # 2.25x is under the 3x target.
    assert (main_job["trl_faster_mode"], main_job["speedup"], main_job["met"]) == ("trl-bf16", 2.25, False)
    assert main_job["speedup_whole_run"] == 3.38  # 4.5 / 1.333 whole-run samples/s (trl-bf16's start-up)
    assert (main_job["trl_fastest_any"], main_job["speedup_vs_fastest_any"]) == ("trl-8bit", 1.8)
    assert summary["matmul_share"]["ours-fp32"] == 0.5  # 50 GFLOP/s of a 100 GFLOP/s fp32 matmul
    assert summary["matmul_share"]["ours-bf16"] == 0.025  # 10 of 400 in bf16
    assert "ours-bf16-random" not in summary["matmul_share"]  # a failed run has no figures
    assert summary["same_batches"] == {
        "trl-8bit-grouped / ours-8bit": True,
        "trl-bf16-grouped / ours-bf16": False,
    }
    assert summary["decoding"]["speedup_vs_generate"] == 3.33 and summary["decoding"]["met"]


@pytest.mark.parametrize(
    ("constrained", "met"),
    [(_mode(20.0, 0.8), False), (_mode(30.0, 0.79), False), (_mode(27.0, 0.8), True)],
    ids=["too-slow", "less-accurate", "both-targets"],
)
def test_decoding_target_needs_the_speed_up_and_equal_accuracy(constrained, met):
    modes = {"constrained": constrained, "generate": _mode(9.0, 0.8), "plain_generate_loop": _mode(3.0, 0.8)}
    assert summarize(_report(modes))["decoding"]["met"] is met


def test_markdown_report_has_every_table_and_marks_failed_and_busy_runs(tmp_path):
    report = _report({"constrained": _mode(30.0, 0.8), "generate": _mode(9.0, 0.8)})
    report["load_before"] = 3.2  # a forced run on a busy machine
    report["summary"] = summarize(report)
    text = write_markdown(tmp_path / "speed.md", report).read_text(encoding="utf-8")
    assert "| ours-8bit | ours | 8bit | group_by_length | 9.00 |" in text
    assert "| ours-bf16-random | ours | bf16 | random | failed (see speed.json) |" in text
    assert "2.25x** the samples/s of TRL's faster mode (`trl-bf16`); target 3.0x: **not met**" in text
    assert "| 1% | 10.0 | 4.50 |" in text  # ours-8bit's others' CPU, start-up s and whole-run samples/s
    assert "| 2048x576 @ 576x1536 | 100.0 | 400.0 |" in text
    assert "| constrained | 30.00 |" in text
    assert "the run was forced and its timings are not reliable" in text
    assert "[memory.md](memory.md)" in text
    assert "trl-8bit-grouped / ours-8bit: yes, trl-bf16-grouped / ours-bf16: no." in text


def test_timed_figures_count_every_accumulated_batch_of_a_step():
    """With gradient accumulation an optimizer step uses several batches: all of their rows count."""
    from types import SimpleNamespace

    from benchmarks.training import _timed_figures

    batch = {"rows": 4, "padded_tokens": 40, "real_tokens": 30, "loss_tokens": 8}
    clock = SimpleNamespace(
        snapshots=[(float(t), None, 0.0) for t in range(4)],  # one per optimizer step, 1 s apart
        warmup_flops=1e9,
    )
    figures = _timed_figures(clock, [batch] * 8, warmup=1, steps=3, accumulation=2)
    assert figures["timed_steps"] == 3 and figures["seconds_per_step"] == 1.0
    assert figures["samples_per_second"] == 8.0  # 2 batches of 4 rows per step
    assert figures["mean_real_tokens_per_batch"] == 60.0  # per optimizer step
    assert figures["batch_real_tokens"] == [60, 60, 60]


def test_whole_run_figures_count_start_up_and_every_step_from_the_launch():
    from types import SimpleNamespace

    from benchmarks.training import _whole_run_figures

    batches = [{"rows": rows} for rows in (1, 2, 3, 4, 5, 6, 100, 100)]  # the last step's are not counted
    # Launched at 100 s, first step at 130 s, steps ending 2 s apart; a step after the measured ones.
    clock = SimpleNamespace(first_step_at=130.0, wall_times=[132.0, 134.0, 136.0, 138.0])
    figures = _whole_run_figures(clock, batches, launched_at=100.0, steps=3, accumulation=2)
    assert figures["startup_seconds"] == 30.0
    assert figures["whole_run_seconds"] == 36.0
    assert figures["whole_run_samples_per_second"] == round(21 / 36, 3)  # 3 steps of 2 batches: 1 + ... + 6


def test_latency_operator_split_counts_matrix_product_flops_per_text():
    """The latency benchmark's profile: a call of 2 texts doing one (4 x 8) @ (8 x 16) product per text."""
    from benchmarks.latency import markdown, operator_split

    weight = torch.randn(8, 16)
    split = operator_split(lambda xs: [x @ weight for x in xs], [[torch.randn(4, 8)] * 2] * 3, texts=6)
    assert split["matmul_gflop_per_text"] == pytest.approx(2 * 4 * 8 * 16 / 1e9)
    assert split["matmul_ms"] > 0 and split["matmul_gflops"] > 0
    report = {"command": "x", "date": "d", "machine": "m", "threads": 2, "load_average": 0.1, "run": "r",
              "messages": 1, "batch_texts": 16, "gemm_gflops": 100.0, "results": [{
                  "setting": "fp32", "prompt_tokens_mean": 9, "template_prefix_tokens": 3,
                  "forward": {"p50_ms": 1}, "predict, no kept cache": {"p50_ms": 2},
                  "predict": {"p50_ms": 1, "p90_ms": 2}, "batch_texts_per_s": 5,
                  "cached_equals_uncached": True, "label_agreement": 1.0,
                  "profile": {"predict": split, "batch": split}}]}  # fmt: skip
    assert "| fp32 | batch of 16 |" in markdown(report)


def test_threads_benchmark_times_a_worker_thread_and_refuses_a_missing_run(tiny_model_dir, tmp_path, capsys):
    from benchmarks.threads import main, measure_way
    from trainer_ext.modeling.loading import load_model
    from trainer_ext.runs.directory import save_run
    from trainer_ext.runs.info import RunInfo
    from trainer_ext.tasks import moderation_task

    assert main(["--run", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "out")]) == 2
    assert "is not a run directory" in capsys.readouterr().err and not (tmp_path / "out").exists()
    base = str(tiny_model_dir("llama"))
    loaded = load_model(base, quantization="none", method="lora-all", dtype="float32")
    info = RunInfo(base_model=base, quantization="none", method="lora-all", dtype="float32")
    run = save_run(tmp_path / "run", loaded.model, loaded.tokenizer, moderation_task(), info)
    assert measure_way("worker", str(run), 5) > 0
    assert main(["--run", str(run), "--messages", "100000", "--out_dir", str(tmp_path / "out")]) == 2
    assert "--messages 100000: the eval split has only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_layout_benchmark_times_every_layout_and_whole_messages(tiny_model_dir, tmp_path, capsys):
    from benchmarks.linear_layout import LAYOUTS, main
    from trainer_ext.modeling import cpu_layout

    if not cpu_layout._PACKING:
        pytest.skip("the prepacked layout needs PyTorch with oneDNN")
    from trainer_ext.modeling.loading import load_model
    from trainer_ext.runs.directory import save_run
    from trainer_ext.runs.info import RunInfo
    from trainer_ext.tasks import moderation_task

    assert main(["--run", str(tmp_path / "nope"), "--force", "--out_dir", str(tmp_path / "out")]) == 2
    assert "is not a run directory" in capsys.readouterr().err and not (tmp_path / "out").exists()
    base = str(tiny_model_dir("llama"))
    loaded = load_model(base, quantization="none", method="lora-all", dtype="float32")
    info = RunInfo(base_model=base, quantization="none", method="lora-all", dtype="float32")
    run = save_run(tmp_path / "run", loaded.model, loaded.tokenizer, moderation_task(), info)
    args = ["--rows", "3", "--rounds", "1", "--calls", "2", "--layers", "2", "--head_copies", "1", "--force"]
    assert main([*args, "--run", str(run), "--messages", "2", "--out_dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "linear_layout.json").read_text())
    assert {r["layer"] for r in report["results"]} >= {"down_proj", "lm_head"}
    assert all(set(r["us"]) == set(LAYOUTS) and min(r["us"].values()) > 0 for r in report["results"])
    assert set(report["messages"]) == {
        "row-major",
        "column-major",
        "weight-first head",
        "prepacked, weight-first head",
    }
    assert "| weight-first head |" in (tmp_path / "out" / "linear_layout.md").read_text()
