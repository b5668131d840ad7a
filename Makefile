# Two commands: `make book` (render the book from the best results per chapter, executing at smoke only the chapters
# that have no committed paper/gpu/cpu results) and `make test`. Each creates .venv and installs everything on first use.
# `make book PRESET=gpu` executes every chapter at that preset instead; `make build` renders without executing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= auto

.PHONY: setup book test reproduce build clean offline-kit

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

# For a machine with PyTorch but neither Jupyter nor internet (a lent GPU box): the wheels of
# requirements-offline.txt for CPython $(OFFLINE_PYTHON) on x86-64 Linux in .whl/, and Fashion-MNIST's four files
# in .data/fashion-mnist/. Carry both there and run scripts/run_offline.sh OUTDIR CHAPTER...
OFFLINE_PYTHON ?= 3.12
OFFLINE_PLATFORMS := $(foreach v,2_17 2_24 2_26 2_27 2_28,--platform manylinux_$(v)_x86_64) \
                     --platform manylinux2014_x86_64 --platform manylinux1_x86_64
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist

offline-kit: setup
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(OFFLINE_PYTHON) --implementation cp \
		$(OFFLINE_PLATFORMS) -d .whl -r requirements-offline.txt
	@test -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz || { echo "no Fashion-MNIST in $(FASHION_MNIST):" \
		"sudo apt-get install dataset-fashion-mnist, or FASHION_MNIST=<folder with the four *-ubyte.gz files>" >&2; exit 1; }
	mkdir -p .data/fashion-mnist
	cp $(FASHION_MNIST)/*-ubyte.gz .data/fashion-mnist/
	@du -sh .whl .data
