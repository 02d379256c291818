# snapdistill: `make reproduce` runs the main job on the toy world, `make test` the CPU suite.
# Both set themselves up (a virtualenv in .venv) on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds the machines carry (see README, "Installing").
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
RUNS ?= runs
PROFILE ?= toy

.PHONY: install test test-slow reproduce bench lint clean

install: $(VENV)/.install-stamp

$(VENV)/.install-stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

lint: install
	$(BIN)/ruff check snapdistill tests examples

bench: install
	$(PY) -m snapdistill.bench --out bench.json

reproduce: install
	$(PY) -m snapdistill.reproduce --profile $(PROFILE) --runs $(RUNS)

clean:
	rm -rf $(RUNS) bench.json .pytest_cache
