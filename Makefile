# The two commands of the quick start: `make run` and `make test`.
# Everything the project needs is installed from here (pip into .venv, apt-get for
# the Debian packages the interop tests use).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# iptables, gcc, libc6-dev, libnetfilter-queue-dev: the lab's latency (an NFQUEUE delay line
# compiled at lab setup; see src/swarmhub/lab/latency.py).
# postgresql, redis-server: the hub past one machine (tests start their own servers).
APT_PACKAGES := aria2 curl iproute2 chromium chromium-driver \
	iptables gcc libc6-dev libnetfilter-queue-dev postgresql redis-server

.PHONY: setup run test lint bench clean

$(BIN)/swarmhub: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,lab]'
	touch $@

# The mypyc-compiled swarm core and simulator (optional: ~1.7x faster `lab simulate`; on
# any failure the pure modules are used, and `swarmhub lab simulate` says so). Then the
# bytecode, as pip writes it for an installed package: an editable checkout has none, and
# with PYTHONDONTWRITEBYTECODE set every swarmhub process (each test's) compiled the modules
# it imported (~0.07 CPU-s of a get's start-up).
setup: $(BIN)/swarmhub
	@bash scripts/install-system-deps.sh $(APT_PACKAGES)
	@$(BIN)/python scripts/build-compiled.py || \
		echo "make setup: no compiled modules (see above); the pure-Python ones are used"
	@$(BIN)/python -m compileall -q src/swarmhub

run: setup
	$(BIN)/swarmhub demo

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: setup
	@bash scripts/install-system-deps.sh nginx-light opentracker
	$(BIN)/python bench/loopback.py
	$(BIN)/python bench/create.py
	$(BIN)/python bench/origin.py
	$(BIN)/python bench/tracker.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info src/swarmhub/_mypyc
