# Two commands: `make demo` (main job on real data) and `make test` (full suite).
# Both create or reuse the project virtual environment first (tools/setup_env.sh).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export DYNSCALE_VENV := $(VENV)
# the explorer's browser test fails instead of skipping when chromium is missing (setup installs it)
export DYNSCALE_REQUIRE_BROWSER := 1

.PHONY: setup test test-fast demo bench complexity
# pytest-xdist: one worker per core, one torch thread each (tests/conftest.py).  No test shares a port or a
# fixed path (torchrun --standalone picks a free port, DDP tests rendezvous in their tmp_path), so plain load
# balancing is safe.
XDIST := -n auto
setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider $(XDIST) $(PYTEST_ARGS)

# the edit-test loop: everything but the tests marked slow (end-to-end runs, multi-process DDP)
test-fast: setup
	$(PY) -m pytest tests -q -p no:cacheprovider $(XDIST) -m "not slow" $(PYTEST_ARGS)

demo: setup
	bash tools/demo.sh

bench: setup
	$(PY) tools/benchmark.py

complexity: setup
	$(PY) tools/complexity.py
