# Two commands: `make book` (reproduce at preset auto, then render the book) and `make test`.
# Each creates .venv and installs everything on first use.
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

book: setup
	$(PY) -m robustlib book --preset $(PRESET)

reproduce: setup
	$(PY) -m robustlib reproduce --preset $(PRESET)

build: setup
	$(PY) -m robustlib build --preset $(PRESET)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf _build results/smoke
