# The two set-up commands of the README: `make demo` and `make test`.
# Both create the virtual environment and install edged into it first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export DEMO_SECONDS ?= 0

.PHONY: demo test install mosquitto cc bench clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

# Mosquitto from Debian's packages when the machine has none (tests start their own brokers).
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
		echo "installing mosquitto with apt-get"; \
		$(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients; }

# A C compiler for edged's QMatMul kernel (`edged models pull` compiles it; so do its tests).
cc:
	@command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || { \
		echo "installing gcc with apt-get"; \
		$(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev; }

test: install mosquitto cc
	$(PY) -m pytest

demo: install mosquitto
	$(PY) tools/demo.py

bench: install mosquitto
	$(PY) tools/bench_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
