# hashlearn: `make demo` runs the main job, `make test` runs the tests.
# Both create the environment in .venv/ when it is missing (no internet needed beyond the
# package registries; torch comes from this machine's pip cache / disk).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hashlearn-installed

.PHONY: demo test lint bench clean-venv system-data system-browser

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@$(MAKE) --no-print-directory system-data
	@$(MAKE) --no-print-directory system-browser
	@touch $(STAMP)

# Debian's Chromium for the browser test of `hashlearn serve`'s page (tests/test_serve.py drives it with
# playwright; playwright's own browser download needs internet). Optional: without it that test skips.
system-browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| echo "note: could not install chromium; the browser test of the web page will skip"; \
	else echo "note: chromium not installed (needs root apt-get); the browser test of the web page will skip"; fi

# Fashion-MNIST from Debian's dataset-fashion-mnist (real images, MIT licence). Optional:
# without it the demo and tests fall back to scikit-learn's digits.
system-data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: could not install dataset-fashion-mnist; using scikit-learn digits instead"; \
	else echo "note: dataset-fashion-mnist not installed (needs root apt-get); using scikit-learn digits instead"; fi

demo: $(STAMP)
	$(BIN)/hashlearn demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean-venv:
	rm -rf $(VENV)
