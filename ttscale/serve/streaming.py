"""The Server-Sent Events answer to `stream: true`, in OpenAI's chunk format: the answer's text
as it is generated where one sample is the answer, else keep-alive comments while a strategy
chooses, then the chosen answer in pieces, usage where asked, the `ttscale` block, and [DONE]."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from typing import Any, AsyncIterator

from fastapi.responses import StreamingResponse
from starlette.requests import Request

from ttscale.serve.protocol import CommonBody
from ttscale.serve.resolve import Resolved
from ttscale.serve.serving import AnswerText, ClientGone, completion_response, engine_error, unless_disconnected
from ttscale.serve.state import ServerState

log = logging.getLogger("ttscale.serve")

STREAM_PIECE_WORDS = 4  # words per content chunk: a chosen text (not streamed as generated) goes in small pieces
KEEPALIVE_S = 5.0  # while nothing else is sent (a strategy choosing), an SSE comment this often keeps the connection


def _pieces(text: str) -> list[str]:
    words = re.findall(r"\S+\s*|\s+", text)
    return ["".join(words[i: i + STREAM_PIECE_WORDS]) for i in range(0, len(words), STREAM_PIECE_WORDS)] or [""]


async def stream_response(request: Request, state: ServerState, body: CommonBody, jobs: list[Any],
                          sink: AnswerText | None, resolved: Resolved, choices: int, kind: str,
                          equivalent: Any) -> StreamingResponse:
    """The Server-Sent Events answer to `stream: true`. Its first event (the first token, a
    keep-alive, or the whole answer) is awaited before the response starts, so an error before
    anything was sent still gets its HTTP status; a later one is sent as an error event."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = _events(state, body, jobs, sink, resolved, choices, kind, equivalent, include_usage)
    try:
        first = await unless_disconnected(request, anext(events))
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


async def _events(state: ServerState, body: CommonBody, jobs: list[Any], sink: AnswerText | None,
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
        response = {**completion_response(body, outcomes, resolved, choices, kind, equivalent), "id": ident, "created": created}
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
