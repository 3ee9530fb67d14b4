# Two commands for a newcomer: `make demo` and `make test`. Both bootstrap .venv when missing,
# installing the exact versions of requirements/dev.lock (`make lock` regenerates it).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements/dev.lock

.PHONY: demo test test-extended fuzz lint lock bench clean

$(STAMP): pyproject.toml $(LOCK) requirements/nodeps.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned to the CPU build, so nothing pulls a CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -r requirements/nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/plexus demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15 -m "not extended"

# The heavier tier (multi-node Ray cluster, chaos cells, PostgreSQL end to end): CI runs it after
# `make test`; a newcomer can, too. Kept out of `make test` so that stays under 5 minutes on 2 cores.
test-extended: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --durations=15 -m extended

# Schemathesis against a real orchestrator, every phase, 60 cases per operation and phase
# (over 1,000 in all): no 5xx, no answer the OpenAPI document does not describe.
fuzz: $(STAMP)
	PLEXUS_FUZZ_EXAMPLES=60 PLEXUS_FUZZ_PHASES=examples,coverage,fuzzing,stateful \
	    $(PY) -m pytest -q -s -o timeout=1800 tests/orchestrator/test_fuzz_api.py

lint: $(STAMP)
	$(VENV)/bin/ruff check plexus rpc orchestrator learner_agent deploy benchmarks tests
	$(VENV)/bin/mypy rpc plexus learner_agent orchestrator deploy
	$(VENV)/bin/mypy --strict benchmarks/*.py
	$(VENV)/bin/lint-imports

# Every direct and transitive dependency of the dev extra, pinned for Python 3.11 on Linux
# x86-64; the ranges in pyproject.toml stay what the library promises to others.
lock: $(STAMP)
	$(PY) -m pip install --quiet pip-tools
	$(VENV)/bin/pip-compile --quiet --extra dev --strip-extras --allow-unsafe \
	    --no-emit-find-links --no-emit-index-url --no-emit-trusted-host \
	    -c requirements/torch-cpu.txt -o $(LOCK) pyproject.toml
	@# the project itself is installed editable, not from the lock; torch's local label goes
	sed -i -e '/ @ file:\/\//d' -e 's/^torch==\(.*\)+cpu$$/torch==\1/' $(LOCK)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
