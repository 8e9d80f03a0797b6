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

# `make lab` serves on this port (JupyterLab moves to the next free one if it is taken) from this folder.
LAB_PORT ?= 8888
LAB_DIR ?= notebooks
# The course's JupyterLab settings (no news or update pop-ups, no kernel picker): jupyter/labconfig/.
LAB_ENV := JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter$(if $(JUPYTER_CONFIG_PATH),:$(JUPYTER_CONFIG_PATH))

.PHONY: help course test lab setup assets lint unit notebooks clean doctor test-browser canary mlflow-ui

help:
	@echo "make doctor        will the course run here, and how long will it take? (works before setup)"
	@echo "make course        run every notebook and its exercise solutions at laptop size; report in runs/<timestamp>/index.html"
	@echo "make test          lint, unit tests, every notebook at smoke size under nbval (what CI runs)"
	@echo "make lab           JupyterLab with the course kernel registered (LAB_PORT=8888)"
	@echo "make test-browser  notebook 00 run through JupyterLab in headless Chromium (not part of make test)"
	@echo "make mlflow-ui     MLflow's UI over notebook 14's tracking store on 127.0.0.1 (MLFLOW_PORT=5000)"
	@echo "make canary        the tests in .venv-canary with the newest core libraries; report in runs/"
	@echo "make clean         remove .venv, .venv-canary, runs/ and the asset cache"

# Before setup it runs with $(PYTHON) and the standard library; after, with .venv's Python.
doctor:
	@$(if $(PYTHON),,$(error No python3 on the PATH: install Python 3.11 (see TROUBLESHOOTING.md)))
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m utils.doctor --python "$(PYTHON)" --port $(LAB_PORT)

course: setup
	$(BIN)/python -m utils.course run --solutions after

test: setup lint unit notebooks

setup: $(INSTALLED) assets

$(BIN)/python:
	@$(if $(PYTHON),,$(error No python3 on the PATH: install Python 3.11 (see TROUBLESHOOTING.md)))
	@$(PYTHON) -c 'import sys; v = sys.version_info[:3]; sys.exit(0 if (3, 11, 5) <= v and v[:2] <= (3, 12) else \
		f"The course needs Python 3.11.5-3.12 (its pins, numpy 2.4 and transformers 5 among them, need 3.11+); {sys.executable} is {v[0]}.{v[1]}.{v[2]}.\nFix: install Python 3.11 (pyenv install 3.11, conda, or python.org), then run: make PYTHON=/path/to/python3.11 setup   (make doctor checks the rest)")'
	$(PYTHON) -m venv $(VENV)

# TORCH_INDEX=https://download.pytorch.org/whl/cpu installs PyTorch's CPU build of the pinned version first: on Linux
# without a GPU that saves several GB of CUDA libraries (see TROUBLESHOOTING.md).
TORCH_PIN = $(shell sed -n 's/^torch==\([^ #]*\).*/\1/p' requirements.txt)
export COURSE_PIP_HELP := pip could not install the pinned requirements; its last lines above say why. SSLError or ProxyError: set \
	HTTPS_PROXY and PIP_CERT. "gcc" or "Python.h" missing: install a C compiler and the Python headers. "Requires-Python": \
	use Python 3.11.5-3.12. Each is in TROUBLESHOOTING.md; make doctor checks this machine.

$(INSTALLED): requirements.txt pyproject.toml | $(BIN)/python
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --disable-pip-version-check --quiet torch==$(TORCH_PIN) \
		--index-url $(TORCH_INDEX) || { echo "$$COURSE_PIP_HELP" >&2; exit 1; })
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -r requirements.txt || { echo "$$COURSE_PIP_HELP" >&2; exit 1; }
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --no-deps -e .
	touch $@

assets: $(INSTALLED)
	$(BIN)/python -m utils.assets fetch

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(INSTALLED)
	$(BIN)/python -m pytest tests

# Smoke-size notebooks under nbval; the IPython profile in tests/ipython blocks non-loopback sockets in kernels.
notebooks: $(INSTALLED)
	COURSE_SMOKE=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 IPYTHONDIR=$(CURDIR)/tests/ipython \
		$(BIN)/python -m pytest --nbval-lax --nbval-cell-timeout=300 notebooks

lab: setup
	$(BIN)/python -m ipykernel install --user --name pretrain-course --display-name "Python (pretrain course)"
	$(LAB_ENV) $(BIN)/jupyter lab $(LAB_DIR) --port $(LAB_PORT) $(LAB_ARGS) \
		$(if $(filter 0,$(shell id -u)),--allow-root)  # root: containers, cloud boxes

# Playwright drives the Chromium found on the machine (Debian: apt-get install chromium; else CHROMIUM=/path/to/chrome);
# skipped, saying so, if there is none.
test-browser: setup
	COURSE_BROWSER_TEST=1 $(BIN)/python -m pytest tests/browser -v

# MLflow's own UI (runs, metrics, registered models and aliases) over the sqlite store notebook 14 writes; loopback
# only, since the UI has no login. MLFLOW_DIR=runs/<timestamp>/mlflow_14 shows a `make course` run's store instead.
MLFLOW_PORT ?= 5000
MLFLOW_DIR ?= runs/interactive/mlflow_14
mlflow-ui: $(INSTALLED)
	$(BIN)/python -m utils.pipelines ui --folder $(MLFLOW_DIR) --port $(MLFLOW_PORT)

# Newest releases of the core libraries in .venv-canary (torch stays at its pin unless CANARY_TORCH=1); slow.
canary: setup
	$(BIN)/python tools/canary.py --python "$(PYTHON)" $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))

clean:
	rm -rf $(VENV) $(VENV)-canary runs data/cache
