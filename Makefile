# Everything a fresh machine needs: `make demo` runs the pipeline, `make test` runs the tests.
# Both create ./.venv on first use (python3 -m venv) and install the pinned requirements into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-all bench clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime
	$(PY) demo.py

test: $(VENV)/.dev
	$(PY) -m pytest -q tests

test-all: $(VENV)/.dev
	$(PY) -m pytest -q --runslow tests

bench: $(VENV)/.dev
	$(PY) bench/loss.py
	$(PY) bench/train.py

clean:
	rm -rf out
