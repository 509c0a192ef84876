"""Model cards, pushing runs to the Hub and loading them back (against the stand-in Hub of hub_server.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hub_server import fake_hub_fixture  # noqa: F401  (provides the `fake_hub` fixture)
from huggingface_hub import HfApi, ModelCard, constants

from trainer_ext.hub import HubError, download_model_dir, push_run, push_space, select_run_files
from trainer_ext.hub.cards import MISSING, render_model_card, render_space_card
from trainer_ext.runs.info import RunInfo
from trainer_ext.tasks import moderation_task

TOKENIZERS_DIR = Path(__file__).resolve().parents[2] / "shared" / "tokenizers"
METRICS = {"eval_accuracy": 0.615, "eval_macro_f1": 0.5871, "eval_invalid_rate": 0.0, "eval_samples": 200}
RUN = {
    "base_model": "smollm2-135m",
    "base_model_hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "method": "lora-all",
    "quantization": "8bit",
    "optimizer": "adamw_bnb_8bit",
    "trainable_params": 4884480,
    "total_params": 139400000,
    "lora": {
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "v_proj"],
    },
    "training": {"learning_rate": 0.0002, "num_train_epochs": 2, "per_device_train_batch_size": 8, "seed": 7},
    "data": {"train_file": "/data/seed_split/train.csv", "eval_file": "/data/seed_split/val.csv"},
    "sources": [
        {"split": "train", "rows": 1000, "path": "/data/seed_split/train.csv"},
        {"split": "eval", "rows": 200, "path": "/data/seed_split/val.csv"},
    ],
    "versions": {"transformers": "5.23.0", "peft": "0.21.2", "torch": "2.13.0"},
}


@pytest.fixture(scope="module", name="tiny_base")
def tiny_base_fixture(tmp_path_factory) -> Path:
    """A saved 2-layer GPT-2 (random weights) with the GPT-2 tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZERS_DIR / "gpt2"))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", name="run_template")
