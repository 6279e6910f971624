"""`ttscale serve`: an OpenAI-compatible endpoint that runs a test-time strategy, or the fitted
allocation policy, on every request.

One backend (one engine) serves all requests, so concurrent requests batch in the engine.
Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus text).

What runs is chosen per request; the first source that names a strategy, a budget or the policy
decides, and options from sources above it (or from sources that name the same strategy) apply:
  1. the body's `ttscale` object (the openai client's `extra_body={"ttscale": {...}}`);
  2. the headers X-TTS-Budget-Flops, X-TTS-Budget-Samples, X-TTS-Strategy;
  3. a model-name prefix: `best-of-n-8/MODEL` (strategy, then -N), `beam-search/MODEL`, `policy/MODEL`;
  4. the server's default (`ttscale serve --strategy ... --n ...`).
A budget runs the policy (`--policy`): it probes the prompt where probing pays, predicts its
difficulty bin, and runs the setting it chose (ttscale.allocation.policy, whose rules on gold
answers hold here: a gold-guided setting is never chosen, and no request may name a verifier or
rule that reads gold answers, since a request has none).

What a request cost is read from `Trace.cost`, which the CostMeters filled in (the one road a
problem's cost travels): `usage` counts every prompt, generated and cached token the strategy
spent, the probe's and the verifier's included (`usage.verifier_tokens`, also in total_tokens),
and the response's `ttscale` block gives FLOPs, eFLOPs, verifier calls and tokens, engine calls,
the setting, and the bin and budget where the policy chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttscale import registry
from ttscale.errors import ConfigError, TtscaleError, describe_validation_error
from ttscale.protocols import sampling_extras_of, samples_per_problem, streams_text
from ttscale.types import ORACLE_RULE, SAMPLING_EXTRAS, Candidate, ChatMessage, Problem, SampleParams, Trace

log = logging.getLogger("ttscale.serve")

POLICY_PREFIX = "policy"
# Strategies that send the request's sampling settings as they are (others split steps on
# their own stop strings, so a client's `stop` cannot be honoured by them).
STOP_HONOURED = frozenset({"best-of-n", "revision"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


# --- settings -----------------------------------------------------------------------------------


class ServeSettings(BaseModel):
    """How `ttscale serve` runs: the backend, the default setting, the policy and the limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field("vllm", description="vllm (in-process engine), openai (an upstream OpenAI-compatible server) or fake")
    model: str = Field("smollm2-135m", description="the model the backend serves (the name clients send)")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="backend options, e.g. base_url")
    strategy: str = Field("best-of-n", description="the default strategy, for requests that name none")
    strategy_options: dict[str, Any] = Field(default_factory=lambda: {"n": 1}, description="the default strategy's options")
    verifier: str | None = Field(None, description="the default verifier (for the default strategy)")
    verifier_options: dict[str, Any] = Field(default_factory=dict)
    policy: Path | None = Field(None, description="a fitted allocation policy: a budget then picks the setting per prompt")
    sampling: SampleParams = Field(SampleParams(max_tokens=256), description="sampling defaults for what a request leaves out")
    max_tokens_limit: int = Field(1024, ge=1, description="the largest max_tokens a request may ask for")
    concurrency: int = Field(32, ge=1, description="problems solved at once; more requests wait their turn")
    max_choices: int = Field(64, ge=1, description="the largest client n")
    # Server-wide bounds on what one request may ask for, from any source (body, extra_body.ttscale,
    # headers, model prefix, policy): without them one request can hold the server for minutes.
    max_samples: int = Field(64, ge=1, description="the largest N (samples, particles, beams x width, budget_samples) per prompt")
    max_steps: int = Field(64, ge=1, description="the largest max_steps (or lookahead) of a step-wise search")
    max_prompts: int = Field(32, ge=1, description="the most prompts in one /v1/completions request")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="the largest request body; a larger one gets 413 unread")
    api_key_env: str = Field("TTSCALE_API_KEY", description="environment variable holding the API key")


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


UPSTREAM_DOWN = ("did not answer after",)  # ttscale.backends.openai_http, once its retries are spent
ENGINE_DOWN = ("EngineDeadError", "EngineGenerateError")  # vLLM's, by name: only backends import vllm


def engine_error(error: BaseException) -> APIError:
    """An error raised while generating, as the status a client should see."""
    from ttscale.allocation.policy import AllocationError

    if isinstance(error, APIError):
        return error
    if isinstance(error, AllocationError):
        return bad_request(str(error), "budget")
    names = {type(e).__name__ for e in _chain(error)}
    text = " ".join(str(e) for e in _chain(error))
    if names & set(ENGINE_DOWN) or any(marker in text for marker in UPSTREAM_DOWN):
        return APIError(503, f"the model server is unavailable: {_one_line(str(error))} This server stays up; retry shortly.",
                        code="upstream_unavailable")
    if "rejected the request (HTTP 4" in text or "vLLM rejected a request" in text:
        return bad_request(_one_line(str(error)))
    if isinstance(error, ConfigError):
        return bad_request(str(error))
    if isinstance(error, TtscaleError):
        return APIError(503, _one_line(str(error)), code="upstream_unavailable")
    log.exception("request failed")
    return APIError(500, f"internal error ({type(error).__name__}); see the server's log")


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _one_line(text: str, limit: int = 500) -> str:
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


class _CommonBody(BaseModel):
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


# What chat_messages accepts, for the OpenAPI schema (its own checks give the 400s by field).
TEXT_SCHEMA = {"type": "string", "pattern": "\\S"}
MESSAGE_SCHEMA = {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"enum": ["system", "developer", "user", "assistant"]},
                   "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
                       "type": "object", "required": ["type", "text"],
                       "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}},
}


class ChatBody(_CommonBody):
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


class CompletionBody(_CommonBody):
    """POST /v1/completions (the prompt is sent as one user turn: strategies work on chat prompts)."""

    prompt: str | list[str] = Field(json_schema_extra={"anyOf": [TEXT_SCHEMA, {"type": "array", "items": TEXT_SCHEMA, "minItems": 1}]})
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


def refuse_unhonoured(body: _CommonBody) -> None:
    """400 for any field set to something this server cannot do, naming it (the extra sampling
    parameters, which depend on the backend, are checked by `sample_params`)."""
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


# --- choosing what runs --------------------------------------------------------------------------


@dataclass
class Layer:
    """What one source (body, headers, model name, server default) asks to run."""

    source: Literal["extra_body", "header", "model", "default"]
    strategy: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    verifier: str | None = None
    verifier_set: bool = False
    budget_flops: float | None = None
    budget_samples: int | None = None
    policy: bool = False
    param: dict[str, str] = field(default_factory=dict)  # field -> the name the client used

    @property
    def decides(self) -> bool:
        return self.strategy is not None or self.policy or self.budget_flops is not None or self.budget_samples is not None


@dataclass
class Resolved:
    """What runs for a request: a strategy with options and verifier, or the policy under a budget."""

    source: str
    strategy: str | None
    options: dict[str, Any]
    verifier: str | None
    budget_flops: float | None = None
    budget_samples: int | None = None
    n_from_default: bool = False
    param: dict[str, str] = field(default_factory=dict)

    @property
    def policy(self) -> bool:
        return self.strategy is None


