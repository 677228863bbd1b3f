# AlphaFace: caption dataset pipeline and swapper trainer. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.0 torchvision==0.29.0
# MTCNN's weights ship inside this wheel; it pins torch<2.3, numpy<2 and Pillow<10.3, which only its own code
# needs (we load its three weight files, never the package), so it goes in without its dependencies
MTCNN_PIN := facenet-pytorch==2.6.0
# vLLM's own venv: vLLM pins its torch/transformers, so it never shares .venv
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PIN := vllm==0.33.0
# Tests and the demo run offline (they set HF_HUB_OFFLINE=1 themselves); caption, embed, train and
# publish reach the Hub as the user's environment allows.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# caption / embed / train / publish parameters (override on the command line)
SOURCE ?= vggface2-hq
INPUT ?=
OUT ?=
MODEL ?= OpenGVLab/InternVL3-14B-hf
ENGINE ?= vllm
PROMPT ?= holistic
GPUS ?= 1
NNODES ?= 1
DATASET ?= $(OUT)
CLIP ?= ViT-B-32
PRETRAINED ?= openai
CONFIG ?= training/configs/alphaface.yaml
DATA ?= $(DATASET)
REPO ?=
ARGS ?=
DEMO := demo_out

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint demo world bench bench-gpu caption embed train publish evaluate clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS=":.*## "} {printf "  %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "python >= 3.11 needed"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_PINS)
	$(PY) -m pip install -q --no-deps $(MTCNN_PIN)
	touch $(STAMP)

install: $(STAMP) ## create .venv with torch 2.14 and the project [dev] (idempotent)

test: install ## run the test suite (slow and browser tests excluded)
	$(OFFLINE) $(PY) -m pytest -q -m "not slow and not browser" tests

$(VLLM_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "python >= 3.11 needed"'
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -e '.[vllm,test]' $(VLLM_PIN)
	touch $(VLLM_STAMP)

.PHONY: test-vllm
test-vllm: $(VLLM_STAMP) ## create .venv-vllm (vllm 0.33.0, idempotent) and run the tests marked vllm (CPU, up to the forward)
	$(OFFLINE) $(VLLM_PY) -m pytest -q -m vllm tests

test-all: install ## run every test, slow ones included (browser tests: make test-browser)
	$(OFFLINE) $(PY) -m pytest -q -m "not browser" tests

# the web page's real-browser tests: Debian's chromium and its chromedriver (one source package, matching versions)
BROWSER_DEBS := chromium chromium-driver
.PHONY: test-browser app
test-browser: install ## install Debian's chromium + chromium-driver if missing (apt, as root or with sudo), run the tests marked browser
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	  else echo "make test-browser: error: /usr/bin/chromium or /usr/bin/chromedriver is missing and this is not root and has no sudo: apt-get install $(BROWSER_DEBS) as root" >&2; exit 2; fi; \
	  command -v apt-get >/dev/null || { echo "make test-browser: error: no apt-get here: install chromium and its chromedriver as /usr/bin/chromium and /usr/bin/chromedriver" >&2; exit 2; }; \
	  echo "installing $(BROWSER_DEBS) with apt-get" >&2; \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $(BROWSER_DEBS) || exit 2; \
	fi
	$(OFFLINE) $(PY) -m pytest -q -m browser tests

app: install ## the web page on http://127.0.0.1:7860: CKPT=RUN_DIR|hf://USER/NAME (default: the demo's world run) [ARGS="--port 7861 --host 0.0.0.0"]
	$(PY) -m swapper.app --checkpoint $(or $(CKPT),$(DEMO)/world/runs/full_s0) $(ARGS)

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check pipeline training swapper demo tests bench
	$(VENV)/bin/ruff format --check pipeline training swapper demo tests bench

demo: install ## the whole flow on synthetic data with tiny models, on CPU
	$(OFFLINE) $(PY) -m demo --out $(DEMO)

world: install ## the miniature AlphaFace world: networks trained in it, the swapper trained and judged (CPU); WORLD=folder [ARGS="--seeds 0 1"]
	$(OFFLINE) $(PY) -m demo.world --out $(or $(WORLD),world_out) $(ARGS)

bench: install ## every benchmark; one JSON line each
	@for b in bench/[!_]*.py; do echo "# $$b" >&2; $(OFFLINE) $(PY) $$b || exit 1; done

bench-gpu: ## every GPU bench in one run (about 8 min on an H200); OUT=folder, WHEELS=folder; DRY=1 on CPU
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash bench/gpu.sh $(if $(OUT),--out $(OUT)) $(if $(WHEELS),--wheels $(WHEELS)) $(if $(DRY),--dry-run)

caption: install ## caption INPUT into OUT: SOURCE= INPUT= OUT= MODEL= ENGINE= PROMPT= GPUS= [NNODES= ARGS=]
	@test -n "$(INPUT)" -a -n "$(OUT)" || { echo "usage: make caption SOURCE=vggface2-hq INPUT=DIR OUT=DATASET MODEL=... GPUS=8"; exit 2; }
	$(VENV)/bin/torchrun --nnodes $(NNODES) --nproc_per_node $(GPUS) -m pipeline.caption \
	  --source $(SOURCE) --input $(INPUT) --output $(OUT) --engine $(ENGINE) --model $(MODEL) --prompt $(PROMPT) $(ARGS)

embed: install ## embed captions of DATASET with CLIP: DATASET= CLIP= PRETRAINED= GPUS= [ARGS=]
	@test -n "$(DATASET)" || { echo "usage: make embed DATASET=DIR CLIP=ViT-B-32 PRETRAINED=openai GPUS=1"; exit 2; }
	$(VENV)/bin/torchrun --nnodes $(NNODES) --nproc_per_node $(GPUS) -m pipeline.embed \
	  --dataset $(DATASET) --clip-model $(CLIP) --pretrained $(PRETRAINED) $(ARGS)

train: install ## train the swapper: CONFIG= DATA= OUT= GPUS= [ARGS=]
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make train CONFIG=training/configs/alphaface.yaml DATA=DATASET OUT=RUN_DIR GPUS=8"; exit 2; }
	$(VENV)/bin/accelerate launch --num_processes $(GPUS) -m training.train \
	  --config $(CONFIG) --data $(DATA) --output $(OUT) $(ARGS)

publish: install ## publish DATASET to the Hub: DATASET= REPO= [ARGS=--dry-run]
	@test -n "$(DATASET)" -a -n "$(REPO)" || { echo "usage: make publish DATASET=DIR REPO=user/name"; exit 2; }
	$(PY) -m pipeline.publish --dataset $(DATASET) --repo-id $(REPO) $(ARGS)

evaluate: install ## FF++ evaluation of a swapper: CKPT= DATA=FFPP_ROOT OUT=REPORT_DIR [ARGS="--id-model cosface:P ..."]
	@test -n "$(CKPT)" -a -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make evaluate CKPT=RUN_DIR DATA=FFPP_ROOT OUT=REPORT_DIR ARGS='--id-model cosface:r50.pth --pose-model hopenet:hopenet.pkl --expr-model deep3d:epoch_20.pth --detector scrfd:det_10g.onnx'"; exit 2; }
	$(PY) -m swapper.evaluate --protocol ffpp --data $(DATA) --checkpoint $(CKPT) --output $(OUT) $(ARGS)

clean: ## remove demo output and caches (keeps .venv)
	rm -rf $(DEMO) world_out .pytest_cache .ruff_cache

.PHONY: publish-model
publish-model: install ## publish a trained swapper as a Hub model repo: MODEL=RUN_DIR REPO=user/name [ARGS=--dry-run]
	@test -n "$(MODEL)" -a -n "$(REPO)" || { echo "usage: make publish-model MODEL=RUN_DIR REPO=user/name"; exit 2; }
	$(PY) -m swapper.publish_model --checkpoint $(MODEL) --repo-id $(REPO) $(ARGS)