def run_template_fixture(tiny_base, tmp_path_factory) -> Path:
    """A run directory as training writes it (through trainer_ext's own writers): a tiny GPT-2 with a
    LoRA adapter whose weights are perturbed so that it changes the predictions."""
    from trainer_ext.evaluation.reports import plot_confusion_matrix, write_metrics
    from trainer_ext.modeling.loading import load_model
    from trainer_ext.modeling.methods import LoraSettings
    from trainer_ext.runs.directory import save_run

    lora = LoraSettings(method="lora-attention", lora_r=4, lora_alpha=8)
    loaded = load_model(str(tiny_base), quantization="none", method=lora.method, lora=lora, device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    out = tmp_path_factory.mktemp("run")
    values = {**RUN, "base_model": str(tiny_base), "quantization": "none", "method": lora.method}
    del values["base_model_hub_id"]  # a local base model has none
    save_run(out, loaded.model, loaded.tokenizer, moderation_task(), RunInfo.from_dict(values))
    write_metrics(out, METRICS)
    plot_confusion_matrix(out, [[30, 5, 3], [4, 20, 6], [2, 3, 27]], moderation_task().labels)
    (out / "predictions.csv").write_text("text,gold,predicted\nsome tweet,neutral,neutral\n")
    torch.save({"not": "weights"}, out / "training_args.bin")
    (out / "checkpoint-10").mkdir()
    torch.save({}, out / "checkpoint-10" / "optimizer.pt")
    return out


@pytest.fixture(name="run_dir")
def run_dir_fixture(run_template, tmp_path) -> Path:
    """A fresh copy of the run directory, free to modify."""
    return Path(shutil.copytree(run_template, tmp_path / "run"))


def _card_dir(tmp_path: Path, run: dict | None = RUN, metrics: dict | None = METRICS) -> Path:
    out = tmp_path / "card-run"
    out.mkdir()
    moderation_task().save(out)
    for name, content in (("run.json", run), ("metrics.json", metrics)):
        if content is not None:
            (out / name).write_text(json.dumps(content))
    (out / "adapter_config.json").write_text(
        '{"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}'
    )
    (out / "confusion_matrix.png").write_bytes(b"\x89PNG")
    return out


def test_model_card_front_matter_carries_metadata_and_metrics(tmp_path):
    card = render_model_card(_card_dir(tmp_path), "alice/moderation")
    data = card.data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (data.library_name, data.pipeline_tag, data.license) == (
        "peft",
        "text-classification",
        "apache-2.0",
    )
    assert data.datasets is None  # local files were read, not the Hub data set
    assert {"trainer_ext", "lora", "8bit", "bitsandbytes"} <= set(data.tags)
    scores = {result.metric_type: result.metric_value for result in data.eval_results}
    assert scores == {"accuracy": 0.615, "f1": 0.5871}
    assert all(
        result.dataset_type == "custom" and result.dataset_name == "val" for result in data.eval_results
    )


def test_model_card_body_documents_labels_prompt_recipe_and_bias(tmp_path):
    text = str(render_model_card(_card_dir(tmp_path), "alice/moderation"))
    for expected in (
        '| `hate` | `" hate"` |',
        "Message: {text}\n\nCategory:",
        'Classifier.from_pretrained("alice/moderation")',
        "| method | lora-all |",
        "| optimizer | adamw_bnb_8bit |",
        "| trainable parameters | 4,884,480 (3.50% of 139,400,000) |",
        "| lora_target_modules | q_proj, v_proj |",
        "| learning_rate | 0.0002 |",
        "| accuracy | 0.615 |",
        "![Confusion matrix on the evaluation split](confusion_matrix.png)",
        "- peft 0.21.2",
        "African-American English",
        "Davidson, Bhattacharya & Weber (2019)",
        "local file `train.csv`, 1,000 examples",
        "local file `val.csv`, 200 examples",
    ):
        assert expected in text, expected
    assert MISSING not in text


def test_model_card_names_a_hub_dataset_the_run_read(tmp_path):
    hub = [
        {"split": split, "rows": rows, "hub_dataset": "tdavidson/hate_speech_offensive"}
        for split, rows in (("train", 900), ("eval", 100))
    ]
    card = render_model_card(_card_dir(tmp_path, run={**RUN, "data": {}, "sources": hub}))
    assert card.data.datasets == ["tdavidson/hate_speech_offensive"]
    assert all(r.dataset_type == "tdavidson/hate_speech_offensive" for r in card.data.eval_results)
    assert "Hub dataset `tdavidson/hate_speech_offensive`, 900 examples" in str(card)


def test_model_card_of_other_data_carries_no_dataset_default(tmp_path):
    # A run on local news headlines: the card names those files and nothing of the moderation data set.
    bbc = [
        {"split": "train", "rows": 40, "path": "/work/news/train_headlines.csv"},
        {"split": "eval", "rows": 10, "path": "/work/news/train_headlines.csv", "held_out": True},
    ]
    run = {**RUN, "data": {"train_file": "/work/news/train_headlines.csv"}, "sources": bbc}
    card = render_model_card(_card_dir(tmp_path, run=run))
    text = str(card)
    assert card.data.datasets is None
    assert "hate_speech_offensive" not in text and "Davidson" not in text and "African-American" not in text
    assert "local file `train_headlines.csv`, 40 examples" in text
    assert "(held out of the training file), 10 examples" in text
    assert "The training data of this model are not documented here" in text


def test_a_pushed_run_json_carries_no_local_path(run_dir):
    result = push_run(run_dir, "alice/tiny", dry_run=True)
    shared = json.loads(result.uploads["run.json"])
    text = json.dumps(shared)
    assert "/data/" not in text and str(run_dir) not in text
    assert [source["path"] for source in shared["sources"]] == ["train.csv", "val.csv"]
    assert shared["base_model"] == RunInfo.load(run_dir).base_model  # no Hub id: kept to stay loadable


def test_model_card_never_takes_a_local_path_for_the_base_model(tmp_path):
    local = tmp_path / "work" / "tiny-model"
    local.mkdir(parents=True)
    run = {**RUN, "base_model": str(local)}
    del run["base_model_hub_id"]
    out = _card_dir(tmp_path, run=run)
    (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(local)}))
    card = render_model_card(out)
    assert card.data.base_model is None
    assert str(local) not in str(card) and "a local model (`tiny-model`)" in str(card)


