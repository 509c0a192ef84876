"""LabelTrainer: the completion-only loss, label metrics, training end to end, resuming, and 2-process DDP."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA_DIR
from safetensors.torch import load_file

from trainer_ext.data import Example
from trainer_ext.inference.classifier import Classifier
from trainer_ext.tasks import LabelTask
from trainer_ext.training.collator import LabelCollator
from trainer_ext.training.tokenization import encode_example, label_token_ids
from trainer_ext.training.trainer import LabelDataset, LabelTrainer, LabelTrainingArguments, completion_loss

REPO = Path(__file__).resolve().parents[1]
TASK = LabelTask(["hate", "offensive", "neutral"])


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_completion_loss_equals_full_logits_loss(tiny_model, arch):
    """Gathering only the completion positions gives exactly the loss of the full (B, T, V) logits."""
    model, tokenizer = tiny_model(arch)
    samples = [
        ("you are great", "neutral"),
        ("a much longer message with many more words in it", "offensive"),
    ]
    batch = LabelCollator(tokenizer)([encode_example(tokenizer, TASK, t, lb, 64) for t, lb in samples])
    loss, _ = completion_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    expected = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_label_smoothing_factor_is_transformers_label_smoother_on_the_completion(tiny_model, tmp_path):
    """`label_smoothing_factor` reaches the loss: equal to transformers' `LabelSmoother` over full logits."""
    from transformers.trainer_pt_utils import LabelSmoother

    model, tokenizer = tiny_model("llama")
    samples = [encode_example(tokenizer, TASK, ex.text, ex.label, 64) for ex in _examples(1)]
    batch = LabelCollator(tokenizer)(samples)
    args = LabelTrainingArguments(
        output_dir=str(tmp_path), label_smoothing_factor=0.1, use_cpu=True, disable_tqdm=True
    )
    trainer = LabelTrainer(model=model, args=args, task=TASK, processing_class=tokenizer)
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch)
        plain, _ = completion_loss(model, batch)
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = LabelSmoother(epsilon=0.1)(outputs, batch["labels"], shift_labels=True)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert abs(ours.item() - plain.item()) > 1e-3  # smoothing changed it


def test_completion_loss_counts_eos_when_pad_is_eos(tiny_model):
    """pad == EOS: the completion's EOS is a target, the padding after it is not."""
    model, tokenizer = tiny_model("gpt2")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    samples = [
        encode_example(tokenizer, TASK, "hi", "hate", 64),
        encode_example(tokenizer, TASK, "hello " * 9, "hate", 64),
    ]
    batch = LabelCollator(tokenizer)(samples)
    completion = label_token_ids(tokenizer, TASK)["hate"]  # label tokens + EOS
    assert int((batch["labels"] != -100).sum()) == 2 * len(completion)
    assert (
        batch["labels"] == tokenizer.eos_token_id
    ).sum() == 2  # one learned EOS per sample, padding masked


def _examples(n_per_label: int) -> list[Example]:
    """A learnable toy task: the label is a word of the message."""
    words = {"hate": "storm", "offensive": "thunder", "neutral": "sunshine"}
    out = []
    for i in range(n_per_label):
        for label, word in words.items():
            out.append(Example(f"today {word} number {i}", label, f"toy:{len(out)}"))
    return out


def test_training_teaches_a_tiny_model_the_answer_format(tiny_model, tmp_path):
    model, tokenizer = tiny_model("llama")
    from trainer_ext.modeling.methods import LoraSettings, apply_method

    model = apply_method(model, LoraSettings(method="full"))
    args = LabelTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=30,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        optim="adamw_torch",
        eval_decoding="both",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    train, held_out = (
        LabelDataset(_examples(8), tokenizer, TASK, 64),
        LabelDataset(_examples(3), tokenizer, TASK, 64),
    )
    trainer = LabelTrainer(model=model, args=args, task=TASK, processing_class=tokenizer, train_dataset=train)
    before = trainer.evaluate(held_out)
    trainer.train()
    after = trainer.evaluate(held_out)
    assert before["eval_generate_invalid_rate"] > 0.9  # a random model does not answer with labels
    assert after["eval_generate_invalid_rate"] == 0.0  # it learned the completion format, EOS included
    assert after["eval_loss"] < before["eval_loss"] / 2
    # Constrained decoding is never invalid, whatever the model.
    assert before["eval_invalid_rate"] == after["eval_invalid_rate"] == 0.0