def body_layer(options: TtsOptions | None) -> Layer:
    """The `ttscale` object of the body as a Layer."""
    layer = Layer("extra_body")
    if options is None:
        return layer
    layer.strategy = options.strategy
    layer.options = dict(options.options)
    for name in ("n", "selection"):
        if getattr(options, name) is not None:
            layer.options[name] = getattr(options, name)
    layer.verifier, layer.verifier_set = options.verifier, "verifier" in options.model_fields_set
    layer.budget_flops, layer.budget_samples = options.budget_flops, options.budget_samples
    layer.param = {"strategy": "ttscale.strategy", "options": "ttscale.options", "verifier": "ttscale.verifier",
                   "budget_flops": "ttscale.budget_flops", "budget_samples": "ttscale.budget_samples",
                   **{key: f"ttscale.options.{key}" for key in options.options}}
    for name in ("n", "selection"):  # given beside `options`, these win: name them where they were given
        if getattr(options, name) is not None:
            layer.param[name] = f"ttscale.{name}"
    return layer


def header_layer(headers: Any) -> Layer:
    """X-TTS-Strategy, X-TTS-Budget-Flops, X-TTS-Budget-Samples as a Layer."""
    layer = Layer("header", param={"strategy": "X-TTS-Strategy", "budget_flops": "X-TTS-Budget-Flops",
                                   "budget_samples": "X-TTS-Budget-Samples", "options": "X-TTS-Strategy"})
    strategy = headers.get("x-tts-strategy")
    if strategy is not None:
        layer.strategy, layer.options = split_strategy(strategy.strip())
        if layer.options:
            layer.param["n"] = "X-TTS-Strategy"
    flops = headers.get("x-tts-budget-flops")
    if flops is not None:
        try:
            layer.budget_flops = float(flops)
        except ValueError:
            raise bad_request(f"X-TTS-Budget-Flops {flops!r} is not a number; send FLOPs per prompt, e.g. 1e11", "X-TTS-Budget-Flops") from None
    samples = headers.get("x-tts-budget-samples")
    if samples is not None:
        try:
            layer.budget_samples = int(samples)
        except ValueError:
            raise bad_request(f"X-TTS-Budget-Samples {samples!r} is not a whole number of samples", "X-TTS-Budget-Samples") from None
    return layer


def split_strategy(name: str) -> tuple[str, dict[str, Any]]:
    """"best-of-n-8" as ("best-of-n", {"n": 8}); a registered name, or anything else, as it is."""
    match = re.fullmatch(r"(.+)-(\d+)", name)
    if name not in registry.strategies and match and match.group(1) in registry.strategies:
        return match.group(1), {"n": int(match.group(2))}
    return name, {}


def model_layer(model: str, served: str) -> Layer:
    """The model name's prefix (`best-of-n-8/`, `beam-search/`, `policy/`) as a Layer; 404 for another model."""
    layer = Layer("model", param={"strategy": "model", "n": "model", "options": "model", "budget_flops": "model", "budget_samples": "model"})
    if model == served:
        return layer
    prefix, slash, rest = model.partition("/")
    if not slash or rest != served:
        raise APIError(404, f"the model {model!r} does not exist here; this server serves {served!r}, "
                            f"optionally prefixed with a strategy (best-of-n-8/{served}) or {POLICY_PREFIX}/{served}",
                       param="model", code="model_not_found")
    if prefix == POLICY_PREFIX:
        layer.policy = True
        return layer
    strategy, options = split_strategy(prefix)
    if strategy in registry.strategies:
        layer.strategy, layer.options = strategy, options
        return layer
    raise APIError(404, f"the model {model!r} does not exist here: {prefix!r} is no strategy "
                        f"({', '.join(registry.strategies.names())}) and not {POLICY_PREFIX!r}",
                   param="model", code="model_not_found")


def default_layer(settings: ServeSettings) -> Layer:
    """The server's default setting as a Layer."""
    return Layer("default", strategy=settings.strategy, options=dict(settings.strategy_options),
                 verifier=settings.verifier, verifier_set=True)


def resolve(layers: Sequence[Layer]) -> Resolved:
    """The first layer that names a strategy, a budget or the policy decides what runs.

    Options come from the layers above it, and from layers below that name the same strategy;
    a higher layer overrides a lower one. Under a budget the policy chooses everything, so a
    strategy option given with it is refused.
    """
    index, decider = next((i, layer) for i, layer in enumerate(layers) if layer.decides)
    if decider.strategy is not None and (decider.budget_flops is not None or decider.budget_samples is not None):
        param = decider.param.get("budget_flops" if decider.budget_flops is not None else "budget_samples")
        raise bad_request(f"{param} and {decider.param.get('strategy')} are both given: a budget lets the policy choose "
                          "the strategy; drop one", param)
    if decider.strategy is None:  # the policy, under a budget
        budget = next((layer for layer in layers if layer.budget_flops is not None or layer.budget_samples is not None), None)
        if budget is None:
            raise bad_request(f"{decider.param.get('strategy', 'model')}: the policy needs a per-prompt budget; send "
                              "X-TTS-Budget-Flops or X-TTS-Budget-Samples (or ttscale.budget_flops)", "budget_flops")
        for layer in layers[: index + 1]:
            given = [name for name in ("n", "selection") if name in layer.options] + (["options"] if set(layer.options) - {"n", "selection"} else [])
            given += ["verifier"] if layer.verifier_set and layer.source != "default" else []
            if given:
                param = layer.param.get(given[0], given[0])
                raise bad_request(f"{param}: under a budget the policy chooses the setting; drop {param} or the budget", param)
        return Resolved(budget.source, None, {}, None, budget.budget_flops, budget.budget_samples,
                        param={"budget_flops": budget.param.get("budget_flops", "budget_flops"),
                               "budget_samples": budget.param.get("budget_samples", "budget_samples")})
    strategy = decider.strategy
    applying = [layer for i, layer in enumerate(layers) if i <= index or layer.strategy == strategy]
    options: dict[str, Any] = {}
    param: dict[str, str] = {"strategy": decider.param.get("strategy", "strategy")}
    n_from_default = False
    verifier, verifier_found = None, False
    for layer in applying:  # the highest layer first: it wins
        for key, value in layer.options.items():
            if key not in options:
                options[key] = value
                param[key] = layer.param.get(key, layer.param.get("options", f"ttscale.options.{key}"))
                n_from_default = n_from_default or (key == "n" and layer.source == "default")
        if layer.verifier_set and not verifier_found:
            verifier, verifier_found = layer.verifier, True
            param["verifier"] = layer.param.get("verifier", "verifier")
    return Resolved(decider.source, strategy, options, verifier, n_from_default=n_from_default, param=param)


# --- metrics ------------------------------------------------------------------------------------


