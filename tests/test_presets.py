"""Every shipped YAML preset is read by the code that uses it, so that no preset can drift from the code."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from trainer_ext.configs import CONFIGS_DIR, available_configs
from trainer_ext.study.settings import ROWS, build_settings, row_argv
from trainer_ext.training.pipeline import prepare_data
from trainer_ext.training.recipe import parse_recipe

YAMLS = [name for name in available_configs() if name.endswith((".yaml", ".yml"))]


def test_every_yaml_has_a_home():
    homes = {name.split("/")[0] for name in YAMLS}
    assert homes == {"recipes", "studies", "accelerate"}
    assert "studies/compare_smollm2.yaml" in YAMLS and "recipes/moderation_lora_all.yaml" in YAMLS


@pytest.mark.parametrize("name", [n for n in YAMLS if n.startswith("recipes/")])
def test_recipe_parses_and_its_data_loads(name, data_dir, tmp_path):
    recipe = parse_recipe(
        ["--config", str(CONFIGS_DIR / name), "--data_dir", str(data_dir), "--output_dir", str(tmp_path)]
    )
    data = prepare_data(recipe)  # files, columns and labels of the recipe, no model
    assert data.task.labels == ["hate", "offensive", "neutral"]
    if recipe.data.train_file == "seed_split/train.csv":  # the reference study's split
        assert len(data.train) == 1000 and len(data.eval) == 200
    else:  # the whole Davidson file: a tenth held out for eval, a tenth of the rest for dev
        assert len(data.train) + len(data.dev) + len(data.eval) == 24_783 and len(data.dev) > 2000
        assert data.report.counts["train"]["hate"] < data.report.counts["train"]["offensive"] / 10


@pytest.mark.parametrize("name", [n for n in YAMLS if n.startswith("studies/")])
def test_study_preset_builds_every_row(name, data_dir, tmp_path):
    settings = build_settings(CONFIGS_DIR / name, {}, [], ["--data_dir", str(data_dir)])
    assert set(settings.rows) <= set(ROWS)
    for row in settings.rows:
        recipe = parse_recipe(row_argv(settings, row, tmp_path / row))
        assert recipe.training.output_dir == str(tmp_path / row)
        for key, value in settings.overrides.get(row, {}).items():
            part = next(p for p in vars(recipe).values() if hasattr(p, key))
            assert getattr(part, key) == value or str(getattr(part, key)) == str(value)


@pytest.mark.parametrize("name", [n for n in YAMLS if n.startswith("accelerate/")])
def test_launch_config_loads_in_accelerate(name):
    config = load_config_from_file(str(CONFIGS_DIR / name))
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.distributed_type is not None
