# bevkd: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
BEVKD := $(BIN)/bevkd
STAMP := $(VENV)/.installed

# Variables every stage target understands.
CONFIG ?=
DATA ?= work/demo/data
OUT ?= work/demo
SET ?=
ARGS ?=  # extra arguments of the benchmark targets, e.g. ARGS="--seeds 0"
config_arg = $(if $(CONFIG),--config $(CONFIG),)

.PHONY: setup test lint demo-data demo train-teacher cache-teacher train-student kitti-results stage-two store-load results few-labels imported-teacher waymo-demo docs clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: on this machine it is the local CPU wheel, so nothing pulls CUDA.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,docs]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install bevkd (fast when nothing changed)

test: setup  ## run the test suite on CPU
	$(BIN)/python -m pytest -q tests

lint: setup  ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@rm -rf work/.typecheck && mkdir -p work/.typecheck/bevkd
	@for d in pipeline stages storage datasets models distill eval viz; do ln -s ../../../$$d work/.typecheck/bevkd/$$d; done
	cd work/.typecheck && ../../$(BIN)/mypy -p bevkd

demo-data: setup  ## write the synthetic demo dataset (nuScenes format) under $(DATA)
	$(BEVKD) make-demo-data --out $(DATA) --preset demo

train-teacher: setup  ## train a teacher (CONFIG=configs/demo/lidar_teacher.yaml by default)
	$(BEVKD) train-teacher --config $(or $(CONFIG),configs/demo/lidar_teacher.yaml) $(SET)

cache-teacher: setup  ## run the teachers once and write the store (demo: work/demo/teacher.zarr)
	$(BEVKD) cache-teacher --config $(or $(CONFIG),configs/demo/cache.yaml) --build-missing $(SET)

train-student: setup  ## train a camera student (default: demo CMKD + unlabeled frames; builds a missing demo store)
	$(BEVKD) train-student --config $(or $(CONFIG),configs/demo/student_cmkd_unlabeled.yaml) --build-missing $(SET)

kitti-results: setup  ## KITTI monocular CMKD: train vs train + Eigen-clean vs the GT baseline (docs/kitti.md)
	$(BIN)/python benchmarks/kitti_results.py $(ARGS)

few-labels: setup  ## 25% labels + unlabelled frames: honest (budget teachers) and oracle-teacher arms, Welch + Holm (docs/results.md)
	$(BIN)/python benchmarks/few_labels.py $(ARGS)

results: setup  ## every recipe, +unlabeled, cached vs online (5 seeds baseline/cmkd/codecs, 3 the rest; Welch + Holm verdicts); store codec vs accuracy (docs/results.md)
	$(BIN)/python benchmarks/recipes.py $(ARGS)

imported-teacher: setup  ## an imported (mmdet3d) CenterPoint end to end: import, cache over the demo world, train a CMKD student
	$(BIN)/python benchmarks/imported_teacher.py $(ARGS)

stage-two: setup  ## cached vs online teacher: step time and peak memory side by side (docs/performance.md)
	$(BIN)/python benchmarks/stage_two.py $(ARGS)

store-load: setup  ## N reader processes x W workers from local disk, S3 (moto) and S3 at 5% faults: frames/s, p50/p99, retries; readers a 10 frames/s student needs (docs/reliability.md)
	$(BIN)/python benchmarks/store_load.py $(ARGS)

waymo-demo: setup  ## CMKD on the synthetic Waymo v2 export: teacher, cache, front-camera student, Waymo metrics (docs/waymo.md)
	$(BIN)/python benchmarks/waymo_demo.py $(ARGS)

demo: setup  ## run the whole pipeline on the embedded synthetic default
	$(BEVKD) demo --out $(OUT)

docs: setup  ## regenerate docs/recipes.md (and the README's demo table, after make demo); build the manual into work/site
	$(BIN)/python benchmarks/docs_recipes.py
	test ! -f $(OUT)/results.md || $(BIN)/python benchmarks/demo_readme.py --results $(OUT)/results.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d work/site

clean:  ## remove every generated artifact (work/)
	rm -rf work