class Metrics:
    """Counters and a latency histogram, written as Prometheus text (no global registry:
    vLLM keeps its own in the same process)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.totals = dict.fromkeys(("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "verifier_tokens",
                                     "flops", "eflops", "engine_calls", "uncounted_calls"), 0.0)
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.in_flight = 0

    def observe(self, route: str, status: int | str, seconds: float) -> None:
        """One finished request: its HTTP status, or "cancelled" where the client disconnected first."""
        key = (route, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def add_cost(self, cost: Any) -> None:
        """What a solved problem spent."""
        self.totals["prompt_tokens"] += cost.prompt_tokens
        self.totals["cached_prompt_tokens"] += cost.cached_prompt_tokens
        self.totals["completion_tokens"] += cost.generated_tokens
        self.totals["verifier_tokens"] += cost.verifier_tokens
        self.totals["flops"] += cost.flops
        self.totals["eflops"] += cost.eflops
        self.totals["engine_calls"] += cost.calls + cost.verifier_calls
        self.totals["uncounted_calls"] += cost.uncounted_calls

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines = ["# HELP ttscale_requests_total Requests answered, by route and HTTP status (\"cancelled\": the client left first).",
                 "# TYPE ttscale_requests_total counter"]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'ttscale_requests_total{{route="{route}",status="{status}"}} {count}')
        help_text = {
            "prompt_tokens": "Prompt tokens sent to the engine (probe included).",
            "cached_prompt_tokens": "Prompt tokens the engine's prefix cache served.",
            "completion_tokens": "Tokens generated, every candidate included.",
            "verifier_tokens": "Tokens a verifier model read or wrote.",
            "flops": "FLOPs spent (generation, verifier, draft), from the CostMeter.",
            "eflops": "eFLOPs (Kinetics) spent, from the CostMeter.",
            "engine_calls": "Calls to the engine (generator and verifier).",
            "uncounted_calls": "Engine calls whose tokens nobody could count.",
        }
        for name, value in self.totals.items():
            lines += [f"# HELP ttscale_{name}_total {help_text[name]}", f"# TYPE ttscale_{name}_total counter",
                      f"ttscale_{name}_total {value:.17g}"]
        lines += ["# HELP ttscale_requests_in_flight Requests being served now.", "# TYPE ttscale_requests_in_flight gauge",
                  f"ttscale_requests_in_flight {self.in_flight}",
                  "# HELP ttscale_request_latency_seconds Time from request to full response.",
                  "# TYPE ttscale_request_latency_seconds histogram"]
        for bound, count in zip(LATENCY_BUCKETS, self.buckets):
            lines.append(f'ttscale_request_latency_seconds_bucket{{le="{bound}"}} {count}')
        lines += [f'ttscale_request_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                  f"ttscale_request_latency_seconds_sum {self.latency_sum:.6f}",
                  f"ttscale_request_latency_seconds_count {self.latency_count}"]
        return "\n".join(lines) + "\n"


# --- the server's state ---------------------------------------------------------------------------


def _create(reg: registry.Registry, name: str, options: dict[str, Any], param: str) -> Any:
    """A plugin from a registry; an unknown name or bad option is a 400 naming `param`."""
    try:
        factory = reg.factory(name)
    except ConfigError as error:
        raise bad_request(str(error), param) from None
    try:
        return factory(**options)
    except ValidationError as error:
        raise bad_request(describe_validation_error(error, f"{reg.kind} {name!r}"), param) from None
    except (TypeError, ValueError) as error:
        raise bad_request(f"{reg.kind} {name!r}: {error}", param) from None


class ServerState:
    """The one backend, the answer tools, the policy, verifiers with their own engines, metrics."""

    def __init__(self, settings: ServeSettings, backend: Any, policy: Any = None, probe_backend: Any = None):
        from ttscale.grading.math_answer import DEFAULT_VERIFIER

        self.settings = settings
        self.backend = backend
        self.policy = policy
        self.probe_backend = probe_backend  # a policy's prefill probe reads hidden states from this pooling engine
        self.answers = DEFAULT_VERIFIER  # math answers: \boxed{}, a stated or a last number
        self.policy_answers = None
        self.metrics = Metrics()
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.stopping = asyncio.Event()  # set when shutdown begins: bodies still coming in are not waited for
        self._engine_verifiers: dict[str, Any] = {}  # verifiers with their own engine, built once
        self._strategies: dict[str, tuple[Any, bool, int]] = {}
        self.started = time.time()
        if policy is not None:
            from ttscale.config import RunConfig
            from ttscale.build import build_benchmark

            policy.check_model(backend.model.name)
            self.policy_answers = build_benchmark(RunConfig(benchmark=policy.benchmark, benchmark_options=policy.benchmark_options))

    @classmethod
    async def start(cls, settings: ServeSettings, backend: Any = None, probe_backend: Any = None) -> "ServerState":
        """Build the backend (unless given), size and start its engine, load and check the policy;
        a policy with a prefill probe also gets its pooling engine (unless given)."""
        from ttscale.protocols import size_for_workload

        policy = None
        if settings.policy is not None:
            from ttscale.allocation.policy import AllocationPolicy

            policy = AllocationPolicy.load(settings.policy)
            if policy.probe.is_prefill and probe_backend is None:
                probe_backend = prefill_probe_backend(settings)
        if backend is None:
            options = {"model": settings.model, **settings.backend_options}
            try:
                backend = registry.backends.factory(settings.backend)(**options)
            except ValidationError as error:
                raise ConfigError(describe_validation_error(error, f"backend {settings.backend!r}")) from None
            except TypeError as error:
                raise ConfigError(f"backend {settings.backend!r}: {error}; check --backend-option") from None
        state = cls(settings, backend, policy, probe_backend)
        state.warm_up()
        # The engine's KV cache holds what is in flight at once: `concurrency` problems of up to max_tokens_limit.
        size_for_workload(backend, sequences=settings.concurrency, max_tokens=settings.max_tokens_limit)
        start = getattr(backend, "start", None)  # the vLLM engine starts here, not on the first request
        if start is not None:
            await start()
        probe_start = getattr(probe_backend, "start", None)  # the pooling engine, likewise
        if probe_start is not None:
            await probe_start()
        return state

    def warm_up(self) -> None:
        """Import and exercise what the first request needs (the default strategy, answer extraction
        and math-verify's parser), so that it does not wait seconds behind lazy imports."""
        import importlib

        importlib.import_module("ttscale.solve")
        registry.strategies.factory(self.settings.strategy)
        for answers in filter(None, (self.answers, self.policy_answers)):
            answers.equivalent(answers.extract_answer("The answer is \\boxed{2}.") or "2", "2")

    async def close(self) -> None:
        """Close verifiers with their own engines, then the backend."""
        for verifier in self._engine_verifiers.values():
            await verifier.close()
        if self.probe_backend is not None:
            await self.probe_backend.close()
        await self.backend.close()

    @property
    def model_name(self) -> str:
        """The model's name as clients send it."""
        return self.backend.model.name

    def strategy(self, name: str, options: dict[str, Any], param: dict[str, str]) -> tuple[Any, bool, int]:
        """A validated strategy, whether it needs a verifier, and its N; cached per name and options
        (strategies hold no state beyond one problem, and the protocol checks are not cheap)."""
        from ttscale.protocols import needs_verifier, samples_per_problem

        key = name + json.dumps(options, sort_keys=True, default=str)
        found = self._strategies.get(key)
        if found is not None:
            return found
        where = param.get("strategy", "strategy")
        try:
            factory = registry.strategies.factory(name)
        except ConfigError as error:
            raise bad_request(str(error), where) from None
        except ImportError as error:  # registered, but its module is missing from this install
            raise bad_request(f"strategy {name!r} cannot be loaded here ({error}); use another strategy", where) from None
        try:
            strategy = factory(**options)
        except ValidationError as error:
            first = error.errors()[0]
            option = str(first["loc"][0]) if first["loc"] else ""
            raise bad_request(describe_validation_error(error, f"strategy {name!r}"), param.get(option, where)) from None
        except (TypeError, ValueError) as error:
            raise bad_request(f"strategy {name!r}: {error}", where) from None
        found = (strategy, needs_verifier(strategy), samples_per_problem(strategy))
        if len(self._strategies) < 1024:  # bounded: options come from clients
            self._strategies[key] = found
        return found

    def verifier(self, name: str | None, param: str, answers: Any = None) -> Any:
        """A verifier by name (None: none); refuses one that reads gold answers (a request has none)."""
        if name is None:
            return None
        if name in self._engine_verifiers:
            return self._engine_verifiers[name]
        options = dict(self.settings.verifier_options) if name == self.settings.verifier else {}
        verifier = _create(registry.verifiers, name, {"benchmark": answers or self.answers, **options}, param)
        if verifier.uses_gold:
            raise bad_request(f"verifier {name!r} reads gold answers, and a request has none; use a verifier that does not", param)
        if verifier.backend is not None:  # its own engine: keep it for the server's lifetime
            self._engine_verifiers[name] = verifier
        return verifier


def prefill_probe_backend(settings: ServeSettings) -> Any:
    """The pooling engine a policy's prefill probe reads the prompt's hidden states from: the
    policy model's own, beside the generation engine (vLLM runs one runner per engine)."""
    if settings.backend != "vllm":
        raise ConfigError(f"the policy {settings.policy} probes with the model's hidden states (--probe prefill), which "
                          f"only an in-process engine gives; serve it with --backend vllm, or refit it with --probe agreement")
    from ttscale.backends.vllm_pooling import VLLMPoolingBackend

    return VLLMPoolingBackend(settings.model, mode="hidden")


# --- running one problem ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """A solved problem: the trace (with its cost), the setting that ran, and the policy's plan if any."""

    trace: Trace
    setting: dict[str, Any]
    plan: Any = None
    seed: int = 0


# Strategy options that multiply what one prompt costs, and the ServeSettings field bounding each.
LIMITED = {"n": "max_samples", "beam_width": "max_samples", "warmup": "max_samples", "batch": "max_samples",
           "history": "max_samples", "max_steps": "max_steps", "lookahead": "max_steps"}
FLAGS = {"max_samples": "--max-samples", "max_steps": "--max-steps"}


def check_limits(settings: ServeSettings, values: dict[str, Any], param: dict[str, str], chosen_by: str | None = None) -> None:
    """400 for a compute-bearing option above the server's limit, naming where it came from
    (ttscale.n, X-TTS-Strategy, model, ttscale.options.KEY, or the budget the policy chose it for)."""
    for key, value in values.items():
        if key not in LIMITED or not isinstance(value, int) or isinstance(value, bool):
            continue
        limit = getattr(settings, LIMITED[key])
        if value > limit:
            where = chosen_by or param.get(key, param.get("options", f"ttscale.options.{key}"))
            what = f"the policy chose {key}={value} for this budget" if chosen_by else f"{key}={value}"
            raise bad_request(f"{where}: {what} is above this server's limit of {limit} ({LIMITED[key]}; the server's "
                              f"{FLAGS[LIMITED[key]]} raises it); lower it", where)


def prepare(state: ServerState, resolved: Resolved, params: SampleParams, choices: int) -> tuple[Any, dict[str, Any], Any]:
    """Validate a strategy request before anything runs: (strategy object, options, verifier)."""
    name = resolved.strategy
    options = dict(resolved.options)
    if resolved.n_from_default and "n" in options and choices > options["n"]:
        options["n"] = choices  # a plain request for n choices draws at least n samples
    strategy, wants_verifier, samples = state.strategy(name, options, resolved.param)
    check_limits(state.settings, {**{key: getattr(strategy, key, None) for key in LIMITED}, "n": samples}, resolved.param)
    if options.get("selection") == ORACLE_RULE or getattr(strategy, "selection", None) == ORACLE_RULE:
        raise bad_request("selection 'oracle' needs gold answers, and a request has none; use majority, first, "
                          "max-score, weighted-vote or borda-vote", resolved.param.get("selection", "ttscale.selection"))
    if params.stop and name not in STOP_HONOURED:
        raise bad_request(f"stop cannot be honoured by {name!r}: it ends steps with its own stop strings; drop stop", "stop")
    verifier = state.verifier(resolved.verifier, resolved.param.get("verifier", "ttscale.verifier"))
    if verifier is None and wants_verifier:
        raise bad_request(f"strategy {name!r} with options {options} needs a verifier; pass ttscale.verifier "
                          "(e.g. llm-judge-prm)", "ttscale.verifier")
    if choices > samples:
        raise bad_request(f"n={choices} choices, but {name!r} returns at most {samples} candidates; raise ttscale.n or lower n", "n")
    return strategy, options, verifier


async def run_strategy(state: ServerState, problem: Problem, resolved: Resolved, options: dict[str, Any], verifier: Any,
                       params: SampleParams, seed: int, sink: "AnswerText | None" = None) -> Outcome:
    """Solve with the named strategy through ttscale.solve (the CostMeters fill Trace.cost);
    a single-sample answer's text goes to `sink` as it is generated (see text_backend)."""
    from ttscale.solve import solve

    backend = text_backend(state, state.strategy(resolved.strategy, options, resolved.param)[0], sink)
    async with state.slots:
        trace = await solve(problem, backend=backend, strategy=resolved.strategy, options=options, verifier=verifier,
                            answers=state.answers, params=params, seed=seed)
    setting = {"strategy": resolved.strategy, "options": options, "verifier": resolved.verifier, "selection": trace.chosen_rule}
    return Outcome(trace, setting, None, seed)


def check_policy_sampling(state: ServerState, body: _CommonBody) -> None:
    """Under the policy, the sampling is the one it was fitted with: a different value is refused."""
    fitted = state.policy.sampling
    asked = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": _max_tokens(body), "stop": _stops(body)}
    for name in body_extras(body):  # the policy's settings were fitted without them
        raise bad_request(f"{name}: the policy runs with the sampling it was fitted with; drop it, or name a strategy "
                          "instead of a budget", name)
    for name, value in asked.items():
        if value is None or (name == "stop" and not value):
            continue
        have = tuple(fitted.stop) if name == "stop" else getattr(fitted, name)
        if (tuple(value) if name == "stop" else value) != have:
            raise bad_request(f"{name}={value!r}: the policy runs with the sampling it was fitted with ({name}={have!r}); "
                              "drop it, or name a strategy instead of a budget", name)


async def run_policy(state: ServerState, prompt: str | Problem, resolved: Resolved, seed: int,
                     sink: "AnswerText | None" = None) -> Outcome:
    """Allocate the budget for this prompt (the probe runs where it pays), then run the plan; where
    it chose a single sample, its text goes to `sink` as it is generated (see text_backend)."""
    policy = state.policy
    answers = state.policy_answers
    probe_verifier = state.verifier(policy.probe.verifier, "budget", answers) if policy.probe.statistic == "verifier" else None
    async with state.slots:
        plan = await policy.allocate_async(prompt, state.backend, budget_flops=resolved.budget_flops,
                                           budget_samples=resolved.budget_samples, verifier=probe_verifier,
                                           probe_backend=state.probe_backend)
        budget = resolved.param["budget_flops" if resolved.budget_flops is not None else "budget_samples"]
        check_limits(state.settings, {**plan.setting.options, "n": plan.setting.samples}, {}, chosen_by=budget)
        verifier = state.verifier(plan.setting.verifier, "budget", answers) if plan.setting.verifier else None
        chosen = state.strategy(plan.setting.strategy, dict(plan.setting.options), {})[0]
        trace = await plan.run(text_backend(state, chosen, sink), verifier, seed=seed)
    setting = {"strategy": plan.setting.strategy, "options": dict(plan.setting.options), "verifier": plan.setting.verifier,
               "selection": trace.chosen_rule}
    return Outcome(trace, setting, plan, seed)


def ranked_candidates(trace: Trace, equivalent: Any) -> list[Candidate]:
    """The chosen candidate first, then the others: by verifier score where scored, else by how
    many candidates share their answer; ties keep draw order."""
    from ttscale.selection import answer_classes

    candidates = list(trace.candidates)
    if not candidates:
        return []
    chosen_answer = trace.answer
    classes = answer_classes([c.answer for c in candidates], equivalent)
    votes = {cls: int((classes == cls).sum()) for cls in set(classes.tolist()) if cls >= 0}
    chosen = next((i for i, c in enumerate(candidates) if chosen_answer is not None and c.answer is not None
                   and (c.answer == chosen_answer or equivalent(c.answer, chosen_answer))), 0)

    def key(i: int) -> tuple:
        c = candidates[i]
        return (i != chosen, -(c.score if c.score is not None else -math.inf), -votes.get(int(classes[i]), 0), i)

    return [candidates[i] for i in sorted(range(len(candidates)), key=key)]


def usage_of(costs: Sequence[Any]) -> dict[str, Any]:
    """OpenAI's usage from Trace.cost: every token spent, the verifier's in verifier_tokens and total_tokens."""
    prompt = sum(c.prompt_tokens for c in costs)
    completion = sum(c.generated_tokens for c in costs)
    verifier = sum(c.verifier_tokens for c in costs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion + verifier,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_prompt_tokens for c in costs)},
        "verifier_tokens": verifier,
    }


