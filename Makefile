# The two commands of the README:
#   make run    set everything up, then run the runner on the sample rules/ (dry-run without a LINE token)
#   make test   set everything up, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test bench setup browser clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(BIN)/linerules run --rules rules

test: setup browser
	$(BIN)/python -m pytest -q

# Headless Chromium (Debian's package) for the HTML report test; without it that test is skipped.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } \
	  || echo "chromium could not be installed: the HTML report test will be skipped"; \
	else echo "chromium is not installed (needs root and apt-get): the HTML report test will be skipped"; fi

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
