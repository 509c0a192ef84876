# The two quick-start commands are `make train` and `make test`; both set up .venv first (idempotent).
# Extra arguments go through ARGS, e.g. `make train ARGS="--lora_r 4 --num_train_epochs 1"`.

VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= trainer_ext/configs/recipes/moderation_lora_all.yaml
ARGS ?=
export VENV

.PHONY: setup setup-dev train test lint space compare bench

setup:  ## the virtual environment: package, extras, CPU torch, embedded model
	scripts/setup.sh

setup-dev:  ## the same, plus the test tools and Chromium
	scripts/setup.sh --dev

train: setup  ## the main job: fine-tune the embedded model on the moderation task, print its metrics
	$(PY) scripts/train.py --config $(RECIPE) $(ARGS)

test: setup-dev  ## the whole test suite (.ci/run runs exactly this)
	$(PY) -m pytest $(ARGS)

lint: setup-dev
	$(VENV)/bin/ruff check .

space: setup  ## the Gradio demo
	$(PY) -m space.app $(ARGS)

compare: setup
	$(PY) scripts/compare.py $(ARGS)

bench: setup
	$(PY) -m benchmarks.speed $(ARGS)
