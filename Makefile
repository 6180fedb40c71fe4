# `make test` creates (or reuses) a virtual environment, installs timm_dd with its dev extra and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first so that pip does not resolve a newer build; override on machines with other wheels
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install test demo clean

# the demo (timm_dd/cli/demo.py, also `timm-dd-demo` from a wheel): offline, on the embedded `digits` data at 16 px,
# with schedules shortened to DEMO_EPOCHS (from 1000 / 4000 epochs): (1) ConvNet teacher + ResNet18 baseline vs
# ResNet18 DropPath+KD (dpkd) on 10 real images per class; (2) a few short expert trajectories and a short ATT
# distillation (10 images per class); (3) the same cross-architecture comparison on the distilled set
DEMO_EPOCHS ?= 40
DEMO_OUT ?= output/demo

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m timm_dd.cli.demo --epochs $(DEMO_EPOCHS) --output $(DEMO_OUT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
