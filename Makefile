# The two commands of the README:
#   make run    set everything up, then run the runner on the sample rules/ (dry-run without a LINE token)
#   make test   set everything up, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test bench setup browser postgres haproxy clean catalog docs

setup: postgres $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(BIN)/linerules run --rules rules

# The suite on TEST_WORKERS processes (pytest-xdist; tests are handed out as workers free up;
# more workers than cores, as much of the suite waits on real time: hung requests, rate limits),
# then the tests that bound one time by a share of another, or count arrivals within a tenth of a
# second (marked `timing`), alone, so that the other workers cannot skew them. `make test TEST_WORKERS=0` runs the first part in one process.
# Bytecode is cached even where the environment says not to (PYTHONDONTWRITEBYTECODE): without it
# every test process and every runner it starts compiles the project, and pytest rewrites the
# asserts of every test module again, seconds each time.
TEST_WORKERS ?= 4
# Only the modules that hold `timing` tests are collected for the second part.
TIMING_MODULES = $(shell grep -l '^@pytest.mark.timing' tests/test_*.py)
test: export PYTHONDONTWRITEBYTECODE :=
test: setup browser haproxy
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not timing"
	$(BIN)/python -m pytest -q -p no:xdist -m timing $(TIMING_MODULES)

# Headless Chromium (Debian's package) for the HTML report test; without it that test is skipped.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } \
	  || echo "chromium could not be installed: the HTML report test will be skipped"; \
	else echo "chromium is not installed (needs root and apt-get): the HTML report test will be skipped"; fi

# HAProxy (Debian's package) for the test of deploy/haproxy.cfg in front of two real runners;
# without it that test and `haproxy -c` are skipped (the config's structure is still tested).
haproxy:
	@if command -v haproxy >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q haproxy || { apt-get update -q && apt-get install -y -q haproxy; } \
	  || echo "haproxy could not be installed: the load balancer tests will be skipped"; \
	else echo "haproxy is not installed (needs root and apt-get): the load balancer tests will be skipped"; fi

# PostgreSQL (Debian's package) for the PostgreSQL tests, which start their own server in a temp
# folder (or use LINERULES_TEST_PG=postgresql://...); without either those tests fail and say why.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; } \
	  || echo "postgresql could not be installed: the PostgreSQL tests will fail (or set LINERULES_TEST_PG)"; \
	else echo "PostgreSQL is not installed (needs root and apt-get): the PostgreSQL tests will fail (or set LINERULES_TEST_PG)"; fi

# The message catalog: extract every text users read into engine/locale/linerules.pot and merge
# it into the Japanese catalog (then translate the new entries in the .po file).
catalog: setup
	$(BIN)/pybabel -q extract -F babel.cfg -k E:2 -k n_:1,2 -k N_ --no-location --sort-output \
	  --project linerules --omit-header -o engine/locale/linerules.pot .
	$(BIN)/pybabel -q update -i engine/locale/linerules.pot -d engine/locale -D linerules -l ja \
	  --no-fuzzy-matching --ignore-obsolete --no-wrap

# docs/errors.md and docs/ja/errors.md, generated from the catalog.
docs: setup
	$(BIN)/python -m engine.language.codes

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
