# One command per job. `make book` and `make test` set up .venv on first use.
SHELL := /bin/bash
# Quieter TensorFlow start-up in logs and executed notebooks.
export TF_CPP_MIN_LOG_LEVEL := 2
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/cxr
DATASET := data/dataset
BACKBONES := vgg19 mobilenet inception_v3 xception inception_resnet_v2
# Extra papermill arguments, e.g. ARGS="-p n_splits 2 -p epochs 1"
ARGS ?=

.PHONY: help setup book test dataset pack run train-all results benchmark clean final-models audit gpu-wheels gpu-stage gpu-smoke gpu-adopt experiments experiments-run audit-runs grid-smoke

help:  ## list the targets
	@grep -E '^[a-z%-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)  ## create .venv with the pinned packages

# --all: the results chapter reads artifacts/ in code, which Sphinx does not track, so
# an incremental build would keep its old page after new runs land (about 40 s either way).
book: $(STAMP)  ## build the book into _build/html (no data, no GPU needed)
	$(BIN)/python -m xray_transfer.results --glance book/images/at_a_glance.png
	$(BIN)/python -m xray_transfer.results --check
	$(BIN)/jupyter-book build . --all -W --keep-going

test: $(STAMP)  ## run the test suite (CPU, synthetic data; builds the book for the browser test)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "could not install chromium: the browser tests will fail under CI=true" >&2
	$(BIN)/python -m pytest

dataset: $(STAMP)  ## letterbox the real X-rays from $(DATA) into $(DATASET)
	$(BIN)/xray-transfer assemble --data $(DATA) --out $(DATASET)

pack: $(STAMP)  ## pack the dataset cache into data/dataset.npz (to carry to a GPU machine)
	$(BIN)/xray-transfer pack --dataset $(DATASET) --out data/dataset.npz

# Execute a chapter with papermill: make run CH=dataset, or
# make run CH=training OUT=artifacts/runs/vgg19 ARGS="-p backbone vgg19"
# (`xray-transfer execute` runs papermill after refusing a parameter the chapter lacks, e.g. -p epoch 1).
# The kernel runs in notebooks/, so a relative OUT is passed as ../OUT: no machine path in the page.
CH ?= training
OUT ?= artifacts/$(CH)
run: $(STAMP)  ## execute notebooks/$(CH).md with papermill into $(OUT)/$(CH).ipynb
	mkdir -p $(OUT) _build/papermill
	$(BIN)/jupytext --to ipynb -o _build/papermill/$(CH).ipynb notebooks/$(CH).md
	$(BIN)/xray-transfer execute --cwd notebooks _build/papermill/$(CH).ipynb $(OUT)/$(CH).ipynb -p output_dir $(if $(filter /%,$(OUT)),$(OUT),../$(OUT)) $(ARGS)

# Initial weights: "offline" takes the ImageNet file registered per backbone in
# lib/xray_transfer/models.py (OFFLINE_WEIGHTS) from $(WEIGHTS_DIR), or random where none
# exists (Inception ResNet v2). Online, WEIGHTS=imagenet gives Keras' own download.
WEIGHTS_DIR ?= $(abspath ../shared/weights)
export XRAY_WEIGHTS_DIR := $(WEIGHTS_DIR)
WEIGHTS ?= offline

train-%: $(STAMP)  ## e.g. make train-vgg19: the training chapter for one backbone (resumes finished folds)
	$(MAKE) run CH=training OUT=artifacts/runs/$* ARGS="-p backbone $* -p weights $(WEIGHTS) $(ARGS)"

train-all: $(addprefix train-,$(BACKBONES))  ## the full protocol for all five backbones

results: $(STAMP)  ## regenerate results/table{1,2,3}.csv, README's headline block and its figure from the runs
	$(BIN)/python -m xray_transfer.results --write
	$(BIN)/python -m xray_transfer.results --glance book/images/at_a_glance.png

# The committed benchmark: per backbone, plain model.fit and our trainer, each for 2 epochs on
# two folds of a stratified 400-image subset (29 min on 2 idle Intel Xeon cores, measured
# 2026-11-27). BENCH_ARGS= (empty) times the whole dataset.
BENCH_ARGS ?= --limit 400
benchmark: $(STAMP)  ## time plain model.fit against our trainer, per backbone
	$(BIN)/xray-transfer benchmark --dataset $(DATASET) --out artifacts/benchmark $(BENCH_ARGS)