def ttscale_block(outcomes: Sequence[Outcome], resolved: Resolved, want_candidates: bool, equivalent: Any) -> dict[str, Any]:
    """The response's `ttscale` block: setting, FLOPs, verifier spend, engine calls, policy bin and budget."""
    from ttscale.cost import sum_costs

    cost = sum_costs([o.trace.cost for o in outcomes])
    first = outcomes[0]
    block: dict[str, Any] = {
        "source": resolved.source,
        "strategy": first.setting["strategy"],
        "options": first.setting["options"],
        "selection": first.setting["selection"],
        "verifier": first.setting["verifier"],
        "seed": first.seed,
        "flops": cost.flops,
        "eflops": cost.eflops,
        "structural_flops": cost.structural_flops,
        "verifier_calls": cost.verifier_calls,
        "verifier_tokens": cost.verifier_tokens,
        "verifier_flops": cost.verifier_flops,
        "engine_calls": cost.calls + cost.verifier_calls,
        "cost_known": cost.uncounted_calls == 0,
        "wall_s": cost.wall_s,
        "cost": cost.model_dump(),
    }
    if first.plan is not None:
        plans = []
        for outcome in outcomes:
            plan = outcome.plan
            plans.append({"bin": plan.bin, "bin_source": plan.bin_source, "setting": plan.describe(),
                          "expected_accuracy": plan.entry.accuracy, "budget": outcome.trace.metadata.get("budget")})
        block["policy"] = {"budget_flops": resolved.budget_flops, "budget_samples": resolved.budget_samples, **plans[0]}
        if len(plans) > 1:
            block["policy"]["prompts"] = plans
    if len(outcomes) > 1:
        block["prompts"] = [{**o.setting, "cost": o.trace.cost.model_dump()} for o in outcomes]
    if want_candidates:
        block["candidates"] = [[c.model_dump() for c in o.trace.candidates] for o in outcomes] if len(outcomes) > 1 \
            else [c.model_dump() for c in first.trace.candidates]
        block["selections"] = first.trace.selections
    return block


