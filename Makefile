# `make test` and `make run` work on a fresh machine with Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-fast test-tf test-jax test-torch lint run variants fixtures \
	fixtures-timm fixtures-mmdet benchmark benchmark-train benchmark-export durations clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e ".[test]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .

# Whole suite on TensorFlow; the core model tests again on JAX run inside it, as one more unit
# of work (tests/test_core_on_jax.py: a JAX pytest process). Every run ends with its
# 15 slowest tests, so a test that grows expensive shows up in the CI log. pytest-xdist runs
# TEST_WORKERS processes (2: CI's cores); a whole file goes to one worker, so module-scoped
# fixtures are built once; tests/conftest.py gives each worker's TensorFlow its share of the
# cores and starts the longest files first (tests/durations.json, written by `make
# durations`), which needs --no-loadscope-reorder (pytest-xdist >= 3.8): without it
# pytest-xdist hands out the files with the most tests first. TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install lint test-tf

test-tf: install
	KERAS_BACKEND=tensorflow $(PYTEST) tests

# The whole suite with a JUnit report, then tests/durations.json (each file's seconds) from it:
# the order `make test` starts the files in. Rerun it when tests are added or grow.
durations: install
	KERAS_BACKEND=tensorflow $(PYTEST) --junitxml=.pytest-durations.xml tests
	$(PY) tools/test_durations.py .pytest-durations.xml

# The JAX pass alone: the one test that runs the `core` tests in a JAX process (make test runs
# it inside the TensorFlow run; its environment and XLA flags are defined there only).
test-jax: install
	$(PY) -m pytest -s tests/test_core_on_jax.py

# The everyday loop: everything but the tests marked `slow` (every training run, every export,
# the multi-worker and kill/resume subprocess runs, the keras-hub fit), on TensorFlow.
test-fast: install
	KERAS_BACKEND=tensorflow $(PYTEST) -m "not slow" tests

# The tests that need torch (the `.pth` readers; they importorskip it, so `make test` skips
# them): a separate venv with the package, its test extra and the torch extra (PyPI's torch
# wheel, large), then every test file that imports torch. Fails if torch does not import,
# rather than skipping silently.
TORCH_VENV ?= .venv-torch
TORCH_TESTS = $(shell grep -rl 'importorskip("torch")' tests)

$(TORCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(TORCH_VENV)/bin/python -m pip install $(PIP_FLAGS) -e ".[test,torch]"
	touch $@

test-torch: $(TORCH_VENV)/.installed
	$(TORCH_VENV)/bin/python -c "import torch; print('torch', torch.__version__)"
	KERAS_BACKEND=tensorflow $(TORCH_VENV)/bin/python -m pytest -rs $(TORCH_TESTS)

# The main job on the embedded digits (no download): train a small Res2Net (a few minutes on
# 2 cores, prints validation top-1, writes runs/digits/model.keras), then export it to TFLite
# int8 and ONNX, each artifact checked against the Keras model.
run: install
	$(PY) train/imagenet.py --data digits --model_dir runs/digits
	$(VENV)/bin/res2net-export --model runs/digits/model.keras --format tflite --quantize int8 \
		--calibration-data digits --output runs/digits/export --force
	$(VENV)/bin/res2net-export --model runs/digits/model.keras --format onnx \
		--calibration-data digits --output runs/digits/export --force

# Build every variant; parameters and GMACs next to the reference's.
variants: install
	$(PY) -m keras_res2net.summary

# Every reference fixture: timm's classifiers and mmdetection's detectors, each made in its own
# environment (.venv-ref, .venv-mmdet), never a dependency of the package (tools/README.md).
fixtures: fixtures-timm fixtures-mmdet

fixtures-timm:
	$(PYTHON) -m venv .venv-ref
	.venv-ref/bin/pip install $(PIP_FLAGS) torch==2.14.1 torchvision==0.29.1 timm safetensors numpy
	.venv-ref/bin/python tools/make_reference_fixtures.py

# mmdetection 3.3 fixtures of the five Res2Net detectors (tests/fixtures/mmdet/); a separate
# environment with mmcv-lite, whose missing kernels tools/mmdet_shim.py provides.
# mmcv-lite 2.1.0, not 2.2.0: mmdet 3.3.0 refuses mmcv >= 2.2.
fixtures-mmdet:
	$(PYTHON) -m venv .venv-mmdet
	.venv-mmdet/bin/pip install $(PIP_FLAGS) torch==2.14.1 torchvision==0.29.1
	.venv-mmdet/bin/pip install $(PIP_FLAGS) mmcv-lite==2.1.0 mmengine==0.10.7 mmdet==3.3.0 \
		safetensors numpy
	.venv-mmdet/bin/python tools/mmdet_shim.py
	.venv-mmdet/bin/python tools/make_mmdet_fixtures.py
	.venv-mmdet/bin/python tools/make_mmdet_head_fixtures.py

# Res2Net plain and BN-folded vs keras.applications (and timm when .venv-ref exists, see
# fixtures-timm, or BENCH_ARGS="--reference-python PYTHON"), then TFLite fp32/int8 and
# onnxruntime on 2 threads; each part timed in alternation (docs/speed.md).
BENCH_ARGS ?=
benchmark: install
	$(PY) benchmarks/inference.py $(BENCH_ARGS)

benchmark-export: install
	$(PY) benchmarks/export_latency.py

# Train-step images/s on CPU: res2net50_26w_4s with and without XLA, next to ResNet50.
benchmark-train: install
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(TORCH_VENV) .pytest_cache .ruff_cache
