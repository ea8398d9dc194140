# Two entry points that work on a fresh Linux machine with Python 3.11 and no GPU:
#   make demo   -> ERM vs Fish on CdSprites-N (no download, a few minutes on a CPU)
#   make test   -> the lint gate, then the test suite (two pytest-xdist workers)
# Both create (or reuse) the virtualenv .venv in this folder, with the versions the suite last
# passed with (constraints.txt; `make constraints` refreshes it, see docs/testing.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
EXTRAS := test,domainbed,solo,text
# --isolated: ignore pip config/env that may point at a CPU-only torch wheel incompatible with
# PyPI's torchvision (see README, "Install").
PIP := $(BIN)/pip install --isolated --disable-pip-version-check

.PHONY: demo test lint venv bench clean-venv constraints

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg setup.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip "setuptools<81" wheel -c $(CONSTRAINTS)
	$(PIP) -e ".[$(EXTRAS)]" -c $(CONSTRAINTS)
	touch $@

demo: venv
	$(BIN)/gradmatch demo --out runs/demo

lint: venv
	$(BIN)/ruff check .

# Two workers on the 2 cores (the suite alone uses about one); a file's tests stay on one worker,
# so module fixtures are built once and the multi-process tests keep their 2 processes.
test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: venv
	$(BIN)/python benchmarks/fish_overhead.py

clean-venv:
	rm -rf $(VENV)

# The newest versions setup.cfg's ranges allow, frozen into constraints.txt. Then run
# `make clean-venv test` and commit constraints.txt only if the suite passes.
constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --isolated -q --upgrade pip "setuptools<81" wheel
	.venv-constraints/bin/pip install --isolated -q -e ".[$(EXTRAS)]"
	{ echo "# The exact versions the test suite last passed with (make and .ci/run install with them)."; \
	  echo "# Refresh: make constraints && make clean-venv test (docs/testing.md)."; \
	  .venv-constraints/bin/pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(CONSTRAINTS)
	rm -rf .venv-constraints