def test_model_card_renders_visible_defaults_when_run_files_are_missing(tmp_path):
    out = _card_dir(tmp_path, run=None, metrics=None)
    (out / "confusion_matrix.png").unlink()
    card = render_model_card(out)
    text = str(card)
    assert card.data.eval_results is None and card.data.datasets is None
    assert "| optimizer | [More Information Needed] |" in text
    assert "Confusion matrix: [More Information Needed]" in text
    assert "The training data of this model are not documented here" in text
    assert card.data.model_name == "card-run"


def test_model_card_refuses_a_broken_run_file_naming_it(tmp_path):
    out = _card_dir(tmp_path)
    (out / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metrics\.json is not valid JSON"):
        render_model_card(out)


def test_select_run_files_publishes_only_safe_run_files(run_dir):
    names = [path.name for path in select_run_files(run_dir)]
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "task.json",
        "run.json",
        "metrics.json",
    } <= set(names)
    assert {"tokenizer.json", "tokenizer_config.json", "confusion_matrix.png"} <= set(names)
    assert not {"predictions.csv", "training_args.bin", "optimizer.pt", "README.md"} & set(names)


def test_pickled_weights_are_refused_unless_allowed(run_dir):
    (run_dir / "adapter_model.safetensors").rename(run_dir / "adapter_model.bin")
    with pytest.raises(HubError, match=r"only pickled weights \(adapter_model\.bin\).*--allow_pickle"):
        select_run_files(run_dir)
    names = [path.name for path in select_run_files(run_dir, allow_pickle=True)]
    assert "adapter_model.bin" in names and "training_args.bin" not in names


def test_dry_run_lists_files_and_card_without_any_network_call(run_dir, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any call would fail
    result = push_run(run_dir, "alice/tiny", dry_run=True)
    assert result.dry_run and result.commit_url is None
    assert "README.md" in result.files and "adapter_model.safetensors" in result.files
    assert result.card.data.model_name == "alice/tiny"


def test_push_then_load_round_trips_the_run(fake_hub, run_dir, tmp_path):
    token = fake_hub.add_user("alice")
    result = push_run(run_dir, "alice/tiny", token=token)
    assert result.commit_oid == fake_hub.branch_head("alice/tiny")

    card = ModelCard.load("alice/tiny")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "accuracy": 0.615,
        "f1": 0.5871,
    }
    local = download_model_dir("alice/tiny", cache_dir=tmp_path / "cache")
    for name in ("adapter_model.safetensors", "adapter_config.json", "task.json", "tokenizer.json"):
        assert (local / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert not (local / "predictions.csv").exists()


def test_private_repo_is_invisible_without_the_token(fake_hub, run_dir, tmp_path, monkeypatch):
    token = fake_hub.add_user("alice")
    push_run(run_dir, "alice/secret", private=True, token=token)
    with pytest.raises(HubError, match="repository not found") as error:
        download_model_dir("alice/secret", cache_dir=tmp_path / "anonymous")
    assert "private" in str(error.value)
    monkeypatch.setenv("HF_TOKEN", token)
    assert (download_model_dir("alice/secret", cache_dir=tmp_path / "owner") / "task.json").is_file()


def test_wrong_token_is_rejected_with_a_clear_message(fake_hub, run_dir, tmp_path):
    wrong = "hf_" + "x" * 32
    with pytest.raises(
        HubError, match=r"the token given was rejected \(401: invalid or expired\); set HF_TOKEN"
    ) as error:
        push_run(run_dir, "alice/tiny", token=wrong)
    assert wrong not in str(error.value)
    push_run(run_dir, "alice/tiny", token=fake_hub.add_user("alice"))
    with pytest.raises(HubError, match=r"the token given was rejected \(401"):
        download_model_dir("alice/tiny", token=wrong, cache_dir=tmp_path / "cache")


def test_missing_token_and_unreachable_hub_give_clear_messages(run_dir, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="No Hugging Face token found; set HF_TOKEN or run `hf auth login`"):
        push_run(run_dir, "alice/tiny")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubError, match="cannot be reached and no cached copy fits"):
        download_model_dir("alice/tiny", cache_dir=tmp_path / "cache")


