"""One way to log for every dSC process: one handler on stderr, JSON lines by default
(DSC_LOG_FORMAT=text for a person at a terminal), and the ids of the work in scope on every line.

The ids live in a context variable: the shared request middleware sets the request id, the
workers set the job, distillation or evaluation id when they claim one. Starlette copies the
context into the threadpool that runs sync endpoints, so a line written deep in the sampler still
carries its request id. stdout stays free for what a command prints (`dsc sample --json | jq`);
where stderr is not a terminal (a service's log file), the Hugging Face libraries draw no progress bars.

uvicorn's loggers propagate to this handler (its own access log is off: the middleware writes one
line per request), and so do vLLM's: vLLM would otherwise install its own text handler on stdout.
Its engine core is a spawned process that inherits no handlers, so vLLM is pointed at a logging
config file that installs this same formatter in every process it starts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Literal, Mapping, Protocol

LogFormat = Literal["json", "text"]


class LogOptions(Protocol):
    """What logging reads of the settings (Settings has both): logs import no settings module."""

    log_format: LogFormat
    log_level: str | None

_ids: ContextVar[Mapping[str, str]] = ContextVar("dsc_log_ids", default=MappingProxyType({}))

# Passed to uvicorn.Config: uvicorn leaves logging to us and writes no access log of its own.
UVICORN_LOGGING: dict[str, Any] = {"log_config": None, "access_log": False}

QUIET_LOGGERS = ("alembic", "httpx", "urllib3")  # alembic lists its plugins at every start
VLLM_CONFIG_PREFIX = "dsc-vllm-logging-"


@contextmanager
def _scope(ids: Mapping[str, str]) -> Iterator[None]:
    token = _ids.set(MappingProxyType(dict(ids)))
    try:
        yield
    finally:
        _ids.reset(token)


def log_ids(**ids: str | None) -> AbstractContextManager[None]:
    """Put these ids (request_id, job_id, distillation_id, evaluation_id) on every line logged
    inside the block: in this thread or task, and what it hands to Starlette's threadpool."""
    return _scope({**_ids.get(), **{key: str(value) for key, value in ids.items() if value is not None}})


def no_log_ids() -> AbstractContextManager[None]:
    """No ids inside the block: for a signal handler, which runs in whatever task it interrupted."""
    return _scope({})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ids in scope, then the record's own structured fields (`extra={"fields": {...}}`)."""
    return {**_ids.get(), **(getattr(record, "fields", None) or {})}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the ids in scope and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """A line for a person: time, level, logger, the ids in scope, the message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(dsc_ids)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{key}={value}" for key, value in _ids.get().items())
        record.dsc_ids = f" [{ids}]" if ids else ""
        return super().formatMessage(record)


def make_formatter(log_format: LogFormat = "json") -> logging.Formatter:
    return TextFormatter() if log_format == "text" else JsonFormatter()


def configure_logging(settings: LogOptions, *, default_level: str = "INFO") -> None:
    """Route every logger of this process through one handler on stderr. `default_level` applies
    when DSC_LOG_LEVEL is unset: INFO for the services, WARNING for one-shot commands."""
    level = (settings.log_level or default_level).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the middleware's access line has the request id
    for chatty in QUIET_LOGGERS:
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # Python warnings become log lines too, not bare text
    _point_vllm_here(settings.log_format, level)
    if not sys.stderr.isatty():
        _no_progress_bars()


def _no_progress_bars() -> None:
    """Progress bars are noise in a log file or pipe (a service's stderr): the Hugging Face
    libraries draw none. Read when huggingface_hub is imported, so told directly if it already is."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _point_vllm_here(log_format: LogFormat, level: str) -> None:
    """Have vLLM, in this process and in those it spawns, log through our formatter to stderr.
    An operator's own VLLM_LOGGING_CONFIG_PATH, or VLLM_CONFIGURE_LOGGING=0 (vLLM's lines then
    reach our handler in this process only), is left alone."""
    if os.environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        return
    current = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if current and not Path(current).name.startswith(VLLM_CONFIG_PREFIX):
        return
    try:
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(_write_vllm_config(log_format, level))
    except OSError:  # no writable temp directory: vLLM adds no handler, its lines reach ours in this process
        os.environ.pop("VLLM_LOGGING_CONFIG_PATH", None)
        os.environ["VLLM_CONFIGURE_LOGGING"] = "0"


def _vllm_logging_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig for the `vllm` logger (only: the root logger is ours)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"dsc": {"()": "shared.logs.make_formatter", "log_format": log_format}},
        "handlers": {"dsc": {"class": "logging.StreamHandler", "formatter": "dsc", "stream": "ext://sys.stderr"}},
        "loggers": {"vllm": {"handlers": ["dsc"], "level": level, "propagate": False}},
    }


def _write_vllm_config(log_format: LogFormat, level: str) -> Path:
    # Named by its content (and user), so processes that share it write the same bytes.
    path = Path(tempfile.gettempdir()) / f"{VLLM_CONFIG_PREFIX}{os.getuid()}-{log_format}-{level.lower()}.json"
    text = json.dumps(_vllm_logging_config(log_format, level))
    if not path.exists() or path.read_text() != text:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)  # a process starting vLLM meanwhile reads the old or the new file, never half
    return path
