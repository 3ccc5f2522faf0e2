"""The engine protocol: batched chat generation with sampling parameters.

Every engine (vLLM, transformers, a remote OpenAI-compatible server) takes a batch of
conversations and returns one `Generation` per conversation, in order. Batching is the caller's
main lever for throughput, so engines must never loop over the batch one request at a time
unless the backend itself is per-request (the HTTP engine sends requests concurrently).

The contract every engine keeps (tests/integration/test_engine_contract.py checks each one):

- `generate` may be called from many threads at once (the teacher's job workers, its synchronous
  endpoint and llm-judge rewards share one engine). Each call gets back exactly its own
  generations, in its own order, whatever else runs meanwhile.
- `close()` ends in bounded time, also with calls in flight: those calls, and any later one,
  raise `EngineClosed` (a 503: the service is stopping) instead of hanging. Calling it twice is fine.
- An engine that can die under its caller (vLLM: its engine core process killed, out of memory, a
  CUDA error) has a `dead` attribute: None while it can generate, else why it cannot. Calls in
  flight when it dies, and any later one, raise `EngineDead` (never hang, never look like a bad
  request). Only a new engine helps; the services mark themselves not ready and exit or rebuild
  it (DSC_ON_ENGINE_DEATH). Engines without the attribute never die on their own.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from shared.errors import NotReady

Message = dict[str, str]
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 128
    # A seed makes a whole batch reproducible; engines derive one seed per request from it.
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length"


@runtime_checkable
class Engine(Protocol):
    name: str
    model: str

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[Generation]: ...

    def close(self) -> None: ...


@runtime_checkable
class ContinuousEngine(Engine, Protocol):
    """An engine whose backend schedules every request on its own (continuous batching: vLLM, a
    remote server). `submit` hands one request over and returns at once; the sampler then lets
    each chain take its next turn as soon as its last one is done, instead of waiting for the
    slowest sequence of a phase (docs/architecture.md §1). `params.seed` is the request's own
    seed, used as given. The future ends with the generation, or with the errors `generate`
    raises (EngineClosed, EngineDead, InvalidRequest, EngineError); cancelling it aborts the
    request in the backend."""

    def submit(self, conversation: Conversation, params: SamplingParams) -> "Future[Generation]": ...


def request_seed(seed: int | None, index: int) -> int | None:
    """Seed of the `index`-th request of a seeded batch (None stays None)."""
    return None if seed is None else (seed * 1_000_003 + index) % (2**31 - 1)


class EngineClosed(NotReady):
    """The engine was closed (the service is shutting down) before or while this call ran."""

    def __init__(self, message: str = "the engine is shutting down; retry shortly", *, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class EngineDead(NotReady):
    """The engine can no longer generate (its engine core process died, ran out of memory, hit a
    CUDA error): a 503 for the caller; the service restarts the engine or exits to be restarted."""

    def __init__(self, reason: str, *, retry_after: int = 30) -> None:
        super().__init__(f"the engine is dead ({reason}); retry once the service has restarted", retry_after=retry_after)
        self.reason = reason


# The exit status of a service that stopped because its engine died (EX_TEMPFAIL: "try again
# later"), so an orchestrator (compose `restart: on-failure`, Kubernetes) starts it afresh.
ENGINE_DEAD_EXIT_CODE = 75


STAYING_UP = "staying up, not ready (embedded: no process to end)"


@dataclass(frozen=True)
class DeathResponse:
    """What a service does once its engine died (DSC_ON_ENGINE_DEATH), for /readyz and the log."""

    restart: bool  # build the engine (the student: its models) afresh in this process
    action: str  # what /readyz says it is doing
    why: str | None = None  # why it does not restart, for the log


def death_response(on_death: str, *, rebuildable: bool, restarts: int, max_restarts: int, can_exit: bool,
                   restart_action: str) -> DeathResponse:
    """The one engine-death policy of the teacher and the student: restart in place while allowed
    (restart mode, an engine this process built, fewer than max_restarts so far), else exit with
    ENGINE_DEAD_EXIT_CODE for the orchestrator, or, embedded in a test with no process to end,
    stay up and not ready."""
    restart = on_death == "restart"
    if restart and rebuildable and restarts < max_restarts:
        return DeathResponse(True, restart_action)
    if restart and not rebuildable:
        why = "its engine was handed in, not built here, so it cannot be rebuilt"
    elif restart:
        why = f"it was restarted {restarts} times already (engine_max_restarts)"
    else:
        why = "DSC_ON_ENGINE_DEATH=exit"
    return DeathResponse(False, "exiting" if can_exit else STAYING_UP, why)


def engine_dead_reason(engine: object) -> str | None:
    """Why `engine` (an Engine, a student runtime) can no longer generate, or None while it can."""
    if engine is None:
        return None
    try:
        return getattr(engine, "dead", None)
    except Exception as exc:  # a health check that itself fails says the engine is unusable
        return f"its health check failed: {type(exc).__name__}: {exc}"


def dead_reason_of(error: BaseException | None) -> str | None:
    """The reason of an EngineDead anywhere in `error`'s chain of causes (a reward or the
    sampler may wrap it), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, EngineDead):
            return error.reason
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def chat_prompt_ids(tokenizer, conversation: Conversation) -> list[int]:
    """Token ids of `conversation` rendered by the model's chat template, ready for the answer.
    The template already writes any special tokens (BOS, role markers), so none are added again."""
    text = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
