"""Renamed settings keep their old environment variable: DSC_VLLM_MAX_MODEL_LEN still sets
max_model_len, which every vLLM engine and the student's transformers runtime read."""

from __future__ import annotations

import pytest

from shared.engines.vllm_engine import engine_settings
from shared.settings import Settings


@pytest.mark.parametrize("variable", ["DSC_MAX_MODEL_LEN", "DSC_VLLM_MAX_MODEL_LEN", "dsc_vllm_max_model_len"])
def test_max_model_len_is_read_from_the_new_and_the_old_variable(monkeypatch, variable):
    monkeypatch.setenv(variable, "1024")
    settings = Settings()
    assert settings.max_model_len == 1024
    assert engine_settings(settings)["max_model_len"] == 1024


def test_the_new_variable_wins_over_the_old_one_and_arguments_over_both(monkeypatch):
    monkeypatch.setenv("DSC_VLLM_MAX_MODEL_LEN", "1024")
    monkeypatch.setenv("DSC_MAX_MODEL_LEN", "512")
    assert Settings().max_model_len == 512
    assert Settings(max_model_len=300).max_model_len == 300


def test_max_model_len_defaults_and_refuses_nonsense(monkeypatch):
    monkeypatch.delenv("DSC_MAX_MODEL_LEN", raising=False)
    monkeypatch.delenv("DSC_VLLM_MAX_MODEL_LEN", raising=False)
    assert Settings().max_model_len == 2048
    monkeypatch.setenv("DSC_VLLM_MAX_MODEL_LEN", "long")
    with pytest.raises(ValueError, match="MAX_MODEL_LEN"):  # the error names the setting by its current variable
        Settings()
