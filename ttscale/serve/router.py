"""The routes of `ttscale serve`, as vLLM's api_server.py holds its own: each reads its body
under the server's limits (size, nesting, valid text; a body still coming in at shutdown gets
503), turns it into problems, resolves what runs, and runs it, answered as JSON or as a stream."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from ttscale import registry
from ttscale.allocation.policy import AllocationError, check_budget
from ttscale.protocols import sampling_extras_of
from ttscale.serve.protocol import (
    API_RESPONSES,
    TTS_HEADERS,
    APIError,
    ChatBody,
    CommonBody,
    CompletionBody,
    bad_request,
    chat_messages,
    chat_problem,
    from_validation_error,
    refuse_unhonoured,
)
from ttscale.serve.resolve import POLICY_PREFIX, body_layer, default_layer, header_layer, model_layer, resolve
from ttscale.serve.serving import (
    AnswerText,
    ClientGone,
    check_policy_sampling,
    completion_response,
    engine_error,
    prepare,
    run_policy,
    run_strategy,
    unless_disconnected,
)
from ttscale.serve.state import ServerState
from ttscale.serve.streaming import stream_response
from ttscale.types import ChatMessage, Problem

router = APIRouter()


def state_of(request: Request) -> ServerState:
    """The server's state, which create_app (ttscale.serve.app) puts on the app."""
    return request.app.state.ttscale


@router.get("/health")
async def health(request: Request):
    state = state_of(request)
    return {"status": "ok", "model": state.model_name, "policy": str(state.settings.policy) if state.policy else None}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request):
    state = state_of(request)
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def models(request: Request):
    state = state_of(request)
    created = int(state.started)
    names = [state.model_name] + [f"{s}/{state.model_name}" for s in registry.strategies.names()]
    if state.policy is not None:
        names.append(f"{POLICY_PREFIX}/{state.model_name}")
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "ttscale"} for name in names]}


@router.post("/v1/chat/completions", responses=API_RESPONSES, openapi_extra={"parameters": TTS_HEADERS})
async def chat_completions(request: Request):
    body = await _parse(request, ChatBody)
    messages = chat_messages(body.messages)
    problem = chat_problem(messages)
    # Under the policy a lone user turn is wrapped in the fitting runs' template, as the library does.
    policy_prompt: str | Problem = messages[0].content if len(messages) == 1 else problem
    return await _serve(request, body, [(problem, policy_prompt)], "chat")


@router.post("/v1/completions", responses=API_RESPONSES, openapi_extra={"parameters": TTS_HEADERS})
async def completions(request: Request):
    state = state_of(request)
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


async def _serve(request: Request, body: CommonBody, problems: list[tuple[Problem, str | Problem]], kind: str):
    """Resolve what runs for the body's problems, check it against the limits, and run it."""
    state = state_of(request)
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
        params = body.to_sample_params(state.settings, sampling_extras_of(state.backend))
        _, options, verifier = prepare(state, resolved, params, choices)
        jobs = [run_strategy(state, problem, resolved, options, verifier, params, seed, sink) for problem, _ in problems]
        equivalent = state.answers.equivalent
    if body.stream:
        return await stream_response(request, state, body, jobs, sink, resolved, choices, kind, equivalent)
    try:
        outcomes = list(await unless_disconnected(request, asyncio.gather(*jobs)))
    except ClientGone:
        raise
    except Exception as error:  # noqa: BLE001  (each kind becomes the status a client should see)
        raise engine_error(error) from None
    for outcome in outcomes:
        state.metrics.add_cost(outcome.trace.cost)
    return JSONResponse(completion_response(body, outcomes, resolved, choices, kind, equivalent))


# --- reading a body -----------------------------------------------------------------------------


MAX_JSON_DEPTH = 32  # OpenAI bodies nest a few levels; deeper is refused before anything walks it recursively


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """The body, read up to the server's limit, decoded and validated off the event loop."""
    state = state_of(request)
    raw = await _read_body(request, state.settings.max_body_bytes, state.stopping)
    return await asyncio.to_thread(_decode, raw, model)


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