def _max_tokens(body: _CommonBody) -> int | None:
    return body.max_tokens if body.max_tokens is not None else getattr(body, "max_completion_tokens", None)


def _stops(body: _CommonBody) -> tuple[str, ...]:
    if body.stop is None:
        return ()
    return (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)


def body_extras(body: _CommonBody) -> dict[str, Any]:
    """The extra sampling parameters a request sets to something other than a neutral value."""
    return {name: value for name, neutral in SAMPLING_EXTRAS.items()
            if (value := getattr(body, name)) is not None and value not in neutral}


def sample_params(settings: ServeSettings, body: _CommonBody, honoured: frozenset[str] = frozenset()) -> SampleParams:
    """The request's sampling settings over the server's defaults (max_tokens within the limit);
    an extra sampling parameter the backend does not honour (`honoured`) is a 400 naming it."""
    max_tokens = _max_tokens(body)
    if max_tokens is not None and max_tokens > settings.max_tokens_limit:
        raise bad_request(f"max_tokens={max_tokens} is above this server's limit of {settings.max_tokens_limit}; "
                          "lower it (or restart the server with a larger --max-tokens-limit)", "max_tokens")
    extras = body_extras(body)
    can = ", ".join(sorted(honoured)) or "none of vLLM's extra sampling parameters"
    for name in extras:
        if name not in honoured:
            raise bad_request(f"{name} cannot be honoured by the {settings.backend} backend (it can: {can}); drop it", name)
    update = {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p, **extras}
    update = {k: v for k, v in update.items() if v is not None}
    if body.stop is not None:
        update["stop"] = _stops(body)
    try:  # validated, not model_copy'd: the bounds on top_k, min_p, min_tokens <= max_tokens, ...
        return SampleParams.model_validate({**settings.sampling.model_dump(), **update})
    except ValidationError as error:
        raise from_validation_error(error) from None


# --- the app ----------------------------------------------------------------------------------------


