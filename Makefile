# The course in two commands: `make course` (run every notebook, write a report) and `make test` (what CI runs).
# Both create .venv on first use, install the pinned requirements and fetch the offline assets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# Nothing talks to a model or dataset hub, in the runner, the tests or the kernels they start.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help course test lab setup assets lint unit notebooks clean

help:
	@echo "make course   run every notebook at laptop size; report in runs/<timestamp>/index.html"
	@echo "make test     lint, unit tests, every notebook at smoke size under nbval (what CI runs)"
	@echo "make lab      JupyterLab with the course kernel registered"
	@echo "make clean    remove .venv, runs/ and the asset cache"

course: setup
	$(BIN)/python -m utils.course run

test: setup lint unit notebooks

setup: $(INSTALLED) assets

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11, 5) <= sys.version_info[:3] and v <= (3, 12) else \
		f"The course needs Python 3.11.5-3.12 (its pins, numpy 2.4 and transformers 5 among them, need 3.11+); {sys.executable} is {v[0]}.{v[1]}. Run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --no-deps -e .
	touch $@

assets: $(INSTALLED)
	$(BIN)/python -m utils.assets fetch

lint: $(INSTALLED)
	$(BIN)/ruff check .

unit: $(INSTALLED)
	$(BIN)/python -m pytest tests

# Smoke-size notebooks under nbval; the IPython profile in tests/ipython blocks non-loopback sockets in kernels.
notebooks: $(INSTALLED)
	COURSE_SMOKE=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 IPYTHONDIR=$(CURDIR)/tests/ipython \
		$(BIN)/python -m pytest --nbval-lax --nbval-cell-timeout=300 notebooks

lab: setup
	$(BIN)/python -m ipykernel install --user --name pretrain-course --display-name "Python (pretrain course)"
	$(BIN)/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)  # root: containers, cloud boxes

clean:
	rm -rf $(VENV) runs data/cache
