# Two commands: `make demo` (main job on real data) and `make test` (full suite).
# Both create or reuse the project virtual environment first (tools/setup_env.sh).
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export DYNSCALE_VENV := $(VENV)

.PHONY: setup test demo bench complexity
setup:
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)

demo: setup
	bash tools/demo.sh

bench: setup
	$(PY) tools/benchmark.py

complexity: setup
	$(PY) tools/complexity.py
