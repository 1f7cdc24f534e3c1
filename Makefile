# Every target installs into .venv first, so each works on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 3000

export BENTOML_DO_NOT_TRACK := true

.PHONY: help install test test-quick lint format docs serve train train-quick evaluate quality cells clean bento container

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP)  ## create .venv with the pinned dependencies

# Tiny test models run fastest single-threaded; two threads per process only contend here.
test: install  ## ruff, then the whole pytest suite (what CI runs), the slowest tests listed
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest

test-quick: install  ## ruff, then the tests marked neither slow nor server (no real servers)
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -m "not slow and not server"

lint: install  ## ruff check
	$(VENV)/bin/ruff check .

format: install  ## ruff format, then ruff's fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

docs: install  ## regenerate the settings table in docs/configuration.md from service/config.py
	$(PY) -m service.config --update docs/configuration.md

serve: install  ## import the shipped models into the store if missing, serve on $(HOST):$(PORT)
	$(PY) -m training.store import-shipped
	$(VENV)/bin/bentoml serve service.app:RNNServe --host $(HOST) --port $(PORT)

train: install  ## full profile, all models, into the local BentoML store
	$(PY) -m training.train_all --profile full

train-quick: install  ## minutes: a smoke run of every model, into temp folders (not the store)
	$(PY) -m training.train_all --profile quick --no-store

evaluate: install  ## test-split metrics of the store's (or shipped) models and the sentiment TF-IDF baseline: JSON lines, then tables
	$(PY) -m training.evaluate --baseline

quality: install  ## evaluate, and write the table with the targets to reports/quality.md
	$(PY) -m training.evaluate --baseline --report reports/quality.md

cells: install  ## experiment: rnn vs gru vs lstm on every task at an equal budget -> reports/cells.md
	$(PY) -m training.experiments.compare_cells

clean:  ## remove .venv and the caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The bento is built from the BentoML store in $BENTOML_HOME (default ~/bentoml), the one
# `make serve` fills: BENTOML_HOME=/some/dir make bento builds from (and into) another store.
bento: install  ## the CPU bento rnn-serve:<version>: service + the store's models (shipped ones imported); offline
	$(PY) -m training.store import-shipped
	$(VENV)/bin/bentoml build -f bentofile.yaml

IMAGE ?= rnn-serve:latest
container: bento  ## docker image $(IMAGE) from the latest bento: needs a running Docker engine (none on these machines)
	$(VENV)/bin/bentoml containerize rnn-serve:latest -t $(IMAGE)

# Load test and benchmark (docs/performance.md). `make load` needs a running server (`make serve`
# in another shell): TARGET is its URL. HOST and PORT above are only the address `make serve` binds.
.PHONY: load bench reliability
TARGET ?= http://127.0.0.1:$(PORT)
USERS ?= 20
SPAWN_RATE ?= 10
DURATION ?= 1m
PROFILE ?= MixedUser
load: install  ## locust headless against $(TARGET): CSV + HTML to reports/load/, then the SLO check
	mkdir -p reports/load
	PYTHONPATH=. $(VENV)/bin/locust -f loadtest/locustfile.py --headless --host $(TARGET) \
		-u $(USERS) -r $(SPAWN_RATE) -t $(DURATION) --stop-timeout 30 --only-summary \
		--csv reports/load/load --html reports/load/load.html --exit-code-on-error 0 $(PROFILE)
	$(PY) -m loadtest.slo reports/load/load_stats.csv

# Two workers, one per core of a 2-core machine. Comparisons with other commits or settings are
# flags (--compare REF, --settings VAR=VALUE): docs/performance.md lists the ones worth running.
BENCH_FLAGS ?= --base-settings RNNSERVE_WORKERS=2
bench: install  ## ceiling, service under wrk (apt-get install wrk), batching off, precisions -> reports/bench/bench.{json,md}
	$(PY) -m loadtest.bench $(BENCH_FLAGS)

reliability: install  ## hostile input, overload, slow clients, faults, tampered model: real servers -> reports/reliability.md
	$(PY) -m loadtest.reliability
