"""The HTTP client's failure handling, with failures injected at the transport (no server)."""

import json
import logging

import httpx
import pytest

from ttscale.backends.openai_http import OpenAIBackend
from ttscale.errors import TtscaleError
from ttscale.types import ChatMessage, GenRequest, SampleParams

QUESTION = (ChatMessage(role="user", content="1+1?"),)


def reply(n, with_ids=True):
    choices = [
        {"index": i, "message": {"content": f"\\boxed{{{i}}}"}, "finish_reason": "stop", **({"token_ids": [1, 2, 3]} if with_ids else {})}
        for i in range(n)
    ]
    usage = {"prompt_tokens": 10, "completion_tokens": 3 * n, "prompt_tokens_details": {"cached_tokens": 4}}
    return httpx.Response(200, json={"choices": choices, "usage": usage})


def backend_with(handler, **kwargs):
    return OpenAIBackend("m", base_url="http://test/v1", num_params=7, backoff_s=0.0, transport=httpx.MockTransport(handler), **kwargs)


async def test_retries_429_and_5xx_then_succeeds():
    statuses = iter([429, 503])
    calls = []

    def handler(request):
        calls.append(json.loads(request.content))
        status = next(statuses, 200)
        return reply(2) if status == 200 else httpx.Response(status, text="busy")

    [generation] = await backend_with(handler).generate([GenRequest(prompt=QUESTION, params=SampleParams(n=2, seed=5))])
    assert len(calls) == 3
    assert calls[0]["n"] == 2 and calls[0]["seed"] == 5 and calls[0]["return_token_ids"] is True
    assert [c.num_tokens for c in generation.completions] == [3, 3]
    assert (generation.prompt_tokens, generation.cached_prompt_tokens) == (10, 4)


async def test_gives_up_with_the_url_after_the_last_retry():
    backend = backend_with(lambda request: httpx.Response(502, text="bad gateway"), max_retries=2)
    with pytest.raises(TtscaleError, match=r"http://test/v1/chat/completions did not answer after 3 tries \(HTTP 502"):
        await backend.generate([GenRequest(prompt=QUESTION)])


async def test_server_without_n_gets_single_requests_and_one_warning(caplog):
    bodies = []

    def handler(request):
        body = json.loads(request.content)
        bodies.append(body)
        if body["n"] > 1:
            return httpx.Response(400, json={"error": {"message": "'n' must be 1"}})
        return reply(1)

    backend = backend_with(handler)
    with caplog.at_level(logging.WARNING, logger="ttscale.backends.openai_http"):
        [a] = await backend.generate([GenRequest(prompt=QUESTION, params=SampleParams(n=3, seed=10))])
        [b] = await backend.generate([GenRequest(prompt=QUESTION, params=SampleParams(n=2, seed=10))])
    assert len(a.completions) == 3 and len(b.completions) == 2
    assert a.prompt_tokens == 30  # three requests, each prefilled
    assert sorted(body["seed"] for body in bodies if body["n"] == 1)[:3] == [10, 10, 11]
    assert sum("separate requests" in r.message for r in caplog.records) == 1


async def test_prefix_is_sent_as_a_continued_assistant_message():
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return reply(1)

    await backend_with(handler).generate([GenRequest(prompt=QUESTION, prefix="Step 1:", params=SampleParams(stop=("\n\n",), include_stop_str=True))])
    body = seen[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "Step 1:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["stop"] == ["\n\n"] and body["include_stop_str_in_output"] is True


async def test_other_client_errors_are_one_line_with_the_server_message():
    backend = backend_with(lambda request: httpx.Response(404, json={"error": {"message": "model 'm' not found"}}))
    with pytest.raises(TtscaleError, match=r"rejected the request \(HTTP 404\).*model 'm' not found"):
        await backend.generate([GenRequest(prompt=QUESTION)])
