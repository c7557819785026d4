# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup clean

# The venv is rebuilt only when the pins or the package metadata change.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The demo starts afresh each time: a second run into the same export folder is refused by design.
demo: $(STAMP)
	rm -rf runs/quickstart
	WANDB_MODE=disabled $(VENV)/bin/jointprune fit --config experiments/quickstart.yaml

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -q

clean:
	rm -rf $(VENV) lightning_logs runs .pytest_cache
