# Two entry points that work on a fresh Linux machine with Python 3.11 and no GPU:
#   make demo   -> ERM vs Fish on CdSprites-N (no download, a few minutes on a CPU)
#   make test   -> the test suite
# Both create (or reuse) the virtualenv .venv in this folder.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# --isolated: ignore pip config/env that may point at a CPU-only torch wheel incompatible with
# PyPI's torchvision (see README, "Install").
PIP := $(BIN)/pip install --isolated --disable-pip-version-check

.PHONY: demo test venv bench clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip "setuptools<81" wheel
	$(PIP) -e ".[test,domainbed,solo,text]"
	touch $@

demo: venv
	$(BIN)/gradmatch demo --out runs/demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/fish_overhead.py

clean-venv:
	rm -rf $(VENV)