def _train_command(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer_ext.cli.train",
        "--model_name_or_path",
        str(model_dir),
        "--quantization",
        "none",
        "--data_dir",
        str(DATA_DIR),
        "--train_file",
        "seed_split/train.csv",
        "--eval_file",
        "seed_split/val.csv",
        "--decode_html",
        "true",
        "--labels",
        "hate",
        "offensive",
        "neutral",
        "--train_samples",
        "48",
        "--eval_samples",
        "21",
        "--max_length",
        "96",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "8",
        "--optim",
        "adamw_torch",
        "--lora_dropout",
        "0",
        "--learning_rate",
        "1e-3",
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        *extra,
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("llama")
    common = ("--max_steps", "12", "--save_strategy", "steps", "--save_steps", "4", "--seed", "3")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    subprocess.run(_train_command(model_dir, straight, *common), env=_env(), check=True, capture_output=True)
    proc = subprocess.Popen(
        _train_command(model_dir, broken, *common),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = broken / "checkpoint-4"
    deadline = time.time() + 300
    while not (checkpoint / "trainer_state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # killed mid-training, right after its first checkpoint
    proc.wait()
    assert not (broken / "metrics.json").exists()
    subprocess.run(
        _train_command(model_dir, broken, *common, "--resume_from_checkpoint", str(checkpoint)),
        env=_env(),
        check=True,
        capture_output=True,
    )
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(broken / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, broken))
    assert ma["eval_accuracy"] == mb["eval_accuracy"]
    assert ma["eval_loss"] == pytest.approx(mb["eval_loss"], rel=1e-4)


def test_two_process_ddp_run_matches_single_process_predictions(tiny_model_dir, tmp_path):
    """accelerate launch with the shipped CPU DDP config; eval metrics equal a 1-process re-evaluation."""
    model_dir = tiny_model_dir("gpt2")
    out = tmp_path / "ddp"
    config = REPO / "trainer_ext" / "configs" / "accelerate" / "cpu_ddp2.yaml"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--main_process_port",
        "0",
        "-m",
        "trainer_ext.cli.train",
        *_train_command(model_dir, out, "--num_train_epochs", "1", "--eval_decoding", "both")[3:],
    ]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = (out / "predictions.csv").read_text().splitlines()
    assert (
        len(predictions) == 1 + 21
    )  # every eval sample once: none lost, none duplicated by the sampler padding
    clf = Classifier.from_pretrained(out)
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    single = clf.predict([r["text"] for r in rows])
    assert [p.label for p in single] == [r["predicted"] for r in rows]
    accuracy = sum(p.label == r["gold"] for p, r in zip(single, rows, strict=True)) / len(rows)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)


def test_report_to_tensorboard_writes_event_files(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))  # transformers 5's place for it
    model, tokenizer = tiny_model("gpt2")
    from trainer_ext.modeling.methods import LoraSettings, apply_method

    model = apply_method(model, LoraSettings(method="lora-attention", lora_dropout=0.0))
    args = LabelTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        optim="adamw_torch",
        report_to=["tensorboard"],
        use_cpu=True,
        disable_tqdm=True,
    )
    train = LabelDataset(_examples(3), tokenizer, TASK, 64)
    LabelTrainer(model=model, args=args, task=TASK, processing_class=tokenizer, train_dataset=train).train()
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))


def test_norms_method_trains_an_8bit_model(tiny_model_dir, tmp_path):
    """The study's `norms` row: only the 1-D weights of an 8-bit model are trained, and they change."""
    from trainer_ext.modeling.loading import load_model

    loaded = load_model(str(tiny_model_dir("llama")), quantization="8bit", method="norms", dtype="float32")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert before and all(p.ndim == 1 for p in before.values())
    args = LabelTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        optim="adamw_torch",
        use_cpu=True,
        disable_tqdm=True,
    )
    train = LabelDataset(_examples(2), loaded.tokenizer, TASK, 64)
    LabelTrainer(
        model=loaded.model, args=args, task=TASK, processing_class=loaded.tokenizer, train_dataset=train
    ).train()
    after = dict(loaded.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)


def _saved_bytes_and_grads(run):
    """Run `run()` -> `(loss, model)` and backward: the bytes of the distinct storages autograd kept for
    the backward pass (activations and casts; the int8 weights held by every run are left out), the loss
    and the gradients of the trainable parameters."""
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.dtype != torch.int8:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, model = run()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return sum(storages.values()), loss.detach(), grads


