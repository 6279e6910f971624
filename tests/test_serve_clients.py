"""`ttscale serve` with the clients people use: the streaming loop of OpenAI's docs with the
official `openai` package through the real CLI, vLLM's extra sampling parameters (which its
benchmark client sends), tokens streamed as they are generated, and keep-alives while a strategy
chooses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from ttscale.backends.fake import FakeBackend
from ttscale.backends.openai_http import OpenAIBackend
from ttscale.errors import ConfigError, TtscaleError
from ttscale.serve import streaming
from ttscale.serve.app import create_app
from ttscale.serve.protocol import APIError, ChatBody
from ttscale.serve.settings import ServeSettings
from ttscale.serve.state import ServerState
from ttscale.testing import free_port, serve_command, start_server
from ttscale.types import SAMPLING_EXTRAS, ChatMessage, GenRequest, SampleParams

QUESTION = "What is 2+2?"
MESSAGES = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def cli_client():
    """`ttscale serve --backend fake` started as a user starts it, and the official client on it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TTSCALE_API_KEY"}
    process = start_server(serve_command(port, "--backend", "fake", "--model", "fake"), port, env=env)
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def docs_loop(stream) -> str:
    """The streaming loop of OpenAI's docs, as written there (it reads chunk.choices[0])."""
    text = ""
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
    return text


@pytest.mark.parametrize("ttscale", [None, {"n": 4}], ids=["one-sample", "best-of-4"])
def test_the_docs_streaming_loop_runs_against_the_cli_server(cli_client, ttscale):
    extra = {"extra_body": {"ttscale": ttscale}} if ttscale else {}
    whole = cli_client.chat.completions.create(model="fake", messages=MESSAGES, seed=7, **extra)
    streamed = docs_loop(cli_client.chat.completions.create(model="fake", messages=MESSAGES, seed=7, stream=True, **extra))
    assert streamed == whole.choices[0].message.content != ""
    # No usage asked for: every chunk has a choice, and the ttscale block rides on the last one.
    chunks = list(cli_client.chat.completions.create(model="fake", messages=MESSAGES, seed=7, stream=True, **extra))
    assert all(len(c.choices) == 1 and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c for c in chunks if "ttscale" in c.model_extra] == [chunks[-1]]
    assert chunks[-1].model_extra["ttscale"]["strategy"] == "best-of-n"
    # Usage asked for: then, as OpenAI does, one last chunk with no choices carries it (and the block).
    chunks = list(cli_client.chat.completions.create(model="fake", messages=MESSAGES, seed=7, stream=True,
                                                     stream_options={"include_usage": True}, **extra))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c for c in chunks if "ttscale" in c.model_extra] == [chunks[-1]]
    assert all(len(c.choices) == 1 for c in chunks[:-1])


def test_the_completions_streaming_loop_runs_against_the_cli_server(cli_client):
    whole = cli_client.completions.create(model="fake", prompt=QUESTION, seed=3)
    text = ""
    for chunk in cli_client.completions.create(model="fake", prompt=QUESTION, seed=3, stream=True):
        text += chunk.choices[0].text
    assert text == whole.choices[0].text != ""


def test_vllms_benchmark_client_reads_the_cli_servers_streams(cli_client):
    """The request function of `vllm bench serve --backend openai-chat`, as it runs there."""
    bench = pytest.importorskip("vllm.benchmarks.lib.endpoint_request_func")
    import aiohttp

    whole = cli_client.chat.completions.create(model="fake", messages=MESSAGES, seed=4)

    async def run(extra_body):
        request = bench.RequestFuncInput(prompt=QUESTION, api_url=f"{cli_client.base_url}chat/completions", prompt_len=10,
                                         output_len=64, model="fake", extra_body={"seed": 4, **extra_body})
        async with aiohttp.ClientSession() as session:
            return await bench.async_request_openai_chat_completions(request, session)

    for extra_body in ({}, {"ttscale": {"n": 4}}):
        output = asyncio.run(run(extra_body))
        assert output.success, output.error
        assert output.ttft > 0 and output.output_tokens == (4 if extra_body else 1) * whole.usage.completion_tokens
    assert asyncio.run(run({})).generated_text == whole.choices[0].message.content


def test_vllm_sampling_extras_are_refused_by_name_by_the_fake_backend(cli_client):
    for name, value in {"ignore_eos": True, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "min_tokens": 3,
                        "frequency_penalty": 0.5}.items():
        with pytest.raises(openai.BadRequestError) as caught:
            cli_client.chat.completions.create(model="fake", messages=MESSAGES, extra_body={name: value})
        assert caught.value.body["param"] == name and "fake backend" in caught.value.body["message"]
    # Their neutral values ask for nothing, so every backend honours them (vLLM's bench client sends them).
    neutral = {"ignore_eos": False, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "min_tokens": 0}
    response = cli_client.chat.completions.create(model="fake", messages=MESSAGES, extra_body=neutral)
    assert response.choices[0].message.content


