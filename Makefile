# drorae-scaling: every target that needs the virtual environment builds it first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install first (this machine serves 2.14.1 + 0.29.1 from local disk; see README).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# The exact versions the tests passed with (pip-compile's output; `make lock` refreshes it): every
# install is constrained by it, so a fresh venv gets the tested set, not whatever is newest today.
LOCK := requirements.lock
DEPS_HASH := $(shell { cat pyproject.toml $(LOCK); echo '$(TORCH_SPEC)'; } | sha256sum | cut -c1-16)
DEPS_STAMP := $(VENV)/.deps-$(DEPS_HASH)
# What ruff checks (its rules: [tool.ruff] in pyproject.toml).
LINT_PATHS := model sweeper analysis drorae_io bench tests
PYTEST_ARGS ?=
RESULTS ?= results
MLFLOW_PORT ?= 5000
# The tracking server's interface: this machine only, unless asked (make mlflow-server MLFLOW_HOST=0.0.0.0).
MLFLOW_HOST ?= 127.0.0.1
SPEC ?= sweeps/default.yaml

.PHONY: install venv assets lint test test-fast fuzz lock sweep bench clean help

help:
	@echo "make install   virtual environment ($(VENV)) + offline assets (FID Inception, LPIPS, Fashion-MNIST)"
	@echo "make test      ruff, then the whole test suite (what CI runs)"
	@echo "make test-fast ruff, then the tests not marked slow (the edit-test loop: under 2 min)"
	@echo "make fuzz      the command-line fuzz test, on fresh random examples, for FUZZ_SECONDS=$(FUZZ_SECONDS)"
	@echo "make lint      ruff on the packages and tests"
	@echo "make lock      re-resolve $(LOCK), the exact versions installs use (then make test)"
	@echo "make sweep     the embedded default sweep (SPEC=$(SPEC)); rerun to resume"
	@echo "make plan      what make sweep would run, and its cost"
	@echo "make bench     every benchmark of bench/ into bench/results.md (ARGS=--quick: ~15 min less)"
	@echo "make mlflow-ui the MLflow UI on 127.0.0.1:$(MLFLOW_PORT)"
	@echo "make mlflow-server  an MLflow tracking server on $(MLFLOW_HOST):$(MLFLOW_PORT) for sweeps (RESULTS=$(RESULTS))"
	@echo "make fit       the scaling law fitted to RESULTS_DIR=$(RESULTS_DIR) (ARGS='--json', ...)"
	@echo "make predict   its prediction at CAPACITY (e.g. make predict CAPACITY=2e8)"
	@echo "make next      which capacity to train next for a surer prediction at TARGET"
	@echo "make hparams   the best learning rate against capacity (the searched points' law), predicted at CAPACITY"
	@echo "make figures   the paper's panels into RESULTS_DIR/figures/"
	@echo "make report    RESULTS_DIR/report.md: table, fits, predictions, figures"

$(DEPS_STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) $(TORCH_SPEC)
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	@rm -f $(VENV)/.deps-* && touch $@

# The project itself is installed editable on every run: cheap, and a cached venv shared by
# several clones (CI) then always points at the clone that runs.
venv: $(DEPS_STAMP)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . >$(VENV)/.editable.log 2>&1 \
		|| { cat $(VENV)/.editable.log; exit 1; }

assets: venv
	$(PY) -m model fetch

install: venv assets

lint: venv
	$(PY) -m ruff check $(LINT_PATHS)

test: install
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m pytest $(PYTEST_ARGS)

# Hostile input, longer than make test's 60 s with its fixed seed: fresh random examples each run.
FUZZ_SECONDS ?= 600
fuzz: install
	DRORAE_FUZZ_SECONDS=$(FUZZ_SECONDS) DRORAE_FUZZ_RANDOM=1 $(PY) -m pytest tests/sweeper/test_fuzz_cli.py -s $(PYTEST_ARGS)

# The edit-test loop: what `make test` runs less the end-to-end tests marked slow.
test-fast: install
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Re-resolve every dependency to the newest release pyproject.toml allows, for this Python and
# platform, with the torch build of TORCH_SPEC (fed on stdin: the lock's `-r -`). Indexes come
# from pip's own configuration and are not written into the lock. LOCK_ARGS= (empty) keeps the
# current pins where pyproject.toml still allows them (e.g. after adding a dependency). Run
# `make test` before committing the new lock. It needs only pip-tools, not the whole venv: a
# pyproject.toml that the old lock no longer satisfies could not be installed.
LOCK_ARGS ?= --upgrade
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip-tools
	printf '%s\n' $(TORCH_SPEC) | CUSTOM_COMPILE_COMMAND="make lock" $(PY) -m piptools compile --quiet \
		$(LOCK_ARGS) --allow-unsafe --strip-extras --extra dev --no-emit-index-url --no-emit-find-links \
		--output-file $(LOCK) pyproject.toml -

