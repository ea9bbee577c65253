# The two README commands are `make run` (main job) and `make test` (whole test suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1
PORT ?= 8000

.PHONY: setup system-deps run pipeline test test-unit test-integration images-test lint format \
	bench bench-grid bench-serve bench-limits clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[training,service,torchserve,dev]'
	# animal_mnist declares tensorflow; we only read its data files
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the integration tests run for real: prometheus, docker-compose (config check;
# it pulls in docker.io, the engine the image test starts), Java (TorchServe), wrk (load generator
# of bench/serve_compare.py) and debootstrap (the image test's base image where no registry is
# reachable)
system-deps:
	@command -v prometheus >/dev/null && command -v docker-compose >/dev/null && \
	  command -v java >/dev/null && command -v wrk >/dev/null && command -v debootstrap >/dev/null || \
	  (apt-get update -q && apt-get install -y -q prometheus docker-compose default-jre-headless \
	    wrk debootstrap)

run: setup
	$(BIN)/mdprune pipeline --port $(PORT)

pipeline: setup
	$(BIN)/mdprune pipeline --no-serve

test: setup system-deps
	$(BIN)/python -m pytest -q

test-unit: setup system-deps
	$(BIN)/python -m pytest -q -m "not integration"

test-integration: setup system-deps
	$(BIN)/python -m pytest -q -m integration

# Builds the trainer and service images and runs them (starts dockerd as root if none runs;
# reports SKIPPED with the reason where no engine can run). See docs/operations.md.
images-test: setup system-deps
	$(BIN)/python -m pytest -q -s -m images tests/integration/test_images.py

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy multidomain service torchserving devtools training reporting mdprune

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Benchmarks print figures and record them under bench/results/ (never timed assertions).
ARTIFACT ?= $(lastword $(sort $(wildcard model_store/default/*/)))

bench: bench-grid bench-serve

bench-grid: setup
	$(BIN)/python bench/budget_grid.py
	$(BIN)/mdprune report bench/results/budget_grid.json --out bench/results/report

bench-serve: setup
	@test -n "$(ARTIFACT)" || (echo "no artifact in model_store/default: run 'make pipeline' first" && exit 2)
	$(BIN)/python bench/subnet_compute.py $(ARTIFACT)
	$(BIN)/python bench/serve_load.py $(ARTIFACT)
	$(BIN)/python bench/serve_compare.py $(ARTIFACT)

# The service's own limits: hot-path cost against a baseline revision (wrk), overload and slow
# clients (bench/results/hotpath*.md, overload.md). BASELINE: the revision to compare with.
BASELINE ?= HEAD~1

bench-limits: setup
	@command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	cd bench && ../$(BIN)/python hotpath.py --baseline $(BASELINE)
	cd bench && ../$(BIN)/python hotpath.py --baseline $(BASELINE) \
	  --env MDP_ACCESS_LOG_SAMPLE=0 --out results/hotpath_access_log_off
	cd bench && ../$(BIN)/python overload.py --baseline $(BASELINE)

clean:
	rm -rf $(VENV) data_cache runs .pytest_cache .mypy_cache .ruff_cache
