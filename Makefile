# Two commands: `make book` (render the book from the best results per chapter, executing at smoke only the chapters
# that have no committed paper/gpu/cpu results) and `make test`. Each creates .venv and installs everything on first use.
# `make book PRESET=gpu` executes every chapter at that preset instead; `make build` renders without executing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= auto

.PHONY: setup book test reproduce build clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# torchattacks 3.5.1 pins requests~=2.25.1, which breaks sphinx: its real needs are already installed.
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# book and build default to `best` (paper, then gpu, then cpu, then smoke, per chapter) unless PRESET is given.
BOOK_PRESET = $(if $(filter command line environment,$(origin PRESET)),$(PRESET),best)

book: setup
	$(PY) -m robustlib book --preset $(BOOK_PRESET)

reproduce: setup
	$(PY) -m robustlib reproduce --preset $(PRESET)

build: setup
	$(PY) -m robustlib build --preset $(BOOK_PRESET)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf _build results/smoke
