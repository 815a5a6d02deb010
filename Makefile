# Two commands on a fresh machine:
#   make demo   set up .venv and run the main job (DNA pretraining on the bundled E. coli genome)
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch goes in first so that the project's `torch>=...` never pulls a multi-GB CUDA build onto a
# CPU-only machine. Override e.g. `make setup TORCH_SPEC="torch --index-url <your CPU index>"`.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH_SPEC ?= torch
else
TORCH_SPEC ?= torch==2.13.0
endif

.PHONY: setup demo test test-fast fuzz clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[test]'
	# The registry's torchaudio is a CUDA build whose compiled extension cannot load on CPU-only
	# torch; the Python transforms we use work without it, so move its libraries aside.
	$(BIN)/python -c "import torchaudio" 2>/dev/null || $(BIN)/python -c "import importlib.util as u, pathlib as p; \
	  [f.rename(f.with_name(f.name + '.cuda-build')) for f in (p.Path(u.find_spec('torchaudio').origin).parent / 'lib').glob('*.so')]"
	$(BIN)/python -c "import torchaudio.functional, soundfile"
	touch $@

demo: setup
	$(BIN)/mamba-seq fit

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow"

# property-based parser fuzzing with many more examples than the CI profile (tests/fuzz/conftest.py)
fuzz: setup
	$(BIN)/python -m pytest -q tests/fuzz --hypothesis-profile=long

clean:
	rm -rf $(VENV) outputs .pytest_cache