def create_app(state: ServerState):
    """The FastAPI app over a started ServerState."""
    app = FastAPI(title="ttscale serve", description="OpenAI-compatible test-time compute endpoint", docs_url=None, redoc_url=None)
    app.state.ttscale = state
    api_key = os.environ.get(state.settings.api_key_env) or None

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, error: ClientGone):
        return Response(status_code=499)  # nobody reads it: the connection is closed (nginx's "client closed request")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError):
        return JSONResponse(bad_request(_one_line(str(error))).body(), status_code=400)

    @app.exception_handler(404)
    async def _not_found(request: Request, error: Exception):
        return JSONResponse(APIError(404, f"no route {request.method} {request.url.path}", code="not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(request: Request, error: Exception):
        return JSONResponse(APIError(405, f"{request.method} is not allowed on {request.url.path}").body(), status_code=405,
                            headers=getattr(error, "headers", None))  # Starlette's Allow header

    app.add_middleware(_Gate, state=state, api_key=api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_name, "policy": str(state.settings.policy) if state.policy else None}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        created = int(state.started)
        names = [state.model_name] + [f"{s}/{state.model_name}" for s in registry.strategies.names()]
        if state.policy is not None:
            names.append(f"{POLICY_PREFIX}/{state.model_name}")
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "ttscale"} for name in names]}

    @app.post("/v1/chat/completions", responses=API_RESPONSES, openapi_extra={"parameters": TTS_HEADERS})
    async def chat_completions(request: Request):
        body = await _parse(request, ChatBody)
        messages = chat_messages(body.messages)
        problem = chat_problem(messages)
        # Under the policy a lone user turn is wrapped in the fitting runs' template, as the library does.
        policy_prompt: str | Problem = messages[0].content if len(messages) == 1 else problem
        return await _serve(request, body, [(problem, policy_prompt)], "chat")

    @app.post("/v1/completions", responses=API_RESPONSES, openapi_extra={"parameters": TTS_HEADERS})
    async def completions(request: Request):
        body = await _parse(request, CompletionBody)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise bad_request("prompt must be a non-empty string or a list of them", "prompt")
        if len(prompts) > state.settings.max_prompts:
            raise bad_request(f"prompt holds {len(prompts)} prompts, above this server's limit of {state.settings.max_prompts} "
                              "per request (max_prompts; the server's --max-prompts raises it); send fewer", "prompt")
        problems = []
        for text in prompts:
            problem = chat_problem((ChatMessage(role="user", content=text),))
            problems.append((problem, text))
        return await _serve(request, body, problems, "text")

    async def _serve(request: Request, body: _CommonBody, problems: list[tuple[Problem, str | Problem]], kind: str):
        refuse_unhonoured(body)
        choices = body.n or 1
        if choices > state.settings.max_choices:
            raise bad_request(f"n={choices} is above this server's limit of {state.settings.max_choices}", "n")
        layers = [body_layer(body.ttscale), header_layer(request.headers), model_layer(body.model, state.model_name),
                  default_layer(state.settings)]
        resolved = resolve(layers)
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        # Where one answer streams, its text goes out as generated (time to first token).
        sink = AnswerText() if body.stream and choices == 1 and len(problems) == 1 else None
        if resolved.policy:
            if state.policy is None:
                param = resolved.param.get("budget_flops" if resolved.budget_flops is not None else "budget_samples", "model")
                raise bad_request(f"{param}: this server runs no allocation policy; start it with --policy FILE, "
                                  "or name a strategy instead of a budget", param)
            from ttscale.allocation.policy import AllocationError, check_budget

            if resolved.budget_samples is not None and resolved.budget_samples > state.settings.max_samples:
                param = resolved.param["budget_samples"]
                raise bad_request(f"{param}={resolved.budget_samples} is above this server's limit of {state.settings.max_samples} "
                                  "samples per prompt (max_samples; the server's --max-samples raises it); lower it", param)
            try:
                check_budget(resolved.budget_flops, resolved.param["budget_flops"])
                check_budget(resolved.budget_samples, resolved.param["budget_samples"])
                if resolved.budget_flops is not None and resolved.budget_samples is not None:
                    raise AllocationError("give one budget: FLOPs or samples, not both")
                state.policy.choose_unprobed(budget_flops=resolved.budget_flops, budget_samples=resolved.budget_samples)
            except AllocationError as error:
                which = resolved.param["budget_flops" if resolved.budget_flops is not None else "budget_samples"]
                raise bad_request(str(error), which) from None
            check_policy_sampling(state, body)
            if choices > 1:
                raise bad_request("n > 1 is not available under a budget: the policy chooses one setting per prompt; "
                                  "send n=1", "n")
            jobs = [run_policy(state, prompt, resolved, seed, sink) for _, prompt in problems]
            equivalent = state.policy_answers.equivalent
        else:
            params = sample_params(state.settings, body, sampling_extras_of(state.backend))
            _, options, verifier = prepare(state, resolved, params, choices)
            jobs = [run_strategy(state, problem, resolved, options, verifier, params, seed, sink) for problem, _ in problems]
            equivalent = state.answers.equivalent
        if body.stream:
            return await stream_response(request, state, body, jobs, sink, resolved, choices, kind, equivalent)
        try:
            outcomes = list(await _unless_disconnected(request, asyncio.gather(*jobs)))
        except ClientGone:
            raise
        except Exception as error:  # noqa: BLE001  (each kind becomes the status a client should see)
            raise engine_error(error) from None
        for outcome in outcomes:
            state.metrics.add_cost(outcome.trace.cost)
        return JSONResponse(_response(body, outcomes, resolved, choices, kind, equivalent))

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the request bodies, which the routes read themselves (under the
        body limit, off the event loop) rather than as parameters FastAPI would see."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, model in (("/v1/chat/completions", ChatBody), ("/v1/completions", CompletionBody)):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
                schema["paths"][path]["post"]["requestBody"] = {
                    "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"})  # counted in /metrics


class _Gate:
    """Plain ASGI middleware (cheaper than BaseHTTPMiddleware): the API key on /v1/ routes, and
    each request's status and latency into the metrics."""

    def __init__(self, app: Any, state: "ServerState", api_key: str | None):
        self.app, self.state, self.api_key = app, state, api_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        metrics = self.state.metrics
        started = time.perf_counter()
        status: list[int | str] = [500]
        finished, gone = [False], [False]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            finished[0] = finished[0] or last
            await send(message)
            if message["type"] == "http.response.body" and not last:
                # Let a lost connection's callback run before the next chunk: uvicorn then drops
                # the rest quietly, where back-to-back writes logged "socket.send() raised exception." each.
                await asyncio.sleep(0)

        async def receive_watched() -> dict:
            message = await receive()
            if message["type"] == "http.disconnect" and not finished[0]:
                gone[0] = True  # the client left before its answer was complete
            return message

        counted = path != "/metrics"  # a scrape does not count itself in flight
        metrics.in_flight += counted
        try:
            if path.startswith("/v1/") and self.api_key is not None:
                header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
                if not _authorized(header, self.api_key):
                    error = APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY' (the key in "
                                          f"${self.state.settings.api_key_env} where the server runs)", code="invalid_api_key")
                    await JSONResponse(error.body(), status_code=401)(scope, receive, send_status)
                    return
            await self.app(scope, receive_watched, send_status)
        finally:
            metrics.in_flight -= counted
            seconds = time.perf_counter() - started
            if gone[0]:
                status[0] = "cancelled"
                log.warning("%s %s cancelled after %.1f s: the client disconnected, so its remaining generation was "
                            "cancelled", scope["method"], path, seconds)
            if path in ROUTES:
                metrics.observe(path, status[0], seconds)


