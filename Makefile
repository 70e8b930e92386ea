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

.PHONY: setup run test lint bench clean sim-fast

$(BIN)/swarmhub: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,lab]'
	touch $@

setup: $(BIN)/swarmhub
	@bash scripts/install-system-deps.sh $(APT_PACKAGES)

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

# Opt-in: the modules `lab simulate` spends its time in, compiled with mypyc (it ships with
# mypy) into a copy of the package under build/sim-fast; src/ stays pure Python (what the
# tests and every other command run). Same results, run for run. Use it with
#   PYTHONPATH=build/sim-fast .venv/bin/swarmhub lab simulate ...
SIM_FAST := build/sim-fast
SIM_FAST_MODULES := engine/swarm.py engine/picker.py engine/peerstate.py engine/choker.py \
	engine/schedule.py engine/superseed.py engine/integrity.py \
	lab/netmodel.py lab/simulate.py lab/simservices.py lab/simhosts.py

sim-fast:  # after `make setup`
	rm -rf $(SIM_FAST) && mkdir -p $(SIM_FAST)
	cp -r src/swarmhub $(SIM_FAST)/
	cd $(SIM_FAST) && $(CURDIR)/$(BIN)/mypyc $(addprefix swarmhub/,$(SIM_FAST_MODULES)) >build.log
	@echo "built: PYTHONPATH=$(SIM_FAST) $(BIN)/swarmhub lab simulate ..."

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
