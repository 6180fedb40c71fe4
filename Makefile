# `make test` creates (or reuses) a virtual environment, installs timm_dd with its dev extra and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first so that pip does not resolve a newer build; override on machines with other wheels
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install test demo clean

# the demo: offline, on the embedded `digits` data, 10 real images per class, a shortened schedule (DEMO_EPOCHS
# instead of 1000 / 4000 epochs); ConvNet teacher + ResNet18 baseline vs ResNet18 DropPath+KD (dpkd)
DEMO_EPOCHS ?= 40
DEMO_OUT ?= output/demo
DEMO_COMMON = --dataset digits --real-ipc 10 --seeds 0 --epochs $(DEMO_EPOCHS) --eval-every 10 --cpu

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	@echo "== timm_dd demo: digits, 10 real images per class, $(DEMO_EPOCHS) epochs (shortened from 1000/4000) =="
	$(BIN)/python train.py -c baseline --models convnet3 resnet18_dd --set lr_milestones=[$$(( $(DEMO_EPOCHS) / 2 ))] \
		$(DEMO_COMMON) --output $(DEMO_OUT)/baseline
	$(BIN)/python train.py -c dpkd --models resnet18_dd --teacher-epochs $(DEMO_EPOCHS) \
		--final-epochs $$(( $(DEMO_EPOCHS) / 4 )) --period $$(( $(DEMO_EPOCHS) / 8 )) \
		$(DEMO_COMMON) --output $(DEMO_OUT)/dpkd
	@$(BIN)/python -c "from timm_dd.train.report import merge_results; \
		print(merge_results(['$(DEMO_OUT)/baseline', '$(DEMO_OUT)/dpkd']))" | tee $(DEMO_OUT)/summary.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
