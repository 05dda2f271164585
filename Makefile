# Set-up is automatic: `make demo` / `make test` create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench-overhead bench-accuracy clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# animal-mnist declares tensorflow; lkd_hf reads only its data files
	$(PY) -m pip install -q --no-deps animal-mnist==0.4
	touch $@

demo: install
	$(PY) recipes/quickstart.py

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench-overhead: install
	$(PY) benchmarks/overhead.py

bench-accuracy: install
	$(PY) benchmarks/accuracy.py --threads 1 --workers 2

clean:
	rm -rf outputs .pytest_cache