# The main job: the spec's sweep on local Ray (or RAY_ADDRESS), results under $(RESULTS)/.
sweep: install
	$(PY) -m sweeper sweep $(SPEC) $(ARGS)

# Every benchmark, side-by-side ratios, into the Markdown table bench/results.md.
bench: install
	$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf .pytest_cache build *.egg-info

.PHONY: mlflow-ui mlflow-server plan

# The MLflow UI over the sweeps' tracking database, on this machine only.
mlflow-ui: venv
	@mkdir -p $(RESULTS)
	$(PY) -m mlflow ui --backend-store-uri sqlite:///$(RESULTS)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# A tracking server (REST API + UI) for sweeps: MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT). Its
# store is the sweeps' default SQLite file, $(RESULTS)/mlflow.db; artifacts are uploaded through it
# into $(RESULTS)/mlartifacts. Bound to $(MLFLOW_HOST) (this machine only by default: reach it from
# elsewhere with ssh -L or kubectl port-forward). MLflow's host-header and CORS checks admit
# localhost/127.0.0.1 by default; exposing it (MLFLOW_HOST=0.0.0.0) needs its --allowed-hosts too:
#   make mlflow-server MLFLOW_HOST=0.0.0.0 MLFLOW_ARGS="--allowed-hosts head:5000"
# One worker: SQLite takes one writer at a time, and a sweep has one writer (its driver). MLflow's
# job execution (GenAI scorer jobs: a runner and seven huey consumers) is off, sweeps never use it.
# It needs only MLflow: a Python that has it (VENV=...) is used as it is; the venv is built only
# when $(PY) does not exist yet.
MLFLOW_WORKERS ?= 1
MLFLOW_JOBS ?= false
MLFLOW_ARGS ?=
mlflow-server: $(if $(wildcard $(PY)),,venv)
	@mkdir -p $(RESULTS)/mlartifacts
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$(MLFLOW_JOBS) \
	exec $(PY) -m mlflow server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS) \
		--backend-store-uri sqlite:///$(abspath $(RESULTS))/mlflow.db \
		--serve-artifacts --artifacts-destination $(abspath $(RESULTS))/mlartifacts $(MLFLOW_ARGS)

# What `drorae sweep $(SPEC)` would run: every grid point, its parameter count and cost; starts nothing.
plan: venv
	$(PY) -m sweeper sweep $(SPEC) --dry-run

# --- scaling-law analysis of a sweep's results (pure pandas / statsmodels: no torch, no Ray) ----
RESULTS_DIR ?= results/default
# Capacities to predict, space-separated: make predict CAPACITY="2e8 5e8"
CAPACITY ?=

.PHONY: fit predict next hparams figures report

# The fitted law: params with CIs, R², lack of fit.
fit: venv
	$(PY) -m sweeper fit $(RESULTS_DIR) $(ARGS)

# The law's prediction (mean, CI, PI) at CAPACITY.
predict: venv
	@test -n "$(CAPACITY)" || { echo 'make predict: set CAPACITY, e.g. make predict CAPACITY=2e8' >&2; exit 2; }
	$(PY) -m sweeper predict $(RESULTS_DIR) $(foreach c,$(CAPACITY),--capacity $(c)) $(ARGS)

# Which capacity to train next for a surer prediction at TARGET (e.g. make next TARGET=2.4e7).
TARGET ?=
next: venv
	@test -n "$(TARGET)" || { echo 'make next: set TARGET, e.g. make next TARGET=2.4e7' >&2; exit 2; }
	$(PY) -m sweeper next $(RESULTS_DIR) --target $(TARGET) $(ARGS)

# The hyperparameter law: each searched point's best learning rate against capacity, and its
# prediction at each CAPACITY (e.g. make hparams CAPACITY="2e8 1e9").
hparams: venv
	$(PY) -m sweeper hparams $(RESULTS_DIR) $(foreach c,$(CAPACITY),--capacity $(c)) $(ARGS)

# The paper's panels (PDF + PNG) into $(RESULTS_DIR)/figures/.
figures: venv
	$(PY) -m sweeper figures $(RESULTS_DIR) --out $(RESULTS_DIR)/figures $(ARGS)

# The Markdown report $(RESULTS_DIR)/report.md (figures in $(RESULTS_DIR)/figures/).
report: venv
	$(PY) -m sweeper report $(RESULTS_DIR) $(foreach c,$(CAPACITY),--capacity $(c)) $(ARGS)