def _authorized(header: str, api_key: str) -> bool:
    """Whether an Authorization header carries the key (compared in constant time; never logged)."""
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return hmac.compare_digest(token.encode(), api_key.encode())


MAX_JSON_DEPTH = 32  # OpenAI bodies nest a few levels; deeper is refused before anything walks it recursively


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """The body, read up to the server's limit, decoded and validated off the event loop."""
    state = request.app.state.ttscale
    raw = await _read_body(request, state.settings.max_body_bytes, state.stopping)
    return await asyncio.to_thread(_decode, raw, model)


class ClientGone(Exception):
    """The client disconnected before its answer was ready; what it asked for was cancelled."""


async def _unless_disconnected(request: Request, work: Any) -> Any:
    """`work`'s result; cancelled (the engine aborts its sequences) as soon as the client disconnects."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is cancelled: so is its work
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.wait({task})  # the cancellation reaches the backend before the request ends
    raise ClientGone()


async def _disconnect(request: Request) -> None:
    """Returns once the client has disconnected (the body was read: nothing else comes but that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes (max_body_bytes; "
                         "the server's --max-body-bytes raises it); send a smaller body", code="request_too_large")


async def _read_body(request: Request, limit: int, stopping: asyncio.Event) -> bytes:
    """The body, refused with 413 before it is read where Content-Length says it is too large,
    and as soon as the bytes received pass the limit where it does not (chunked bodies). Once
    the server is stopping, a body still coming in gets 503: a client that stops sending
    mid-body would otherwise hold SIGTERM off for as long as it likes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    stream = request.stream()
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while True:
            read = asyncio.ensure_future(anext(stream, None))
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                raise APIError(503, "the server is shutting down and the body was still coming in; send it again "
                                    "(to this server once it is back, or another)", code="shutting_down")
            chunk = read.result()
            if chunk is None:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    finally:
        stop.cancel()


def _decode(raw: bytes, model: type[BaseModel]) -> Any:
    """JSON to the route's body model; every way a body can be malformed is a 400 naming where."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise bad_request(f"the body nests deeper than this server's limit of {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not JSON; send a JSON object") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    _check_json(data)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise from_validation_error(error) from None


_END = object()


def _check_json(data: dict[str, Any]) -> None:
    """400 for nesting deeper than MAX_JSON_DEPTH or a string that is not valid Unicode (a lone
    surrogate such as "\\ud800", which JSON allows and UTF-8 cannot encode), naming the field.
    Walked with a stack of iterators, one per open container: no recursion, and memory in the
    depth, not in the size of the body."""
    path: list[str | int] = []  # the keys down to the container being walked (len(stack) - 1 of them)
    stack = [iter(data.items())]
    while stack:
        entry = next(stack[-1], _END)
        if entry is _END:
            stack.pop()
            if path:
                path.pop()
            continue
        key, value = entry
        if isinstance(key, str):
            _check_text(key, path, key)
        if isinstance(value, str):
            _check_text(value, path, key)
        elif isinstance(value, (dict, list)):
            if len(stack) >= MAX_JSON_DEPTH:
                where = _path_text([*path, key])
                raise bad_request(f"{where}: the body nests deeper than this server's limit of {MAX_JSON_DEPTH} levels", where)
            path.append(key)
            stack.append(iter(value.items()) if isinstance(value, dict) else enumerate(value))


def _check_text(text: str, path: list[str | int], key: str | int) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        where = _path_text([*path, key])
        raise bad_request(f"{where}: the string holds {text[error.start]!r} at {error.start}, a lone surrogate that is not "
                          "valid Unicode; send valid UTF-8 text", where) from None


def _path_text(keys: list[str | int]) -> str:
    """["messages", 0, "content"] as "messages[0].content" (a bad key's surrogate escaped)."""
    text = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
    return text.encode("utf-8", "backslashreplace").decode()


def _response(body: _CommonBody, outcomes: list[Outcome], resolved: Resolved, choices: int, kind: str, equivalent: Any) -> dict[str, Any]:
    """The completion object: the top `choices` candidates of each prompt, usage and the ttscale block."""
    want_candidates = bool(body.ttscale and body.ttscale.candidates)
    items = []
    for p, outcome in enumerate(outcomes):
        for j, candidate in enumerate(ranked_candidates(outcome.trace, equivalent)[:choices]):
            index = p * choices + j
            if kind == "chat":
                items.append({"index": index, "message": {"role": "assistant", "content": candidate.text},
                              "finish_reason": candidate.finish_reason, "logprobs": None})
            else:
                items.append({"index": index, "text": candidate.text, "finish_reason": candidate.finish_reason, "logprobs": None})
    return {
        "id": ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": None,
        "choices": items,
        "usage": usage_of([o.trace.cost for o in outcomes]),
        "ttscale": ttscale_block(outcomes, resolved, want_candidates, equivalent),
    }


STREAM_PIECE_WORDS = 4  # words per content chunk: a chosen text (not streamed as generated) goes in small pieces
KEEPALIVE_S = 5.0  # while nothing else is sent (a strategy choosing), an SSE comment this often keeps the connection


def _pieces(text: str) -> list[str]:
    words = re.findall(r"\S+\s*|\s+", text)
    return ["".join(words[i: i + STREAM_PIECE_WORDS]) for i in range(0, len(words), STREAM_PIECE_WORDS)] or [""]


def one_sample_answers(strategy: Any) -> bool:
    """Whether a strategy's answer is the one sample it draws, as generated (best-of-n with n=1):
    its text can then go to the client while it is being generated."""
    return getattr(strategy, "name", None) == "best-of-n" and samples_per_problem(strategy) == 1


class TextTee:
    """The backend a streamed single-sample request runs on: its one sample goes through the
    backend's generate_streaming, each new piece of text to `on_text` as the engine makes it.
    Every other call, and every other attribute (model, prompt_token_ids, ...), is the backend's."""

    def __init__(self, backend: Any, on_text: Any):
        self._backend, self._on_text, self._used = backend, on_text, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def generate(self, requests: Sequence[Any]) -> list[Any]:
        if not self._used and len(requests) == 1 and requests[0].params.n == 1:
            self._used = True
            return [await self._backend.generate_streaming(requests[0], self._on_text)]
        return await self._backend.generate(requests)


@dataclass
class AnswerText:
    """A streamed request's answer text as it is generated: the pieces (None ends them), and
    whether a sample is streaming live (then its tokens set the pace, and no keep-alive is sent)."""

    pieces: "asyncio.Queue[str | None]" = field(default_factory=asyncio.Queue)
    live: bool = False


def text_backend(state: "ServerState", strategy: Any, sink: AnswerText | None) -> Any:
    """The backend to solve on: a TextTee into `sink` where the request streams and the answer is
    one sample the backend can stream; else the server's backend."""
    if sink is None or not one_sample_answers(strategy) or not streams_text(state.backend):
        return state.backend
    sink.live = True
    return TextTee(state.backend, sink.pieces.put_nowait)


async def stream_response(request: Request, state: "ServerState", body: _CommonBody, jobs: list[Any],
                          sink: AnswerText | None, resolved: Resolved, choices: int, kind: str,
                          equivalent: Any) -> StreamingResponse:
    """The Server-Sent Events answer to `stream: true`. Its first event (the first token, a
    keep-alive, or the whole answer) is awaited before the response starts, so an error before
    anything was sent still gets its HTTP status; a later one is sent as an error event."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _events(state, body, jobs, sink, resolved, choices, kind, equivalent, include_usage)
    try:
        first = await _unless_disconnected(request, anext(events))
    except ClientGone:
        raise
    except Exception as error:  # noqa: BLE001  (each kind becomes the status a client should see)
        raise engine_error(error) from None

    async def rest() -> AsyncIterator[str]:
        try:
            yield first
            async for event in events:
                yield event
        finally:  # a client that left: closing the events cancels its remaining generation
            await events.aclose()

    return StreamingResponse(rest(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _events(state: "ServerState", body: _CommonBody, jobs: list[Any], sink: AnswerText | None,
                  resolved: Resolved, choices: int, kind: str, equivalent: Any, include_usage: bool) -> AsyncIterator[str]:
    """Run the jobs; meanwhile send the answer's text as it is generated (where `sink` gets it),
    else a keep-alive comment every KEEPALIVE_S; then the chosen answer (or the rest of it), usage
    and the ttscale block, in OpenAI's chunk format. No keep-alive once a sample streams live: the
    engine's pace is a client's to wait for, as with vLLM's own server, and a comment alone in a
    read breaks vLLM's benchmark client (it strips each read, gluing the comment to the next event)."""
    sink = sink if sink is not None else AnswerText()
    pieces = sink.pieces
    ident, created = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12), int(time.time())
    task = asyncio.ensure_future(asyncio.gather(*jobs))

    def finished(done: asyncio.Future) -> None:
        if not done.cancelled():
            done.exception()  # read below, or never where the client left: asyncio would log it as lost
        pieces.put_nowait(None)  # the end of the text, however it ended

    task.add_done_callback(finished)
    streamed: list[str] = []
    sent = False
    try:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):  # not wait_for: on 3.11 it can drop a got item
                    piece = await pieces.get()
            except TimeoutError:
                if not sink.live:
                    sent = True
                    yield ": keep-alive\n\n"
                continue
            if piece is None:
                break
            if not streamed and kind == "chat":
                yield _chunk(ident, created, body.model, kind, [_delta(0, {"role": "assistant", "content": ""})])
            streamed.append(piece)
            sent = True
            yield _chunk(ident, created, body.model, kind, [_delta(0, {"content": piece}) if kind == "chat" else _text(0, piece)])
        try:
            outcomes = task.result()
        except Exception as error:  # noqa: BLE001
            if not sent:
                raise
            failure = engine_error(error)  # the status is sent: the error goes in the stream, and to the log
            log.warning("a streamed answer failed after its first event (%s): %s", failure.status, failure.message)
            yield "data: " + json.dumps(failure.body()) + "\n\n"
            yield "data: [DONE]\n\n"
            return
        for outcome in outcomes:
            state.metrics.add_cost(outcome.trace.cost)
        response = {**_response(body, outcomes, resolved, choices, kind, equivalent), "id": ident, "created": created}
        for event in _stream(response, kind, include_usage, "".join(streamed)):
            yield event
    finally:
        task.cancel()  # done already, or the client left: then its generation stops here


