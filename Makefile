# The README's two commands live here: `make demo` and `make test`.
# Both create the virtual environment on first use (.venv, ~2 minutes: torch is the bulk) and reuse it after.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The bundled default data: the FER+ folder beside the checkout (override: make demo FERPLUS=/path/to/ferplus).
FERPLUS ?= ../shared/data/ferplus
RUNS   ?= runs

.PHONY: demo ferplus test env bench lint clean browser app

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,au,text,app]'
	touch $@

# Main job on the bundled default: the bundled mini generator draws a grid of faces for every FER+ expression and
# an AU sweep (AU12, lip corner puller, 0 -> 1); no data or download needed.
demo: env
	$(BIN)/synfer sample-grid --out $(RUNS)/demo/expressions.png
	$(BIN)/synfer au-sweep --au AU12 --expression neutral --out $(RUNS)/demo/au12_sweep.png

# Import the FER+ folder beside the checkout into a dataset folder and print its summary.
ferplus: env
	$(BIN)/synfer import-ferplus $(FERPLUS) $(RUNS)/ferplus --resume
	$(BIN)/synfer info $(RUNS)/ferplus

# Default test run (offline; slow and GPU tests are marked and left out: `$(BIN)/pytest -m slow`).
test: env
	$(BIN)/pytest

# Debian's Chromium and its driver, for the app's browser test (which skips where they are missing); apt needs root
# or sudo, and a failed install only warns.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium: present"; \
	elif command -v apt-get >/dev/null && { [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; } \
	  || echo "WARNING: could not install chromium + chromium-driver; the browser test will be skipped"; \
	else echo "WARNING: no apt-get (or no root/sudo): install Chromium and chromedriver to run the browser test"; fi

# The face studio on http://127.0.0.1:7860 (bundled generator; writes under runs/app).
app: env
	$(BIN)/synfer app --out $(RUNS)/app

bench: env
	$(BIN)/python benchmarks/import_ferplus.py --ferplus $(FERPLUS)

lint: env
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(RUNS) .pytest_cache