def test_bf16_loss_reads_adapter_inputs_without_fp32_copies(tiny_model_dir, tmp_path):
    """bf16 autocast with PEFT's input casts off: the loss and gradients of PEFT's own casts, bit for bit,
    with fewer bytes kept for the backward pass (no fp32 copy of each adapter's input)."""
    from trainer_ext.modeling.loading import load_model
    from trainer_ext.modeling.settings import LoraSettings

    lora = LoraSettings(method="lora-all", lora_dropout=0.0)
    loaded = load_model(str(tiny_model_dir("llama")), quantization="8bit", lora=lora, dtype="bfloat16")
    model, tokenizer = loaded.model, loaded.tokenizer
    torch.manual_seed(0)
    with torch.no_grad():  # adapters that change the output, so that the forward pass is compared too
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(std=0.02)
    args = LabelTrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, disable_tqdm=True)
    trainer = LabelTrainer(model=model, args=args, task=TASK, processing_class=tokenizer)
    samples = [encode_example(tokenizer, TASK, ex.text, ex.label, 64) for ex in _examples(2)]
    batch = LabelCollator(tokenizer)(samples)
    model.train()

    def with_peft_casts():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return completion_loss(model, batch, share_prefix=True)[0], model

    def ours():
        return trainer.compute_loss(model, batch), model

    ref_bytes, ref_loss, ref_grads = _saved_bytes_and_grads(with_peft_casts)
    our_bytes, our_loss, our_grads = _saved_bytes_and_grads(ours)
    assert torch.equal(our_loss, ref_loss)
    assert ref_grads.keys() == our_grads.keys() and ref_grads
    assert all(torch.equal(our_grads[n], ref_grads[n]) for n in ref_grads)
    assert our_bytes < ref_bytes, (our_bytes, ref_bytes)
    # The casts are back on afterwards (inference without autocast needs them).
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


@pytest.mark.parametrize("share_prefix", [True, False])
def test_max_tokens_per_pass_gives_the_whole_batch_loss_and_gradients(tiny_model, tmp_path, share_prefix):
    """A batch over `max_tokens_per_pass` runs as passes of fewer rows: the same loss and gradients."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    model, tokenizer = tiny_model("llama")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():  # adapters that change the output, so that their gradients depend on the input
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    samples = [encode_example(tokenizer, TASK, ex.text, ex.label, 64) for ex in _examples(3)][:5]
    batch = LabelCollator(tokenizer)(samples)
    rows, length = batch["input_ids"].shape
    count = int((batch["labels"][:, 1:] != -100).sum())  # the batch's completion tokens

    def step(budget):
        args = LabelTrainingArguments(
            output_dir=str(tmp_path),
            use_cpu=True,
            disable_tqdm=True,
            report_to="none",
            max_tokens_per_pass=budget,
            share_prompt_prefix=share_prefix,
        )
        trainer = LabelTrainer(model=model, args=args, task=TASK, processing_class=tokenizer)
        passes = []
        run_pass = Trainer.training_step

        def spy(self, model, inputs, num_items_in_batch=None):  # the passes Trainer.training_step runs
            passes.append((len(inputs["input_ids"]), len(inputs["labels"]), len(inputs["attention_mask"])))
            return run_pass(self, model, inputs, num_items_in_batch)

        model.zero_grad()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Trainer, "training_step", spy)
            loss = trainer.training_step(model, dict(batch), count)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss, grads, passes

    whole_loss, whole_grads, whole_passes = step(None)
    split_loss, split_grads, split_passes = step(2 * length)  # passes of two rows
    assert rows == 5 and whole_passes == [(5, 5, 5)]
    assert split_passes == [(2, 2, 2), (2, 2, 2), (1, 1, 1)]
    torch.testing.assert_close(split_loss, whole_loss, atol=1e-6, rtol=1e-5)
    assert whole_grads.keys() == split_grads.keys() and whole_grads
    for name in whole_grads:
        torch.testing.assert_close(split_grads[name], whole_grads[name], atol=1e-6, rtol=1e-4)


def test_training_logs_how_many_batches_ran_as_passes(tiny_model, tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_model("llama")
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    caplog.set_level("INFO", logger="trainer_ext.training.trainer")

    def train(budget):
        args = LabelTrainingArguments(
            output_dir=str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=4,
            optim="adamw_torch",
            use_cpu=True,
            disable_tqdm=True,
            report_to="none",
            save_strategy="no",
            max_tokens_per_pass=budget,
        )
        train_set = LabelDataset(_examples(3), tokenizer, TASK, 64)
        LabelTrainer(
            model=model, args=args, task=TASK, processing_class=tokenizer, train_dataset=train_set
        ).train()
        return [r.getMessage() for r in caplog.records if "max_tokens_per_pass" in r.getMessage()]

    assert train(100_000) == []
    assert train(8) == ["2 batch(es) over max_tokens_per_pass=8 padded tokens ran as passes of fewer rows."]
