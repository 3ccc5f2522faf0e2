"""bench/student_serving.py: dSC's engine options become `vllm serve` flags that vLLM's own parser
reads back as the same values, and the load client's percentiles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from shared.stats import percentile  # noqa: E402
from student_serving import pooled, summarise, vllm_flags  # noqa: E402

OPTIONS = {"model": "/m", "dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "enable_prefix_caching": True,
           "seed": 0, "enable_lora": True, "max_loras": 4, "max_lora_rank": 64, "kv_cache_memory_bytes": 2**30,
           "enable_chunked_prefill": False, "max_num_batched_tokens": 4096, "gpu_memory_utilization": 0.2,
           "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True}}


def test_flags_spell_every_option_but_the_model():
    flags = vllm_flags(OPTIONS)
    assert "--model" not in flags and "/m" not in flags
    assert "--no-enable-chunked-prefill" in flags and "--enforce-eager" in flags
    assert flags[flags.index("--kv-cache-memory-bytes") + 1] == str(2**30)


def test_vllms_own_parser_reads_the_flags_back():
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "/m", *vllm_flags(OPTIONS)])
    for name, value in OPTIONS.items():
        if name != "structured_outputs_config":
            assert getattr(args, name) == value, name
    assert args.structured_outputs_config.backend == "guidance" and args.structured_outputs_config.disable_any_whitespace


def test_percentile_interpolates():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile(list(map(float, range(1, 21))), 0.95) == pytest.approx(19.05)


def test_rounds_pool_into_one_level():
    def row(latency: float, ttft: float, ok: bool = True) -> dict:
        return {"ok": ok, "latency_s": latency, "ttft_s": ttft, "output_tokens": 64 if ok else 0, "prompt_tokens": 40,
                "error": None if ok else "boom"}

    first = {"concurrency": 16, "wall_s": 10.0, "rows": [row(1.0, 0.1), row(2.0, 0.2)]}
    second = {"concurrency": 16, "wall_s": 30.0, "rows": [row(3.0, 0.3), row(4.0, 0.4, ok=False)]}
    level = summarise(pooled((first, second)))
    assert (level["concurrency"], level["requests"], level["ok"], level["errors"]) == (16, 4, 3, 1)
    assert level["requests_per_s"] == pytest.approx(3 / 40.0, abs=1e-3)  # ok requests over both rounds' wall time
    assert level["ttft_p50_ms"] == pytest.approx(200.0)
