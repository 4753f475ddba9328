# secure-fl: two commands do all set-up on a fresh machine.
#   make run    create .venv if missing and run the default federated job
#   make test   create .venv if missing, lint, type-check and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
EXTRAS ?= dev,flower
# `make test` leaves out the multi-minute Flower deployments (marker `heavy`); `make test-heavy` runs them.
PYTEST_ARGS ?= -m "not heavy"
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: run test test-heavy lint typecheck bench venv clean

venv: $(STAMP)

# torch is installed first, pinned, so no dependency can pull a CUDA build.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH)"
	@touch $@

run: $(STAMP)
	$(BIN)/secure-fl run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check secure_fl crypto privacy audits tests benchmarks examples
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -m heavy -s

bench: $(STAMP)
	$(BIN)/secure-fl bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
