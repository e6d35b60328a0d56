# Pivot — every entry point. `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck unit bench clean browser postgres space

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Pivot needs Python >= 3.11")'
	@echo "installing Pivot and its dependencies into $(VENV) (quiet; a minute or two the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: install
	@$(BIN)/pivot serve

lint: install
	$(BIN)/ruff check gateway mappings connectors tests bench
	$(BIN)/mypy

# the console's page tests drive a real headless Chromium (Debian's package; no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the page tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null; }; }

# shared state for several instances is tested on a real PostgreSQL (Debian's server, started by the tests)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the shared-state tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql >/dev/null; }; }

# the suite writes ~1.5 GB under the temp directory (gateways' data, PostgreSQL, brokers); on a full
# disk its failures look like anything else, so say it first
space:
	@free=$$(df -Pk "$${TMPDIR:-/tmp}" | awk 'NR==2 {print $$4}'); \
	  [ "$$free" -ge 4000000 ] || echo "WARNING: only $$((free / 1024)) MB free in $${TMPDIR:-/tmp}; the tests need ~1.5 GB there (old pivot-bench-*/pivot-pg-* directories can go)"

test: space install lint browser postgres
	$(BIN)/python -m pytest -q -ra

# the bench extra (the Python peer v2fhir, python-hl7's MLLP client) on top of `make install`
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	@echo "installing the benchmark's extra (the Python peer hl7v2-fhir-bridge) into $(VENV)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis
