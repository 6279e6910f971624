"""The wire format of `ttscale serve`, as vLLM's entrypoints/openai/protocol.py is for its server:
the request bodies (each converts itself into SampleParams; messages and prompts become Problems),
the response objects and OpenAPI extras, and errors in OpenAI's shape."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttscale.errors import describe_validation_error
from ttscale.serve.settings import ServeSettings
from ttscale.types import SAMPLING_EXTRAS, ChatMessage, Problem, SampleParams

# --- errors in OpenAI's shape -------------------------------------------------------------------


class APIError(Exception):
    """An error answered in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape, as every error of this server is answered (the OpenAPI schema's)."""

    error: ErrorInfo


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int]
    verifier_tokens: int


class CompletionObject(BaseModel):
    """A chat.completion or text_completion object, as answered (the OpenAPI schema's)."""

    id: str
    object: Literal["chat.completion", "text_completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[dict[str, Any]]
    usage: Usage
    ttscale: dict[str, Any]


# One Server-Sent Event of a stream (a chunk as JSON in `data`, or "[DONE]"), as an event's fields.
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}
API_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": CompletionObject, "content": {"text/event-stream": {"schema": SSE_EVENT}},
          "description": "the completion; Server-Sent Events with stream: true"},
    **{status: {"model": ErrorBody, "description": what} for status, what in [
        (400, "a bad field, named by param"), (401, "a missing or wrong API key"), (404, "an unknown model"),
        (413, "a body above --max-body-bytes"), (503, "the engine or the upstream server is down")]},
}
TTS_HEADERS = [{"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": what}
               for name, what in [("X-TTS-Strategy", "a strategy, e.g. best-of-n-8"),
                                  ("X-TTS-Budget-Flops", "a per-prompt FLOPs budget for the policy"),
                                  ("X-TTS-Budget-Samples", "a per-prompt samples budget for the policy")]]


def bad_request(message: str, param: str | None = None) -> APIError:
    """A 400 that names the bad field."""
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def from_validation_error(error: ValidationError, prefix: str = "") -> APIError:
    """A pydantic error as a 400 naming the first bad field (unknown fields are refused by name)."""
    first = error.errors()[0]
    param = prefix + ".".join(str(p) for p in first["loc"]) if first["loc"] else (prefix.rstrip(".") or None)
    if first["type"] == "extra_forbidden":
        return bad_request(f"unknown field {param!r}: this server cannot honour it; drop it", param)
    return bad_request(describe_validation_error(error, prefix.rstrip(".") or "request"), param)


def one_line(text: str, limit: int = 500) -> str:
    """An error text on one line, cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- request bodies ------------------------------------------------------------------------------


class TtsOptions(BaseModel):
    """The body's `ttscale` object (extra_body={"ttscale": {...}}): what to run for this request."""

    model_config = ConfigDict(extra="forbid")

    strategy: str | None = Field(None, description="a registered strategy, e.g. best-of-n, beam-search")
    n: int | None = Field(None, ge=1, description="N: the strategy's samples (or particles, or beams x width)")
    selection: str | None = Field(None, description="the selection rule, e.g. majority, first, max-score")
    verifier: str | None = Field(None, description="a registered verifier, e.g. llm-judge-prm")
    options: dict[str, Any] = Field(default_factory=dict, description="further strategy options, e.g. beam_width")
    budget_flops: float | None = Field(None, description="per-prompt FLOPs budget: the policy chooses the setting")
    budget_samples: int | None = Field(None, description="per-prompt samples budget: the policy chooses the setting")
    candidates: bool = Field(False, description="include every candidate (text, answer, tokens, score) in the ttscale block")


