# stillflow — the two commands a user needs are `make run` and `make test`.
# Everything else (the .venv with torch==2.11.0, the build) is created on first use.
SHELL := /bin/bash
PY ?= python3
VENV ?= $(CURDIR)/.venv
TORCH_VERSION := 2.11.0
# PyAV (bundles FFmpeg): the independent decoder tests/video_mp4.rs checks our MP4s with.
AV_VERSION := 18.1.0
# PyAV decodes to numpy arrays: the independent MP4 decoder of the tests (scripts/decode_video.py).
NUMPY_VERSION := 2.4.6
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)-av$(AV_VERSION)-np$(NUMPY_VERSION)
CUDA_HDR_STAMP := $(VENV)/.cuda-headers
ENV := . scripts/dev-env.sh &&
CARGO ?= cargo
BIN := target/release/run-pipeline
ARGS ?=

.PHONY: all venv build run test clippy fmt build-cuda doctor clean-venv bench

all: build

$(TORCH_STAMP):
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade --quiet pip
	$(VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(VENV)/bin/python -m pip install --quiet av==$(AV_VERSION) numpy==$(NUMPY_VERSION)
	@$(VENV)/bin/python -c 'import torch; assert torch.__version__.startswith("$(TORCH_VERSION)"), torch.__version__; print("torch", torch.__version__, "in $(VENV)")'
	@touch $@

venv: $(TORCH_STAMP)

build: $(TORCH_STAMP)
	$(ENV) $(CARGO) build --release

run: build
	$(BIN) $(ARGS)

test: $(TORCH_STAMP)
	mkdir -p target && $(ENV) $(CARGO) test --release --no-fail-fast 2>&1 | tee target/test.log; exit $${PIPESTATUS[0]}

clippy: $(TORCH_STAMP)
	$(ENV) $(CARGO) clippy --release --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

$(CUDA_HDR_STAMP): $(TORCH_STAMP)
	$(VENV)/bin/python -m pip install --quiet nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
	@touch $@

# Release binary with the CUDA shim; copy it to a GPU machine and source scripts/gpu-env.sh there.
build-cuda: $(CUDA_HDR_STAMP)
	$(ENV) $(CARGO) build --release --features cuda
	cp $(BIN) target/run-pipeline-cuda
	@echo "built target/run-pipeline-cuda"

doctor: build
	$(BIN) doctor

bench: $(TORCH_STAMP)
	$(ENV) $(CARGO) bench

clean-venv:
	rm -rf $(VENV)