def _delta(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def _text(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}


def _chunk(ident: str, created: int, model: str, kind: str, choices: list[dict[str, Any]], **extra: Any) -> str:
    return "data: " + json.dumps({"id": ident, "created": created, "model": model, "system_fingerprint": None,
                                  "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                                  "choices": choices, **extra}) + "\n\n"


def _stream(response: dict[str, Any], kind: str, include_usage: bool, streamed: str = "") -> list[str]:
    """The answer's chunks after `streamed` (text already sent as generated): each choice's role,
    content pieces and finish_reason; then, as OpenAI does, a chunk with no choices and the usage
    only where stream_options.include_usage asks for it. The ttscale block rides on the last
    chunk before [DONE]: the usage chunk, else the last choice's finish chunk (so the docs' loop,
    reading chunk.choices[0], never meets an empty choices list)."""
    events: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    for choice in response["choices"]:
        index, finish = choice["index"], choice["finish_reason"]
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
        if streamed:  # one choice, its text sent as generated: the rest of it, if any
            if not text.startswith(streamed):
                log.error("the streamed text is not the start of the chosen answer; the answer is sent in full below it")
            rest = text[len(streamed):] if text.startswith(streamed) else text
            pieces = [rest] if rest else []
        else:
            pieces = _pieces(text)
        if kind == "chat":
            if not streamed:
                events.append(([_delta(index, {"role": "assistant", "content": ""})], {}))
            events += [([_delta(index, {"content": piece})], {}) for piece in pieces]
            events.append(([_delta(index, {}, finish)], {}))
        else:
            events += [([_text(index, piece)], {}) for piece in pieces[:-1]]
            events.append(([_text(index, pieces[-1] if pieces else "", finish)], {}))
    if include_usage or not events:
        events.append(([], {"usage": response["usage"]} if include_usage else {}))
    events[-1][1]["ttscale"] = response["ttscale"]
    chunks = [_chunk(response["id"], response["created"], response["model"], kind, choices, **extra) for choices, extra in events]
    return chunks + ["data: [DONE]\n\n"]


# --- running the server -------------------------------------------------------------------------------


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def bind(host: str, port: int):
    """A listening socket, or one line saying why not (port in use, bad host)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror or error}); pass another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _signals_end_serving():
    """uvicorn handles SIGTERM and SIGINT (stop taking requests, finish those in flight), then
    raises the signal again for the handler that was there before it. Here that handler does
    nothing, so the engine is closed after uvicorn returns and the command exits 0."""
    wanted = [signal.SIGTERM, signal.SIGINT]
    before = {sig: signal.signal(sig, lambda *_: None) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, telling the app when its shutdown begins (ServerState.stopping)."""

    def __init__(self, config: uvicorn.Config, stopping: asyncio.Event):
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets: Any = None) -> None:
        self.stopping.set()
        await super().shutdown(sockets)


async def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                announce: Any = None) -> None:
    """Start the backend, then answer requests until SIGTERM or SIGINT: uvicorn then stops
    taking new requests, finishes those in flight, and returns; the backend closes last."""
    if not os.environ.get(settings.api_key_env) and host not in LOOPBACK:
        raise ConfigError(f"${settings.api_key_env} is unset, and --host {host} is reachable from other machines; "
                          f"export {settings.api_key_env}=KEY (clients send it as their API key), or serve on 127.0.0.1")
    sock = bind(host, port)
    try:
        state = await ServerState.start(settings)
    except BaseException:
        sock.close()
        raise
    try:
        app = create_app(state)
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", timeout_graceful_shutdown=None)
        server = _Uvicorn(config, state.stopping)
        if announce:
            announce(state)
        with _signals_end_serving():
            await server.serve(sockets=[sock])
    finally:
        await state.close()
        sock.close()