clean:  ## remove the build and generated notebooks (keeps .venv and data)
	rm -rf _build notebooks/*.ipynb

# Models trained on all images, for the audit chapter and `xray-transfer predict`.
# The .keras files stay in data/models (not in git); their records go to artifacts/models.
FINAL_BACKBONES ?= $(BACKBONES)
final-%: $(STAMP)  ## e.g. make final-mobilenet: train on all images, save data/models/<backbone>.keras
	$(BIN)/xray-transfer final --dataset $(DATASET) --backbone $* --weights $(WEIGHTS)
	mkdir -p artifacts/models && cp data/models/$*.json artifacts/models/$*.json

final-models: $(addprefix final-,$(FINAL_BACKBONES))  ## the models the audit chapter uses

# Every experiment of the book is one entry of lib/xray_transfer/experiments.py; `xray-transfer
# experiments run` makes what artifacts/ lacks, fold by fold, on a Dask cluster (finished folds are
# kept). E is a name or a quoted shell pattern; GRID_ARGS passes more flags, e.g. --workers 2,
# --scheduler tcp://host:8786, --pages (render each run's training page as it completes) or
# --commit (commit each fold as it lands: a long CPU run, started from a clean clone).
E ?=
GRID_ARGS ?=
experiments: $(STAMP)  ## what is done, running or missing of every experiment
	$(BIN)/xray-transfer experiments list

experiments-run: $(STAMP)  ## make what artifacts/ lacks (E='audit/*' for some; GRID_ARGS=--commit); resumes
	$(BIN)/xray-transfer experiments run --dataset $(DATASET) $(E) $(GRID_ARGS)

audit-runs: $(STAMP)  ## all the audit's cross-validation runs (hours on a CPU)
	$(BIN)/xray-transfer experiments run --pages --dataset $(DATASET) 'audit/*' $(GRID_ARGS)
audit-run-%: $(STAMP)  ## e.g. make audit-run-grouped-vgg19: one audit run
	$(BIN)/xray-transfer experiments run --pages --dataset $(DATASET) audit/$* $(GRID_ARGS)

# The smoke grid: every experiment with tiny settings (60 images, 2 folds, 1 epoch) into _build/smoke-grid
grid-smoke: $(STAMP)  ## check the runner end to end in minutes (E= and GRID_ARGS= as above)
	rm -rf _build/smoke-grid
	$(BIN)/xray-transfer experiments run --smoke --dataset $(DATASET) --out _build/smoke-grid $(E) $(GRID_ARGS)

audit: $(STAMP)  ## execute the audit chapter (needs the data; lists the audit runs and final models not made yet)
	$(MAKE) run CH=audit OUT=artifacts/audit

# ---- a GPU lease (see scripts/gpu_run.sh and book/how_to_reproduce.md, "On a GPU")
# Keras and Dask for the GPU machine's Python 3.12 (it has JAX, h5py, rich, absl but no Keras), at our pins.
gpu-wheels: $(STAMP)  ## download the Keras and Dask wheels the GPU machine lacks into .whl/
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 $$($(BIN)/pip freeze | grep -i -E \
		'^(dask|distributed|cloudpickle|toolz|partd|locket|fsspec|msgpack|psutil|sortedcontainers|tblib|zict|tornado|pyyaml|click|jinja2|markupsafe|packaging|importlib.metadata|zipp)==')

gpu-stage: pack gpu-wheels  ## put what a GPU call carries into .gpu/ and .whl/ (git-ignored)
	mkdir -p .gpu && cp data/dataset.npz .gpu/dataset.npz && git rev-parse HEAD > .gpu/commit
	$(BIN)/python -c "from xray_transfer.models import OFFLINE_WEIGHTS as W; print('\n'.join(w.file for w in W.values()))" \
		| while read f; do cp -u "$(WEIGHTS_DIR)/$$f" "$(WEIGHTS_DIR)/$${f%.weights.h5}.json" .gpu/; done
	du -sh .whl .gpu/*

# The GPU script end to end on this CPU, tiny settings: the jobs artifacts/ lacks. Keras on JAX compiles slowly on a
# CPU (about 2 min a job on 2 busy cores); SMOKE_BACKEND=tensorflow checks the same script faster.
SMOKE_BACKEND ?= jax
gpu-smoke: $(STAMP)  ## SMOKE=1 scripts/gpu_run.sh on the CPU (Keras on $(SMOKE_BACKEND)), into _build/gpu-smoke
	rm -rf _build/gpu-smoke && mkdir -p _build/gpu-smoke/work
	SMOKE=1 KERAS_BACKEND=$(SMOKE_BACKEND) JAX_PLATFORMS=cpu PYTHON=$(abspath $(BIN)/python) DATASET=$(abspath data/dataset.npz) \
		GPU_DIR=_build/gpu-smoke/work OUT=$(abspath _build/gpu-smoke) scripts/gpu_run.sh

TGZ ?= gpu-out.tgz
gpu-adopt: $(STAMP)  ## take finished runs and the benchmark from a GPU call's $(TGZ) into artifacts/
	rm -rf _build/gpu-adopt && mkdir -p _build/gpu-adopt && tar xzf $(TGZ) -C _build/gpu-adopt
	$(BIN)/python -m xray_transfer.gpu_plan adopt _build/gpu-adopt/out --repo .
	if [ -f $(dir $(TGZ))jax-cache.tgz ]; then rm -rf .gpu/jax-cache && mkdir -p .gpu && tar xzf $(dir $(TGZ))jax-cache.tgz -C .gpu \
		&& echo "JAX's compilation cache is in .gpu/jax-cache: a later lease's call can carry it"; fi
