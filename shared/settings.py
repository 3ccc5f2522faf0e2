"""Configuration: one pydantic-settings object, read once at start and passed down.

Every field can be set by an environment variable with the `DSC_` prefix (e.g. DSC_DATABASE_URL)
or by the CLI, which builds the object with overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from shared.device import DeviceChoice, preferred_dtype  # noqa: F401  (preferred_dtype: re-exported)
from shared.keys import configured_digest
from shared.logs import LogFormat

EngineName = Literal["auto", "vllm", "transformers", "openai"]
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)
BUNDLED_MODEL = "smollm2-135m-instruct"


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "dsc"


class Settings(BaseSettings):
    # validate_by_name: a renamed field keeps its name for Settings(...) and the CLI beside its old env alias.
    model_config = SettingsConfigDict(env_prefix="DSC_", env_file=".env", extra="ignore", validate_by_name=True)

    data_dir: Path = Field(default_factory=_default_data_dir, description="Database file, model store, job artifacts.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    model_store: Path | None = Field(None, description="Materialised models and distilled students; default data_dir/models.")

    teacher_model: str = BUNDLED_MODEL
    student_base_model: str = BUNDLED_MODEL
    engine: EngineName = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Served models' dtype; auto: bfloat16 where the hardware computes it natively (a GPU of compute "
        "capability 8.0+, a CPU with AVX-512 BF16 / AMX), float16 on an older GPU, else float32 (shared.device)."
    )

    # vLLM on CPU reserves memory by this fraction even without a GPU (docs/architecture.md §10).
    vllm_gpu_memory_utilization: float = Field(0.2, gt=0, le=1, description="Share of GPU memory a vLLM engine takes (weights, activations, KV cache).")
    vllm_kv_cache_gib: float | None = Field(
        None, gt=0,
        description="KV cache of each vLLM engine in GiB; set, it replaces the sizing by vllm_gpu_memory_utilization. "
        "Unset: on a GPU the memory share sizes it; on CPU 1 GiB (~45k tokens of SmolLM2-135M), because vLLM-CPU "
        "sizes by a share of NUMA node 0 minus the worker's whole RSS, which fails where the node's memory is "
        "onlined on demand or small.",
    )
    vllm_enforce_eager: bool = False
    vllm_cpu_threads_bind: str | None = Field(None, description="e.g. '0-1'; default: all cores of this machine.")
    vllm_tensor_parallel_size: int = Field(
        1, description="GPUs each vLLM engine (teacher, student, the trainer's evaluation) splits every layer over (vLLM tensor_parallel_size)."
    )
    vllm_pipeline_parallel_size: int = Field(
        1, description="Groups of layers each vLLM engine spreads over further GPUs (vLLM pipeline_parallel_size); "
        "an engine uses tensor x pipeline GPUs."
    )

    max_model_len: int = Field(
        2048,
        # Aliases bypass env_prefix, so both names are spelled out; DSC_VLLM_MAX_MODEL_LEN is the old name.
        validation_alias=AliasChoices("DSC_MAX_MODEL_LEN", "DSC_VLLM_MAX_MODEL_LEN"),
        description="Context length (prompt plus completion tokens) of every vLLM engine and of the student's transformers runtime.",
    )

    openai_base_url: str | None = Field(None, description="Base URL of a remote OpenAI-compatible server (engine=openai).")
    openai_api_key: str = "EMPTY"
    openai_concurrency: int = 16
    openai_timeout: float = Field(120.0, gt=0, description="Seconds one request to the remote server may take (engine=openai).")
    openai_max_retries: int = Field(
        4, ge=0, description="Retries of a request that failed transiently (429, 5xx, 408, a dropped connection, a timeout)."
    )
    openai_retry_max_wait: float = Field(
        30.0, gt=0, description="Longest wait before one retry: exponential backoff, or the server's Retry-After, up to this."
    )

    # --- engine health ---
    on_engine_death: Literal["exit", "restart"] = Field(
        "exit",
        description="When the engine dies (vLLM's engine core killed, out of memory, a CUDA error): readiness turns 503 and "
        "work is handed back; then 'exit' ends the process with status 75 for the orchestrator to restart it, "
        "'restart' builds a new engine in the process.",
    )
    engine_max_restarts: int = Field(3, ge=0, description="In restart mode, engine restarts of one process before it exits instead.")

    # --- services ---
    host: str = "127.0.0.1"
    teacher_port: int = 8000
    student_port: int = 8001
    max_body_bytes: int = Field(8 * 1024 * 1024, description="Largest request body a service accepts.")
    log_format: LogFormat = Field(
        "json", description="Log lines on stderr: json (one object per line, with the request, job, distillation or "
        "evaluation id in scope) or text (for a person at a terminal)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = Field(
        None, description="Lowest level logged; default INFO for the services, WARNING for one-shot commands (sample, eval)."
    )

    # --- teacher limits (each exceeded limit is a 4xx naming it) ---
    max_prompt_chars: int = 8000
    max_sync_prompts: int = Field(16, description="Prompts per POST /v1/critique-revise.")
    max_job_prompts: int = Field(50_000, description="Prompts per POST /v1/jobs.")
    max_tokens_limit: int = Field(1024, description="Largest max_tokens a request may ask for.")
    max_steps: int = 8
    max_chains: int = 8
    max_queued_jobs: int = Field(100, description="Queued jobs before POST /v1/jobs answers 429.")
    max_concurrent_sync: int = Field(2, description="Synchronous sampling calls in flight before 429.")

    # --- job queue ---
    job_workers: int = Field(1, description="Job worker threads per teacher process (0: serve only; 1 on SQLite).")
    job_batch_size: int = Field(
        32, ge=1, description="Prompts per batch, fixed for a job when it is created; each batch is claimed by one worker, "
        "sampled in one sampler call and committed in one transaction."
    )
    job_lease_seconds: int = Field(60, description="A worker's claim on a batch expires unless renewed (heartbeat).")
    job_max_failures: int = Field(
        3, description="Failed tries of one batch before its job fails (each batch counts its own, so failures spread over a long job do not add up)."
    )
    job_max_attempts: int = Field(
        20, ge=1, description="Claims of one batch (worker deaths, restarts) before its job fails instead of resuming again."
    )
    job_poll_seconds: float = 1.0
    teacher_threads: int | None = Field(
        None, ge=1, description="torch CPU threads of the teacher process (its transformers engine); default: torch's choice (all cores)."
    )

    # --- student service (OpenAI-compatible serving of the distilled model) ---
    student_max_prompt_tokens: int = Field(1536, description="Longest rendered chat prompt, in tokens, before 400.")
    student_max_tokens: int = Field(512, description="Largest max_tokens a chat completion may ask for.")
    student_max_n: int = Field(4, description="Most choices (n) per chat completion.")
    student_max_pending: int = Field(64, description="Completions admitted but unfinished before 429 with Retry-After.")
    student_max_batch: int = Field(16, description="Most sequences one batched generate takes (transformers path).")
    student_batch_window_ms: float = Field(15.0, description="How long the micro-batcher waits to gather a batch.")
    student_poll_seconds: float = Field(3.0, description="How often the student checks the registry for promotions.")
    student_max_loras: int = Field(4, description="Adapters served at once over one base model (vLLM max_loras, >= 2).")
    student_max_lora_rank: int = Field(64, description="Largest LoRA rank the student engine accepts.")
    student_url: str | None = Field(
        None, description="Where the teacher's console reaches the student service (its playground); "
        "default http://127.0.0.1:<student_port>.")

    # --- trainer (distillation runs; same lease queue as jobs) ---
    trainer_lease_seconds: int = Field(60, description="A trainer's claim on a run expires unless renewed (heartbeat).")
    trainer_poll_seconds: float = Field(2.0, description="How often an idle trainer looks for queued runs.")
    trainer_max_attempts: int = Field(3, description="Claims of one run (crashes, kills) before it fails instead of resuming again.")
    trainer_eval_memory_utilization: float = Field(
        0.1, gt=0, le=1,
        description="GPU memory share of each of the two engines (base, student) an evaluation starts in the trainer; "
        "small, because the teacher's and the student's engines may hold theirs on the same GPU. On CPU the KV cache "
        "is sized by vllm_kv_cache_gib instead.",
    )
    trainer_threads: int | None = Field(
        None, description="torch CPU threads of the trainer; default: torch's choice (all cores), and with several "
        "training processes on the CPU an equal share of the cores each.")
    trainer_device: DeviceChoice = Field(
        "auto", description="Where the trainer trains and evaluates with transformers: auto (CUDA when torch sees a CUDA "
        "device, else the CPU), cpu or cuda (an error where there is none). vLLM evaluation engines pick their device themselves.",
    )
    trainer_processes: int = Field(
        1, description="Data-parallel training processes per run (torch DDP, launched by torch.distributed's elastic "
        "launcher): one per GPU on CUDA (NCCL), any number on the CPU (gloo). The run's batch_size is split across them.",
    )
    distill_min_pairs: int = Field(8, description="Fewest accepted pairs a distillation may train on (POST /admin/distillations).")
    distill_max_steps: int = Field(100_000, description="Most optimizer steps one run may ask for.")
    distill_max_queued: int = Field(20, description="Queued runs before POST /admin/distillations answers 429.")

    # --- auth and tenants (README "Security") ---
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Client keys (comma-separated) for /v1/*, each a plain key or its digest 'sha256:<hex>'; "
        "held only as SHA-256 digests once loaded.",
    )
    admin_token: str | None = Field(
        None, description="Token for /admin/* and task creation: plain or 'sha256:<hex>'; held only as its digest."
    )
    rate_limit: str | None = Field(
        None,
        description="Requests each key may make, in the notation of the `limits` library ('120/minute', "
        "'10/second;600/minute'); counted per process; 429 with Retry-After beyond it. Unset: no per-key limit.",
    )

    # --- where the http reward may connect ---
    reward_http_allow_private: bool = Field(
        False, description="Let http rewards reach private, loopback, link-local and other non-public addresses."
    )
    reward_http_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts and CIDRs (comma-separated) an http reward may reach even though they are not public, "
        "e.g. 'scorer.internal,10.2.0.0/16'.",
    )

    @field_validator("dtype")
    @classmethod
    def _resolve_dtype(cls, value: str) -> str:
        return preferred_dtype() if value == "auto" else value

    @field_validator("vllm_tensor_parallel_size", "vllm_pipeline_parallel_size", "trainer_processes")
    @classmethod
    def _at_least_one(cls, value: int, info) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name} must be at least 1 (1: no parallelism), got {value}")
        return value

    @field_validator("api_keys", "reward_http_allow", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _digest_keys(cls, value: list[str]) -> list[str]:
        return [configured_digest(key) for key in value if key.strip()]

    @field_validator("admin_token")
    @classmethod
    def _digest_admin(cls, value: str | None) -> str | None:
        return configured_digest(value) if value and value.strip() else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return (value.strip().upper() or None) if isinstance(value, str) else value  # info, INFO; empty: the default

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate such as '120/minute' or '10/second;600/minute'") from None
        return value.strip()

    @field_validator("reward_http_allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        from shared.rewards.net import parse_allow_entry

        for entry in value:
            parse_allow_entry(entry)  # ValueError names the bad entry
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dsc.db'}"

    @property
    def resolved_model_store(self) -> Path:
        return self.model_store or self.data_dir / "models"

    @property
    def resolved_student_url(self) -> str:
        return (self.student_url or f"http://127.0.0.1:{self.student_port}").rstrip("/")
