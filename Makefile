# The two commands in README: `make run` (the service) and `make test` (the test suite).
# Each sets up .venv itself. torch is installed with plain pip (it comes from local disk here).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MAR := model_store/resnet50.mar
# imagenet (download, hash-checked), random (untrained, for offline demos) or a path to a state dict
WEIGHTS ?= imagenet
# onnx (fp32, default), onnx-int8 (quantised; the build refuses it below the accuracy gate) or eager
ENGINE ?= onnx
# the labels of WEIGHTS' classes, a file (one per line, or a JSON list): needed unless they are ImageNet's 1000
LABELS ?=

.PHONY: setup mar run test test-fast test-unit test-integration test-system lint clean api-key bench images

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[serve,gateway,dev]'
	touch $@

# `make run` and `make bench` serve the archive that is there, whatever its engine or weights; it is built
# only when missing. ENGINE=..., WEIGHTS=..., LABELS=... or FORCE=1 (command line or environment) asks for an
# archive of that kind: ENGINE rebuilds one of another engine, WEIGHTS, LABELS and FORCE always rebuild. An
# archive of your own classes (LABELS, train-head) is never rebuilt as ImageNet's for another ENGINE: the build
# refuses and says how to rebuild it (modelserver/trained_archive.py). With WEIGHTS=imagenet and no network, it
# falls back to random weights with a loud warning (the model is then untrained).
asked = $(filter command line environment,$(origin $(1)))
mar: setup
	$(PY) -m modelserver build --weights $(WEIGHTS) $(if $(call asked,ENGINE),--engine $(ENGINE)) \
		$(if $(LABELS),--labels $(LABELS)) \
		$(if $(or $(FORCE),$(call asked,WEIGHTS),$(call asked,LABELS)),,--if-missing) \
		$(if $(filter imagenet,$(WEIGHTS)),--offline-fallback)

run: mar
	$(PY) -m modelserver run

# The tests in tiers (docs/development.md, "Tests"), cheapest first; make stops at the first step that fails,
# and each tier at its first failing test (FAILFAST= runs a whole tier). `make test-fast` is what every change
# runs: lint, types and the fast tier, under half a minute. .ci/run and .github/workflows/ci.yml run these steps.
FAILFAST ?= -x
PYTEST = $(PY) -m pytest $(FAILFAST)

test: test-fast test-integration test-system

test-fast: lint test-unit

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

test-unit: setup
	$(PYTEST) tests/unit

test-integration: setup
	$(PYTEST) tests/integration

test-system: setup
	$(PYTEST) tests/system

clean:
	rm -rf .run $(MAR)

# Both container images, tagged as docker-compose.yml expects (…-serve:local, …-gateway:local). Falls back
# to a stand-in base and the local CPU torch wheel only where Docker Hub / PyTorch's index are unreachable
# (it says so). `make images WEIGHTS=random` for untrained smoke images; `WEIGHTS=PATH LABELS=FILE` for your own
# classes. With none of WEIGHTS, LABELS or FORCE given, it refuses while model_store holds an archive of your own
# classes (the images would serve ImageNet's). docs/docker.md, "Building the images".
images:
	WEIGHTS=$(WEIGHTS) ENGINE=$(ENGINE) LABELS=$(LABELS) \
		KEEP_OWN_CLASSES=$(if $(or $(FORCE),$(call asked,WEIGHTS),$(call asked,LABELS)),,$(MAR)) docker/images.sh

# Prints a new API key and the SHA-256 the gateway stores (GATEWAY_API_KEY_HASHES). Standard library only:
# no virtualenv, any Python 3.
api-key:
	@python3 -m gateway.keys

# Throughput and latency of every engine this CPU runs: in-process limit, TorchServe direct, through the gateway;
# cold start. Writes bench/results/<timestamp>.json. `make bench BENCH_ARGS=--quick` for a short smoke run,
# BENCH_ARGS="--engines onnx-int8 openvino-int8" for some engines only (docs/benchmarks.md, "Method").
bench: mar
	$(PY) -m pip install --quiet -e '.[serve,gateway,dev,bench]'
	$(PY) -m bench.run $(BENCH_ARGS)