def test_missing_repo_and_revision_give_clear_messages(fake_hub, run_dir, tmp_path):
    token = fake_hub.add_user("alice")
    with pytest.raises(HubError, match="alice/nothing: repository not found"):
        download_model_dir("alice/nothing", token=token, cache_dir=tmp_path / "cache")
    push_run(run_dir, "alice/tiny", token=token)
    with pytest.raises(HubError, match="Revision 'v9' not found in alice/tiny"):
        download_model_dir("alice/tiny", revision="v9", token=token, cache_dir=tmp_path / "cache")


def test_push_to_a_branch_leaves_main_unchanged(fake_hub, run_dir, tmp_path):
    token = fake_hub.add_user("alice")
    push_run(run_dir, "alice/tiny", token=token)
    main_head = fake_hub.branch_head("alice/tiny")
    (run_dir / "metrics.json").write_text(json.dumps({**METRICS, "eval_accuracy": 0.9}))
    result = push_run(run_dir, "alice/tiny", revision="experiment", token=token)

    assert fake_hub.branch_head("alice/tiny") == main_head
    assert fake_hub.branch_head("alice/tiny", "experiment") == result.commit_oid != main_head
    on_branch = download_model_dir("alice/tiny", revision="experiment", token=token, cache_dir=tmp_path / "c")
    on_main = download_model_dir("alice/tiny", token=token, cache_dir=tmp_path / "c")
    assert json.loads((on_branch / "metrics.json").read_text())["eval_accuracy"] == 0.9
    assert json.loads((on_main / "metrics.json").read_text())["eval_accuracy"] == 0.615
    assert 'revision="experiment"' in (on_branch / "README.md").read_text()


def test_download_refuses_a_repo_with_only_pickled_weights(fake_hub, tmp_path):
    token = fake_hub.add_user("alice")
    api = HfApi(token=token)
    api.create_repo("alice/pickled")
    for name, content in (
        ("adapter_model.bin", b"\x80\x04pickle"),
        ("training_args.bin", b"\x80"),
        ("task.json", b"{}"),
    ):
        api.upload_file(path_or_fileobj=content, path_in_repo=name, repo_id="alice/pickled")
    with pytest.raises(HubError, match=r"only pickled weights \(adapter_model\.bin\).*allow_pickle=True"):
        download_model_dir("alice/pickled", cache_dir=tmp_path / "cache")
    local = download_model_dir("alice/pickled", allow_pickle=True, cache_dir=tmp_path / "cache")
    assert (local / "adapter_model.bin").is_file() and not (local / "training_args.bin").exists()


def test_token_is_never_logged_nor_uploaded(fake_hub, run_dir, caplog):
    token = fake_hub.add_user("alice")
    with caplog.at_level(logging.DEBUG):
        result = push_run(run_dir, "alice/tiny", token=token)
    assert token not in caplog.text
    assert all(token.encode() not in (source if isinstance(source, bytes) else Path(source).read_bytes())
               for source in result.uploads.values())  # fmt: skip
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "notes": {"hub_token": token}}))
    with pytest.raises(HubError, match="run.json contains your Hugging Face token") as error:
        push_run(run_dir, "alice/tiny", token=token)
    assert token not in str(error.value)


def test_local_base_model_path_is_replaced_by_its_hub_id(fake_hub, run_dir, tmp_path):
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "base_model_hub_id": "openai-community/gpt2"}))
    result = push_run(run_dir, "alice/tiny", dry_run=True)
    pushed = json.loads(result.uploads["adapter_config.json"])
    assert pushed["base_model_name_or_path"] == "openai-community/gpt2"
    assert result.card.data.base_model == "openai-community/gpt2"