# --- in-process: what reaches the backend -------------------------------------------------------------


class HonouringFake(FakeBackend):
    """The fake with a sampler said to honour every extra (it records them, then samples without)."""

    sampling_extras = frozenset(SAMPLING_EXTRAS)

    def __init__(self):
        super().__init__("fake")
        self.asked: list[SampleParams] = []

    def _generate_one(self, request: GenRequest):
        self.asked.append(request.params)
        plain = request.params.model_copy(update=dict.fromkeys(SAMPLING_EXTRAS))
        return super()._generate_one(request.model_copy(update={"params": plain}))


def in_process(backend, settings=None, app_wrapper=None):
    state = asyncio.run(ServerState.start(settings or ServeSettings(backend="fake", model="fake"), backend=backend))
    app = create_app(state)
    http = TestClient(app_wrapper(app) if app_wrapper else app)
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0), http


def test_vllm_sampling_extras_reach_a_backend_that_honours_them():
    backend = HonouringFake()
    client, http = in_process(backend)
    extras = {"ignore_eos": True, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2,
              "presence_penalty": 0.5, "frequency_penalty": -0.5}
    with http:
        client.chat.completions.create(model="fake", messages=MESSAGES, max_completion_tokens=32, extra_body=extras)
        [params] = backend.asked
        assert params.extras() == extras and params.max_tokens == 32
        # Their bounds are vLLM's, each a 400 naming the field.
        for name, value in {"min_tokens": 64, "min_p": 1.5, "top_k": -2, "repetition_penalty": 0.0}.items():
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=32, extra_body={name: value})
            assert caught.value.body["param"] == name


def test_sample_params_only_take_extras_the_backend_honours():
    settings = ServeSettings(backend="openai", model="fake")
    body = ChatBody(model="fake", messages=MESSAGES, top_k=4, presence_penalty=0.3)
    assert body.to_sample_params(settings, frozenset(SAMPLING_EXTRAS)).extras() == {"top_k": 4, "presence_penalty": 0.3}
    with pytest.raises(APIError) as caught:
        body.to_sample_params(settings, frozenset({"presence_penalty"}))
    assert (caught.value.status, caught.value.param) == (400, "top_k")


def test_the_vllm_edge_builds_sampling_params_with_the_extras():
    from ttscale.backends.vllm import VLLMBackend, to_sampling_params

    params = SampleParams(max_tokens=16, ignore_eos=True, top_k=5, min_p=0.05, repetition_penalty=1.1, min_tokens=4,
                          presence_penalty=0.2, frequency_penalty=0.1)
    built = to_sampling_params(params, stream=True)
    assert (built.ignore_eos, built.top_k, built.min_p, built.repetition_penalty, built.min_tokens) == (True, 5, 0.05, 1.1, 4)
    assert (built.presence_penalty, built.frequency_penalty, built.max_tokens) == (0.2, 0.1, 16)
    default = to_sampling_params(SampleParams(max_tokens=16))
    assert (default.ignore_eos, default.min_tokens, default.repetition_penalty) == (False, 0, 1.0)
    assert VLLMBackend.sampling_extras == frozenset(SAMPLING_EXTRAS)


def test_an_openai_upstream_gets_the_extras_it_can_take():
    request = GenRequest(prompt=(ChatMessage(role="user", content=QUESTION),), params=SampleParams(top_k=5, presence_penalty=0.5))
    vllm_upstream = OpenAIBackend("fake", num_params=1)
    assert {"top_k": 5, "presence_penalty": 0.5}.items() <= vllm_upstream._body(request, chat=True).items()
    plain_upstream = OpenAIBackend("fake", num_params=1, vllm_extensions=False)
    assert plain_upstream.sampling_extras == {"presence_penalty", "frequency_penalty"}
    with pytest.raises(ConfigError, match="top_k"):
        plain_upstream._body(request, chat=True)
    asyncio.run(vllm_upstream.close())
    asyncio.run(plain_upstream.close())


