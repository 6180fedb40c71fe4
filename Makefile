# `make test` creates (or reuses) a virtual environment, installs timm_dd with its dev extra and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first so that pip does not resolve a newer build; override on machines with other wheels
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install test demo clean

# the demo: offline, on the embedded `digits` data at 16 px, with schedules shortened to DEMO_EPOCHS (from 1000 /
# 4000 epochs): (1) ConvNet teacher + ResNet18 baseline vs ResNet18 DropPath+KD (dpkd) on 10 real images per class;
# (2) a few short expert trajectories and a short ATT distillation (10 images per class); (3) the same
# cross-architecture comparison on the distilled set
DEMO_EPOCHS ?= 40
DEMO_OUT ?= output/demo
DEMO_TRAIN = --seeds 0 --epochs $(DEMO_EPOCHS) --eval-every 10 --cpu --teacher-epochs $(DEMO_EPOCHS) --recompute-bn \
	--final-epochs $$(( $(DEMO_EPOCHS) / 4 )) --period $$(( $(DEMO_EPOCHS) / 8 ))
DEMO_REAL = --dataset digits --real-ipc 10 --img-size 16

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	@echo "== timm_dd demo: digits at 16 px, schedules shortened to $(DEMO_EPOCHS) epochs (from 1000/4000) =="
	$(BIN)/python train.py -c baseline --models convnet3 resnet18_dd $(DEMO_REAL) $(DEMO_TRAIN) \
		--output $(DEMO_OUT)/real-baseline --no-plots
	$(BIN)/python train.py -c dpkd --models resnet18_dd $(DEMO_REAL) $(DEMO_TRAIN) --output $(DEMO_OUT)/real-dpkd
	$(BIN)/python distill.py experts -c digits-ipc10-att --output $(DEMO_OUT)/experts --threads 1
	$(BIN)/python distill.py distill -c digits-ipc10-att --experts $(DEMO_OUT)/experts --output $(DEMO_OUT)/att \
		--threads 1 | tee $(DEMO_OUT)/att.log
	$(BIN)/python train.py -c baseline --models convnet3 resnet18_dd --data $(DEMO_OUT)/att/distilled $(DEMO_TRAIN) \
		--output $(DEMO_OUT)/att-baseline --no-plots
	$(BIN)/python train.py -c dpkd --models resnet18_dd --data $(DEMO_OUT)/att/distilled $(DEMO_TRAIN) \
		--output $(DEMO_OUT)/att-dpkd
	@( echo "## Distillation on the distillation network (the core claim)"; echo; \
		grep 'random real images per class' $(DEMO_OUT)/att.log; echo; \
		echo "## Cross-architecture, $(DEMO_EPOCHS)-epoch schedules (published: 1000 / 4000)"; echo; \
		echo "Schedules this short show the pipeline working, not DP+KD's published gains (its Lion lr is tuned"; \
		echo "for 4000 epochs); the full protocol is GPU work (benchmarks/reproduce.py)."; echo; \
		$(BIN)/python -c "from timm_dd.train.plots import write_report as w; \
		print(w(['$(DEMO_OUT)/real-baseline', '$(DEMO_OUT)/real-dpkd', '$(DEMO_OUT)/att-baseline', \
		'$(DEMO_OUT)/att-dpkd'], '$(DEMO_OUT)/comparison.md', '$(DEMO_OUT)/comparison.png'))" ) \
		| tee $(DEMO_OUT)/summary.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