class StreamOptions(BaseModel):
    """stream_options: include_usage adds a last chunk with usage."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class CommonBody(BaseModel):
    """What chat and text completion requests share: the model, sampling, streaming and `ttscale`."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    # vLLM's extra sampling parameters (its benchmark client sends ignore_eos): sent to a backend
    # that honours them (SamplingExtras), refused by name otherwise; bounds in SampleParams.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    ttscale: TtsOptions | None = None

    def requested_max_tokens(self) -> int | None:
        """max_tokens, or a chat's max_completion_tokens."""
        return self.max_tokens if self.max_tokens is not None else getattr(self, "max_completion_tokens", None)

    def stop_strings(self) -> tuple[str, ...]:
        """stop as a tuple of strings (none: empty)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling_extras(self) -> dict[str, Any]:
        """The extra sampling parameters the request sets to something other than a neutral value."""
        return {name: value for name, neutral in SAMPLING_EXTRAS.items()
                if (value := getattr(self, name)) is not None and value not in neutral}

    def to_sample_params(self, settings: ServeSettings, honoured: frozenset[str] = frozenset()) -> SampleParams:
        """The request's sampling settings over the server's defaults (max_tokens within the limit);
        an extra sampling parameter the backend does not honour (`honoured`) is a 400 naming it."""
        max_tokens = self.requested_max_tokens()
        if max_tokens is not None and max_tokens > settings.max_tokens_limit:
            raise bad_request(f"max_tokens={max_tokens} is above this server's limit of {settings.max_tokens_limit}; "
                              "lower it (or restart the server with a larger --max-tokens-limit)", "max_tokens")
        extras = self.sampling_extras()
        can = ", ".join(sorted(honoured)) or "none of vLLM's extra sampling parameters"
        for name in extras:
            if name not in honoured:
                raise bad_request(f"{name} cannot be honoured by the {settings.backend} backend (it can: {can}); drop it", name)
        update = {"max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p, **extras}
        update = {k: v for k, v in update.items() if v is not None}
        if self.stop is not None:
            update["stop"] = self.stop_strings()
        try:  # validated, not model_copy'd: the bounds on top_k, min_p, min_tokens <= max_tokens, ...
            return SampleParams.model_validate({**settings.sampling.model_dump(), **update})
        except ValidationError as error:
            raise from_validation_error(error) from None


# What chat_messages accepts, for the OpenAPI schema (its own checks give the 400s by field).
TEXT_SCHEMA = {"type": "string", "pattern": "\\S"}
MESSAGE_SCHEMA = {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "developer", "user", "assistant"]},
                   "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
                       "type": "object", "required": ["type", "text"],
                       "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}},
}


class ChatBody(CommonBody):
    """POST /v1/chat/completions."""

    messages: list[dict[str, Any]] = Field(min_length=1, json_schema_extra={"items": MESSAGE_SCHEMA})
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None


class CompletionBody(CommonBody):
    """POST /v1/completions (the prompt is sent as one user turn: strategies work on chat prompts)."""

    prompt: str | list[str] = Field(json_schema_extra={"anyOf": [TEXT_SCHEMA, {"type": "array", "items": TEXT_SCHEMA, "minItems": 1}]})
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


def refuse_unhonoured(body: CommonBody) -> None:
    """400 for any field set to something this server cannot do, naming it (the extra sampling
    parameters, which depend on the backend, are checked by `to_sample_params`)."""
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by ttscale's sampler; drop it", "logit_bias")
    if body.stop is not None:
        stops = [body.stop] if isinstance(body.stop, str) else body.stop
        if len(stops) > 4 or any(not s for s in stops):
            raise bad_request("stop takes up to 4 non-empty strings", "stop")
    if isinstance(body, ChatBody):
        if body.logprobs or body.top_logprobs is not None:
            raise bad_request("logprobs cannot be honoured: a strategy returns chosen candidates, not token logprobs; drop it", "logprobs")
        for name in ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"):
            if getattr(body, name) is not None:
                raise bad_request(f"{name}: tool calls are not supported by ttscale serve; drop it", name)
        if body.response_format and body.response_format.get("type") not in (None, "text"):
            raise bad_request("response_format: only text is supported", "response_format")
        if body.max_tokens is not None and body.max_completion_tokens is not None and body.max_tokens != body.max_completion_tokens:
            raise bad_request("max_tokens and max_completion_tokens differ; give one", "max_completion_tokens")
    else:
        if body.logprobs is not None:
            raise bad_request("logprobs cannot be honoured: a strategy returns chosen candidates, not token logprobs; drop it", "logprobs")
        if body.echo:
            raise bad_request("echo is not supported; drop it", "echo")
        if body.suffix:
            raise bad_request("suffix is not supported; drop it", "suffix")
        if body.best_of not in (None, 1):
            raise bad_request("best_of: use extra_body={'ttscale': {'strategy': 'best-of-n', 'n': N}} instead", "best_of")


def chat_messages(raw: list[dict[str, Any]]) -> tuple[ChatMessage, ...]:
    """OpenAI messages as ChatMessages: text content only ("developer" is a system turn)."""
    messages = []
    for i, message in enumerate(raw):
        role = message.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"messages[{i}].role {message.get('role')!r} is not supported; use system, user or assistant",
                              f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad_request(f"messages[{i}].content must be a string", f"messages[{i}].content")
        messages.append(ChatMessage(role=role, content=content))
    if not any(m.role == "user" and m.content.strip() for m in messages):
        raise bad_request("messages hold no user turn with text", "messages")
    return tuple(messages)


def chat_problem(messages: tuple[ChatMessage, ...]) -> Problem:
    """A Problem with no gold for a chat: its id is a hash of the messages."""
    digest = hashlib.sha256(json.dumps([m.model_dump() for m in messages]).encode()).hexdigest()[:12]
    question = next(m.content for m in reversed(messages) if m.role == "user")
    return Problem(id=f"chat-{digest}", question=question, prompt=messages)