def sse(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_an_openai_upstream_streams_its_text_with_exact_counts():
    request = GenRequest(prompt=(ChatMessage(role="user", content=QUESTION),), params=SampleParams(seed=1))
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": "Four"}, "token_ids": [11], "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": " it is."}, "token_ids": [12, 13, 14], "finish_reason": "stop"}]},
              {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 8}}}]
    sent: list[dict] = []

    def upstream(http_request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(http_request.content))
        return httpx.Response(200, content=sse(*chunks), headers={"content-type": "text/event-stream"})

    backend = OpenAIBackend("fake", num_params=1, transport=httpx.MockTransport(upstream))
    pieces: list[str] = []
    generation = asyncio.run(backend.generate_streaming(request, pieces.append))
    assert pieces == ["Four", " it is."] and sent[0]["stream"] is True and sent[0]["stream_options"] == {"include_usage": True}
    [completion] = generation.completions
    assert (completion.text, completion.num_tokens, completion.finish_reason) == ("Four it is.", 4, "stop")
    assert (generation.prompt_tokens, generation.cached_prompt_tokens, generation.cost_known) == (9, 8, True)


def test_an_openai_upstream_that_cannot_stream_is_asked_plainly_and_one_broken_mid_answer_fails():
    request = GenRequest(prompt=(ChatMessage(role="user", content=QUESTION),), params=SampleParams(seed=1))
    plain = {"choices": [{"index": 0, "message": {"content": "Four."}, "token_ids": [1, 2], "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 9, "completion_tokens": 2}}

    def refuses_streams(http_request: httpx.Request) -> httpx.Response:
        if json.loads(http_request.content).get("stream"):
            return httpx.Response(400, json={"error": {"message": "stream_options: unknown field"}})
        return httpx.Response(200, json=plain)

    backend = OpenAIBackend("fake", num_params=1, transport=httpx.MockTransport(refuses_streams))
    pieces: list[str] = []
    generation = asyncio.run(backend.generate_streaming(request, pieces.append))
    assert pieces == ["Four."] and generation.completions[0].num_tokens == 2

    async def breaks_after_one_piece():
        yield sse({"choices": [{"index": 0, "delta": {"content": "Fo"}, "finish_reason": None}]})[:-len(b"data: [DONE]\n\n")]
        raise httpx.ReadError("connection reset")

    def breaks(http_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=breaks_after_one_piece(), headers={"content-type": "text/event-stream"})

    backend = OpenAIBackend("fake", num_params=1, transport=httpx.MockTransport(breaks))
    pieces = []
    with pytest.raises(TtscaleError, match="did not answer after its stream broke mid-answer"):
        asyncio.run(backend.generate_streaming(request, pieces.append))
    assert pieces == ["Fo"]


def test_a_proxy_streams_what_its_upstream_streams(cli_client):
    """`--backend openai` in front of the CLI server (the fake behind it): the docs' loop through both."""
    settings = ServeSettings(backend="openai", model="fake", backend_options={
        "base_url": str(cli_client.base_url), "num_params": 1_000_000, "vllm_extensions": False, "max_retries": 0})
    client, http = in_process(None, settings)
    with http:
        whole = client.chat.completions.create(model="fake", messages=MESSAGES, seed=2)
        streamed = docs_loop(client.chat.completions.create(model="fake", messages=MESSAGES, seed=2, stream=True))
        chunks = list(client.chat.completions.create(model="fake", messages=MESSAGES, seed=2, stream=True,
                                                     stream_options={"include_usage": True}))
    assert streamed == whole.choices[0].message.content != ""
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 0


# --- time to first token, keep-alives --------------------------------------------------------------------


class HeldFake(FakeBackend):
    """The fake, holding each answer until the server has sent what the test waits for (`go`);
    `released` says whether it was let go (False: it gave up waiting after 60 s)."""

    def __init__(self):
        super().__init__("fake")
        self.go = threading.Event()
        self.released: bool | None = None

    async def generate_streaming(self, request, on_text):
        pieces: list[str] = []
        generation = await super().generate_streaming(request, pieces.append)
        on_text(pieces[0])  # the first token is out; the rest waits
        self.released = await asyncio.to_thread(self.go.wait, 60)
        for piece in pieces[1:]:
            on_text(piece)
        return generation

    async def generate(self, requests):
        self.released = await asyncio.to_thread(self.go.wait, 60)
        return await super().generate(requests)


def releasing_on(marker: bytes, backend: HeldFake):
    """The app, letting the backend go once a response body chunk holding `marker` was sent."""
    def wrap(app):
        async def watched(scope, receive, send):
            async def watch(message):
                await send(message)
                if message["type"] == "http.response.body" and marker in message.get("body", b""):
                    backend.go.set()
            await app(scope, receive, watch)
        return watched
    return wrap


def test_a_single_sample_streams_its_tokens_while_it_is_generated():
    backend = HeldFake()
    client, http = in_process(backend, app_wrapper=releasing_on(b'"delta": {"content": ', backend))
    with http:
        streamed = docs_loop(client.chat.completions.create(model="fake", messages=MESSAGES, seed=5, stream=True))
        # The backend held the sample after its first token until the server had sent that token.
        assert backend.released is True
        whole = client.chat.completions.create(model="fake", messages=MESSAGES, seed=5)
    assert streamed == whole.choices[0].message.content


class SlowFirstToken(FakeBackend):
    """The fake, taking a while before a streamed sample's first token (an engine's queue, a long prefill)."""

    async def generate_streaming(self, request, on_text):
        await asyncio.sleep(0.2)  # many keep-alive intervals of the test's 0.01 s
        return await super().generate_streaming(request, on_text)


def test_no_keep_alive_while_a_sample_streams_live(monkeypatch):
    """The engine sets the pace of a live sample, as with vLLM's own server: no comment goes out,
    so clients that mishandle comments (vLLM's benchmark client) are never fed one."""
    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.01)
    _, http = in_process(SlowFirstToken("fake"))
    with http:
        raw = http.post("/v1/chat/completions", json={"model": "fake", "messages": MESSAGES, "stream": True}).text
    assert ": keep-alive" not in raw and raw.endswith("data: [DONE]\n\n")


def test_keep_alives_go_out_while_a_strategy_chooses(monkeypatch):
    monkeypatch.setattr(streaming, "KEEPALIVE_S", 0.01)
    backend = HeldFake()
    client, http = in_process(backend, app_wrapper=releasing_on(b": keep-alive", backend))
    with http:
        stream = client.chat.completions.create(model="fake", messages=MESSAGES, seed=5, stream=True,
                                                extra_body={"ttscale": {"n": 4}})
        streamed = docs_loop(stream)  # the client skips the SSE comments
        assert backend.released is True  # the samples were held until a keep-alive had gone out
        backend.go.set()
        whole = client.chat.completions.create(model="fake", messages=MESSAGES, seed=5, extra_body={"ttscale": {"n": 4}})
    assert streamed == whole.choices[0].message.content


class HangingFake(FakeBackend):
    """The fake, whose streamed sample hangs after its first token; `cancelled` is set once that
    generation is cancelled."""

    def __init__(self):
        super().__init__("fake")
        self.cancelled = threading.Event()

    async def generate_streaming(self, request, on_text):
        on_text("The")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class FailingFake(FakeBackend):
    """The fake, whose upstream goes away after the first token of a streamed sample."""

    GONE = "http://upstream/v1/chat/completions did not answer after 1 tries (ConnectError)"

    async def generate_streaming(self, request, on_text):
        on_text("The")
        await asyncio.sleep(0)
        raise TtscaleError(self.GONE)

    async def generate(self, requests):
        raise TtscaleError(self.GONE)


def test_an_error_after_the_first_token_is_an_error_event_the_client_raises():
    client, http = in_process(FailingFake("fake"))
    with http:
        stream = client.chat.completions.create(model="fake", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="the model server is unavailable"):
            docs_loop(stream)
        # Before anything was sent, the same error keeps its HTTP status.
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="fake", messages=MESSAGES, stream=True, extra_body={"ttscale": {"n": 2}})
        assert caught.value.status_code == 503 and caught.value.body["code"] == "upstream_unavailable"


def test_a_client_that_leaves_a_stream_cancels_its_generation():
    import uvicorn

    backend = HangingFake()
    state = asyncio.run(ServerState.start(ServeSettings(backend="fake", model="fake"), backend=backend))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        body = {"model": "fake", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            next(line for line in response.iter_lines() if '"content": "The"' in line)
        # The connection is closed mid-answer: the sample's generation is cancelled, not left running.
        assert backend.cancelled.wait(60)
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.mark.engine
@pytest.mark.asyncio(loop_scope="session")
async def test_the_engine_streams_the_text_generate_returns(vllm_backend):
    request = GenRequest(prompt=(ChatMessage(role="user", content=QUESTION),), params=SampleParams(max_tokens=24, seed=11))
    pieces: list[str] = []
    streamed = await vllm_backend.generate_streaming(request, pieces.append)
    [whole] = await vllm_backend.generate([request])
    assert len(pieces) > 1 and "".join(pieces) == streamed.completions[0].text == whole.completions[0].text
    assert streamed.completions[0].num_tokens == whole.completions[0].num_tokens
    assert streamed.prompt_tokens == whole.prompt_tokens
    # ignore_eos reaches the engine: every sample runs to max_tokens (a prompt that ends quickly).
    short = GenRequest(prompt=(ChatMessage(role="user", content="Say OK."),), params=SampleParams(max_tokens=40, n=3, seed=1))
    [plain] = await vllm_backend.generate([short])
    [forced] = await vllm_backend.generate([short.model_copy(update={"params": short.params.model_copy(update={"ignore_eos": True})})])
    assert any(c.num_tokens < 40 for c in plain.completions) and all(c.num_tokens == 40 for c in forced.completions)
