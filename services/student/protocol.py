"""Pydantic models of the OpenAI chat-completions API, as the student speaks it.

They mirror https://platform.openai.com/docs/api-reference/chat: field names, shapes and
defaults are OpenAI's, so the official `openai` client works unchanged. Every field that changes
the answer is declared here and is either honoured by the serving runtime or refused with a 400
that names it (serving_chat checks it against the runtime's `supports`); a field not declared here
is logged as ignored, the way vLLM treats unknown fields.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from shared.json_schemas import check_json_schema
from shared.request_fields import Count, Seed, Text, bounded_real


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool's answer to one of them

    def text(self) -> str:
        """The message as plain text (only text parts are supported); an assistant's tool calls
        as the JSON it generated for them, so the model sees what it called."""
        if self.content is None:
            parts = []
        elif isinstance(self.content, str):
            parts = [self.content]
        else:
            parts = []
            for part in self.content:
                if part.type != "text":
                    raise ValueError(f"content part type {part.type!r} is not supported; send text")
                parts.append(part.text or "")
        for call in self.tool_calls or ():
            parts.append(json.dumps({"name": call.function.name, "arguments": json.loads(call.function.arguments or "{}")}))
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class JsonSchema(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_json_schema(value) if value is not None else None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class FunctionDefinition(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _valid_parameters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_json_schema(value) if value is not None else None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionName


LogitBias = bounded_real(ge=-100.0, le=100.0)
Temperature = bounded_real(ge=0.0, le=2.0)
TopP = bounded_real(gt=0.0, le=1.0)
Penalty = bounded_real(ge=-2.0, le=2.0)

# OpenAI fields the student cannot honour on any runtime: refused with a 400 naming them, never
# ignored, because each changes what the client gets back.
UNSUPPORTED_FIELDS = ("functions", "function_call", "audio", "prediction", "web_search_options")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are logged and ignored, as vLLM does

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    n: Count = 1
    # _stop_list checks what the schema says (with messages that name the problem).
    stop: Annotated[Text | list[Text] | None, WithJsonSchema({"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
        {"type": "null"}]})] = None
    seed: Seed | None = None
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, LogitBias] | None = None
    logprobs: bool = Field(False, strict=True)
    top_logprobs: Annotated[int, Field(strict=True, ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    # Harmless OpenAI fields: accepted, with no effect on the answer.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @property
    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]  # vLLM's abort and error are answered as errors


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dsc"
    # dSC extensions: what this model is, so a client can tell the base from a distilled student.
    dsc_kind: Literal["base", "student"]
    task: str | None = None
    student_id: str | None = None
    version: int | None = None
    aliases: list[str] = Field(default_factory=list)
    served_as: Literal["base", "adapter", "merged"] | None = Field(
        None, description="How the model runs: the base model, a LoRA adapter over it, or merged weights in an engine of its own.")
    note: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

