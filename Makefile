# vitlens — common tasks. `make help` lists them.
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
VOC_ROOT ?= data/voc
OUT      ?= results
# the default model as compute/__init__.py names it (DEFAULT_MODEL), read without importing vitlens
MODEL    ?= $(shell sed -n 's/^DEFAULT_MODEL = "\(.*\)"$$/\1/p' compute/__init__.py)
METHODS  ?= all
BATCH    ?= 32
PYTEST_ARGS ?=

.PHONY: help install browser test test-fast test-oldest-timm compute dashboard demo bench bench-gpu voc clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## create .venv and install vitlens (editable) with the dev extras

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

browser:  ## install Debian's chromium for the browser test (needs root/apt; skipped if present)
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { command -v apt-get >/dev/null 2>&1 && (apt-get update -q && apt-get install -y -q chromium) ; } || \
	  echo "chromium not installed: the browser test will be skipped"

test: install browser  ## run the whole test suite (installs what it needs first)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install  ## the test suite without slow and browser tests
	$(BIN)/python -m pytest -q -m "not slow and not browser" $(PYTEST_ARGS)

# the oldest timm pyproject.toml accepts, installed beside (not into) .venv, against the tests that touch timm
TIMM_MIN := $(shell sed -n 's/.*"timm>=\([0-9.]*\)".*/\1/p' pyproject.toml)
TIMM_MIN_DIR ?= /tmp/vitlens-timm-$(TIMM_MIN)
test-oldest-timm: install  ## the timm-facing tests against the oldest timm the package accepts
	$(BIN)/pip install -q --no-deps --upgrade --target $(TIMM_MIN_DIR) timm==$(TIMM_MIN)
	PYTHONPATH=$(TIMM_MIN_DIR) $(BIN)/python -c "import timm; assert timm.__version__ == '$(TIMM_MIN)', timm.__version__"
	PYTHONPATH=$(TIMM_MIN_DIR) $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not browser" \
	  tests/test_capture.py tests/test_models.py tests/test_generality.py tests/test_targets.py \
	  tests/test_shared_capture.py tests/methods/test_chefer_lrp.py

compute: install  ## the real job: VOC 2012 val, pretrained ViT, every method, GPU if present
	$(BIN)/vitlens compute --voc-root $(VOC_ROOT) --split val --model $(MODEL) \
	  --methods $(METHODS) --batch-size $(BATCH) --device auto --out $(OUT)

voc: install  ## download and verify Pascal VOC 2012 trainval into $(VOC_ROOT) (needs internet)
	$(BIN)/vitlens download-voc --to $(VOC_ROOT)

dashboard: install  ## browse the results store in $(OUT)
	$(BIN)/vitlens dashboard --store $(OUT)

demo: install  ## offline demo: planted-cue images, a small ViT trained here, every method, dashboard (~4 min)
	$(BIN)/vitlens demo --out $(OUT)/demo

bench: install  ## throughput of every method (img/s) on this machine
	$(BIN)/vitlens bench

bench-gpu: install  ## GPU figures: ViT-B/16 fp32 batch 64, every method, then 1,449 VOC-sized images end to end
	$(BIN)/vitlens bench --model vit_base_patch16_224 --device cuda --batch-size 64 \
	  --end-to-end 1449 --workers 8 --json bench-gpu.json

clean:  ## remove build artefacts (not the results store)
	rm -rf build dist *.egg-info .pytest_cache
