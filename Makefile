# Two commands do all the set-up: `make demo` and `make test`. Both create (or reuse) .venv,
# install the CPU build of torch when torch is missing, the package with its dev extras and
# the contrib plugin packages (real pip installs), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_CPU ?= torch==2.13.0
CONTRIB := $(wildcard contrib/*/pyproject.toml)
# Example packages that only the tests use (a company's presets); `make demo` leaves them out of .venv.
EXAMPLES := contrib/acme-strategies/pyproject.toml
PLUGINS := $(filter-out $(EXAMPLES),$(CONTRIB))
STAMP := $(VENV)/.torchslim-installed
TEST_STAMP := $(VENV)/.torchslim-test-installed

.PHONY: test demo docs bench-quick clean

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_CPU)
	$(PIP) install -e ".[dev,onnx,prune,hf]"
	for p in $(PLUGINS); do $(PIP) install "./$$(dirname $$p)" || exit 1; done
	touch $@

$(TEST_STAMP): $(STAMP) $(EXAMPLES)
	for p in $(EXAMPLES); do $(PIP) install "./$$(dirname $$p)" || exit 1; done
	touch $@

test: $(TEST_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	$(VENV)/bin/torchslim demo

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site

bench-quick: $(STAMP)
	for b in bench/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) site build dist *.egg-info
