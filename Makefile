# sonoguide — one-command workflows. `make test` does all of its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: setup sysdeps test demo lint model bundle eval bench mutation clean

setup: $(STAMP)

# Re-install only when the project metadata changed: `make setup` is fast when nothing did.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# ONNX Runtime per platform (service/tools/onnxruntime_extra.py): cpu, or gpu where a GPU or the GPU build is.
	extra=$$($(PY) -m service.tools.onnxruntime_extra); \
	  for other in $$($(PY) -m service.tools.onnxruntime_extra --remove); do $(PY) -m pip uninstall --quiet --yes $$other; done; \
	  $(PY) -m pip install --quiet -e ".[dev$${extra:+,$$extra}]"
	@touch $(STAMP)

sysdeps:
	@scripts/ensure-system-deps.sh

# Two pytest workers (pytest-xdist), a test file each at a time: much of the suite waits on real
# brokers, PACS outages and subprocesses, so two files at once overlap the waits (docs/testing.md).
TEST_WORKERS ?= 2
test: sysdeps setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: sysdeps setup
	$(VENV)/bin/sonoguide demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check firmware_bridge service sim models tests scripts
	$(VENV)/bin/ruff format --check firmware_bridge service sim models tests scripts
	$(VENV)/bin/mypy firmware_bridge service sim models

# Regenerates the shipped models/sonoguide-view/ folders from scratch on the CPU, on 2 idle cores:
# the frame model 1.4.0 in 27 min (frames 6.5 min, 15 epochs of ~80 s; up to ~33 min when this
# machine kind runs slow or shared), then 1.5.0 = 1.4.0 + its clip head (clips of 1 800 training and
# 240 held-out phantoms, features, ~150 s of training; docs/model.md) and the closed-loop runs its
# card reports (`sonoguide eval`, camera and guided arms: defaults, seeds 800000+ and 900000+; ~8 min).
CLIP := models/sonoguide-view/1.5.0
CLIP_SEEDS := 200000 800000 900000
model: setup
	$(PY) -m pip install --quiet -e '.[dev,train]'
	$(PY) -m models.build $(MODEL_ARGS)
	OMP_NUM_THREADS=1 $(PY) -m models.clip_head --model models/sonoguide-view/1.4.0 --out build/clip \
	  --cache build/model-data/clip --candidate $(CLIP) --version 1.5.0 $(CLIP_ARGS)
	for base in $(CLIP_SEEDS); do $(VENV)/bin/sonoguide eval --arms camera,guided --model $(CLIP) \
	  --seed-base $$base --json build/clip/eval-$$base.json --plots build/clip/plots-$$base || exit 1; done
	$(PY) -m models.clip_head --model models/sonoguide-view/1.4.0 --out build/clip --head build/clip/clip_head.onnx \
	  --candidate $(CLIP) --version 1.5.0 --closed-loop $(foreach b,$(CLIP_SEEDS),build/clip/eval-$(b).json)
	@if [ -n "$(BUNDLE_KEY)" ]; then $(MAKE) --no-print-directory bundle; fi

# A signed bundle of the newest model folder for field updates (docs/model-updates.md):
# `make bundle BUNDLE_KEY=vendor.key` (or `make model BUNDLE_KEY=...` after retraining).
BUNDLE_KEY ?=
BUNDLE_OUT ?= build/bundles
bundle: setup
	@test -n "$(BUNDLE_KEY)" || { echo "make bundle: set BUNDLE_KEY=path/to/NAME.key (sonoguide model keygen)" >&2; exit 2; }
	@mkdir -p $(BUNDLE_OUT)
	@dir=$$(ls -d models/sonoguide-view/*/ | sort -V | tail -1); ver=$$(basename $$dir); \
	  $(VENV)/bin/sonoguide model pack $$dir --key $(BUNDLE_KEY) -o $(BUNDLE_OUT)/sonoguide-view-$$ver.sgb

eval: sysdeps setup
	$(VENV)/bin/sonoguide eval $(EVAL_ARGS)

bench: sysdeps setup
	$(VENV)/bin/sonoguide bench $(BENCH_ARGS)

# Mutation report on the core pure modules, each with its own tests (docs/testing.md): slow, so not
# part of `make test`. Writes build/mutation/report.md; MUTATION_ARGS="protocol search" for some.
mutation: sysdeps setup
	$(PY) scripts/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