def test_space_push_uploads_the_app_with_its_card(fake_hub, tmp_path):
    space = tmp_path / "space"
    (space / "__pycache__").mkdir(parents=True)
    (space / "app.py").write_text("import gradio\n")
    (space / "requirements.txt").write_text("gradio\n")
    (space / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (space / "README.md").write_text("---\ntitle: Tweet moderation\nemoji: 🛡️\nsdk: gradio\n---\nold body\n")
    card = render_space_card(space, "alice/demo", model_repo_id="alice/tiny")
    assert (card.data.title, card.data.sdk, card.data.models) == (
        "Tweet moderation",
        "gradio",
        ["alice/tiny"],
    )
    assert "old body" in str(card) and "- [alice/tiny](https://huggingface.co/alice/tiny)" in str(card)

    token = fake_hub.add_user("alice")
    result = push_space(space, "alice/demo", model_repo_id="alice/tiny", token=token)
    remote = set(HfApi().list_repo_files("alice/demo", repo_type="space"))
    # The demo package under space/, a launcher app.py at the root, and the library with its card templates.
    assert {"app.py", "space/app.py", "requirements.txt", "README.md", "trainer_ext/hub/repo.py"} <= remote
    assert "trainer_ext/hub/templates/model_card.md" in remote
    launcher = HfApi().hf_hub_download("alice/demo", "app.py", repo_type="space")
    assert "from space.app import main" in Path(launcher).read_text()
    assert not any("__pycache__" in name for name in remote)
    assert HfApi().space_info("alice/demo").sdk == "gradio"
    assert result.commit_oid == fake_hub.branch_head("alice/demo", repo_type="space")
    variables = HfApi(token=token).get_space_variables("alice/demo")
    assert variables["TRAINER_EXT_SPACE_ADAPTER"].value == "alice/tiny"


def test_a_downloaded_run_loads_offline_from_the_cache(fake_hub, run_dir, tmp_path, monkeypatch):
    push_run(run_dir, "alice/tiny", token=fake_hub.add_user("alice"))
    online = download_model_dir("alice/tiny", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert download_model_dir("alice/tiny", cache_dir=tmp_path / "cache") == online
    with pytest.raises(HubError, match="cannot be reached and no cached copy fits"):
        download_model_dir("alice/tiny", cache_dir=tmp_path / "empty-cache")


def test_a_pushed_run_predicts_exactly_what_the_local_run_predicts(fake_hub, run_dir, tmp_path, monkeypatch):
    from trainer_ext.inference.classifier import Classifier

    token = fake_hub.add_user("alice")
    push_run(run_dir, "alice/tiny", private=True, token=token)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    texts = ["have a lovely day", "you are the worst", "what a match last night", "ok"]
    local = Classifier.from_pretrained(run_dir, quantization="none", device="cpu").predict(texts)
    remote = Classifier.from_pretrained("alice/tiny", quantization="none", device="cpu").predict(texts)
    assert [(p.label, p.probs) for p in remote] == [(p.label, p.probs) for p in local]
    base_model = json.loads((run_dir / "run.json").read_text())["base_model"]
    base = Classifier.from_base(base_model, moderation_task(), quantization="none", device="cpu").predict(
        texts
    )
    assert [p.probs for p in base] != [p.probs for p in local]  # the adapter was loaded, not just the base
    assert (tmp_path / "cache").is_dir()  # and the weights came through the Hub cache


def test_a_missing_card_template_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"Card template .*nowhere\.md not found; pass template_path"):
        render_model_card(_card_dir(tmp_path), template_path=tmp_path / "nowhere.md")


def test_a_mistyped_local_path_read_as_a_hub_id_is_pointed_out(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hint = r"If you meant a local directory: '.*/runs/nope' does not exist \(though 'runs' does\); check"
    with pytest.raises(HubError, match=hint):
        download_model_dir("runs/nope", cache_dir=tmp_path / "cache")
