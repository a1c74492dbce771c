# Two entry points that work on a fresh machine with only Python: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test config-smoke lint venv clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/resprune demo

test: $(STAMP)
	$(BIN)/python -m pytest

# CI: one cifar10-mini config end to end, 1 epoch per stage, so shipped configs stay valid.
MINI := ../shared/datasets/cifar10-mini
config-smoke: $(STAMP)
	@if [ -d $(MINI)/cifar-10-batches-py ]; then \
	  $(BIN)/resprune compress --config configs/mini/cifar10-resnet56-compress.yaml \
	    --epochs 1 --retrain-epochs 1 --max-steps 1 --final-epochs 0 --sparse-epochs 1 \
	    --finetune-epochs 1 --finetune-final-epochs 1 --warmup-epochs 0 --no-progress --overwrite \
	    --out runs/ci-config-smoke; \
	else echo "config-smoke skipped: $(MINI) is not present"; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
