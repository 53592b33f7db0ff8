# Quick start: `make demo` runs the synthetic end-to-end pipeline, `make test` runs all the tests,
# `make test-fast` all but those marked `slow` (end-to-end training, anything over ~2 s), in about a minute.
# Both create .venv and install requirements.txt (at the versions pinned in constraints.txt) on first
# use, and again only if either file changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv clean

$(STAMP): requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf demo_runs .pytest_cache
