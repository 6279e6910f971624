"""`ttscale serve` on the fake backend, driven by the official openai client: what runs, exact
usage and FLOPs (equal to the Trace.cost of the same solve made directly), streaming, errors in
OpenAI's shape, auth, metrics, the policy under a budget, 503 from a dead upstream, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from ttscale.backends.fake import FakeBackend
from ttscale.serve.app import create_app
from ttscale.serve.settings import ServeSettings
from ttscale.serve.state import ServerState
from ttscale.solve import solve
from ttscale.testing import free_port, serve_command, start_server, wait_until_in_flight
from ttscale.types import ChatMessage, SampleParams

sys.path.insert(0, str(Path(__file__).parent))
from _allocation_data import write_run  # noqa: E402

QUESTION = "What is 2+2?"
# The fake tokenizer counts words and punctuation: "user : What is 2 + 2 ? assistant :" is 10
# tokens, and every default completion "Let me think step by step .  The answer is \ boxed { d } ." is 16.
PROMPT_TOKENS = 10
COMPLETION_TOKENS = 16


def make_client(settings: ServeSettings, backend=None, api_key: str = "unused") -> tuple[openai.OpenAI, TestClient, ServerState]:
    state = asyncio.run(ServerState.start(settings, backend=backend))
    http = TestClient(create_app(state))
    return openai.OpenAI(base_url="http://testserver/v1", api_key=api_key, http_client=http, max_retries=0), http, state


@pytest.fixture
def fake():
    client, http, state = make_client(ServeSettings(backend="fake", model="fake"))
    with http:
        yield client, http, state


def direct_trace(strategy="best-of-n", options=None, seed=1, params=None, question=QUESTION):
    """The same solve, straight through ttscale.solve on a fresh fake backend."""
    from ttscale.serve.protocol import chat_problem

    problem = chat_problem((ChatMessage(role="user", content=question),))
    return asyncio.run(solve(problem, backend=FakeBackend("fake"), strategy=strategy, options=options or {"n": 1},
                             params=params or SampleParams(max_tokens=256), seed=seed))


def ask(client, model="fake", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], **kwargs)


def test_best_of_n_via_extra_body_counts_every_sample_exactly(fake):
    client, _, _ = fake
    response = ask(client, seed=1, extra_body={"ttscale": {"strategy": "best-of-n", "n": 4, "candidates": True}})
    trace = direct_trace(options={"n": 4}, seed=1)
    usage = response.usage
    assert usage.prompt_tokens == trace.cost.prompt_tokens == PROMPT_TOKENS
    assert usage.completion_tokens == trace.cost.generated_tokens == 4 * COMPLETION_TOKENS
    assert usage.total_tokens == PROMPT_TOKENS + 4 * COMPLETION_TOKENS
    assert usage.prompt_tokens_details.cached_tokens == trace.cost.cached_prompt_tokens == 0
    block = response.model_extra["ttscale"]
    assert block["flops"] == trace.cost.flops and block["eflops"] == trace.cost.eflops
    assert block["flops"] == 2 * 1_000_000 * (PROMPT_TOKENS + 4 * COMPLETION_TOKENS)  # 2·P per token, no shape
    assert block["strategy"] == "best-of-n" and block["options"] == {"n": 4} and block["selection"] == "majority"
    assert block["engine_calls"] == 1 and block["verifier_calls"] == 0 and block["cost_known"] is True
    assert [c["text"] for c in block["candidates"]] == [c.text for c in trace.candidates]
    assert block["selections"] == trace.selections
    # The message is the chosen candidate: the first whose answer is the majority's.
    [choice] = response.choices
    chosen = next(c for c in trace.candidates if c.answer == trace.answer)
    assert choice.message.content == chosen.text and choice.finish_reason == "stop"


def test_best_of_n_via_model_prefix_and_client_n_returns_top_candidates(fake):
    client, _, _ = fake
    response = ask(client, model="best-of-n-3/fake", n=2, seed=5, extra_body={"ttscale": {"candidates": True}})
    trace = direct_trace(options={"n": 3}, seed=5)
    block = response.model_extra["ttscale"]
    assert block["source"] == "model" and block["options"] == {"n": 3}
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].message.content == next(c.text for c in trace.candidates if c.answer == trace.answer)
    assert {c.message.content for c in response.choices} <= {c.text for c in trace.candidates}
    assert response.usage.completion_tokens == 3 * COMPLETION_TOKENS  # all three drawn, two returned


def test_header_strategy_and_selection_order(fake):
    client, _, _ = fake
    # extra_body beats the header, which beats the model prefix.
    response = ask(client, model="beam-search/fake", seed=2, extra_headers={"X-TTS-Strategy": "revision"},
                   extra_body={"ttscale": {"strategy": "best-of-n", "n": 2}})
    assert response.model_extra["ttscale"]["strategy"] == "best-of-n"
    assert response.model_extra["ttscale"]["source"] == "extra_body"
    response = ask(client, model="dvts/fake", seed=2, extra_headers={"X-TTS-Strategy": "best-of-n"}, extra_body={"ttscale": {"n": 3}})
    block = response.model_extra["ttscale"]
    assert (block["strategy"], block["source"], block["options"]["n"]) == ("best-of-n", "header", 3)
    block = ask(client, seed=2, extra_headers={"X-TTS-Strategy": "best-of-n-3"}).model_extra["ttscale"]
    assert (block["strategy"], block["source"], block["options"]["n"]) == ("best-of-n", "header", 3)
    # Nothing named: the server's default, best-of-n n=1.
    block = ask(client, seed=2).model_extra["ttscale"]
    assert (block["strategy"], block["source"], block["options"]) == ("best-of-n", "default", {"n": 1})


def test_a_plain_request_for_n_choices_draws_n_samples(fake):
    client, _, _ = fake
    response = ask(client, n=3, seed=4)
    assert len(response.choices) == 3
    assert response.usage.completion_tokens == 3 * COMPLETION_TOKENS
    assert response.model_extra["ttscale"]["options"] == {"n": 3}


def test_parameters_pass_through_to_the_engine():
    backend = FakeBackend("fake")
    client, http, _ = make_client(ServeSettings(backend="fake", model="fake"), backend=backend)
    with http:
        response = ask(client, seed=9, temperature=0.3, top_p=0.9, max_tokens=5, stop=["never"])
    [request] = backend.requests
    params = request.params
    assert (params.temperature, params.top_p, params.max_tokens, params.stop) == (0.3, 0.9, 5, ("never",))
    assert response.usage.completion_tokens == 5 and response.choices[0].finish_reason == "length"
    trace = direct_trace(seed=9, params=SampleParams(max_tokens=5, temperature=0.3, top_p=0.9, stop=("never",)))
    assert response.choices[0].message.content == trace.candidates[0].text


def test_streaming_sends_the_chosen_answer_then_usage(fake):
    client, _, _ = fake
    plain = ask(client, seed=3, extra_body={"ttscale": {"n": 4}})
    chunks = list(ask(client, seed=3, stream=True, stream_options={"include_usage": True}, extra_body={"ttscale": {"n": 4}}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, 4 * COMPLETION_TOKENS)
    # The same prompt again: the fake's prefix cache (blocks of 4) now holds 8 of its 10 tokens.
    assert plain.usage.prompt_tokens_details.cached_tokens == 0 and usage.prompt_tokens_details.cached_tokens == 8
    assert chunks[-1].model_extra["ttscale"]["structural_flops"] == plain.model_extra["ttscale"]["structural_flops"]
    without = list(ask(client, seed=3, stream=True, extra_body={"ttscale": {"n": 4}}))
    assert all(c.usage is None for c in without)


def test_completions_route_and_list_prompts(fake):
    client, _, _ = fake
    response = client.completions.create(model="fake", prompt=[QUESTION, "What is 3+3?"], seed=1, max_tokens=64)
    assert [c.index for c in response.choices] == [0, 1]
    first = direct_trace(seed=1, params=SampleParams(max_tokens=64))
    second = direct_trace(seed=1, params=SampleParams(max_tokens=64), question="What is 3+3?")
    assert response.choices[0].text == first.candidates[0].text
    assert response.usage.prompt_tokens == first.cost.prompt_tokens + second.cost.prompt_tokens
    assert response.usage.completion_tokens == 2 * COMPLETION_TOKENS
    # One engine serves both: the second prompt finds "user : What is" (one block of 4) in the
    # prefix cache, so its actual FLOPs are lower; the cache-independent ones add up exactly.
    block = response.model_extra["ttscale"]
    assert response.usage.prompt_tokens_details.cached_tokens == 4
    assert block["structural_flops"] == first.cost.structural_flops + second.cost.structural_flops
    assert block["flops"] == first.cost.flops + second.cost.flops - 2 * 1_000_000 * 4
    streamed = list(client.completions.create(model="fake", prompt=QUESTION, seed=1, max_tokens=64, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == first.candidates[0].text
    assert streamed[-1].usage.completion_tokens == COMPLETION_TOKENS


def test_models_and_health(fake):
    client, http, _ = fake
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "fake" and "best-of-n/fake" in ids and "policy/fake" not in ids
    assert http.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("kwargs, status, param", [
    ({"extra_body": {"ttscale": {"n": 0}}}, 400, "ttscale.n"),
    ({"extra_body": {"ttscale": {"strategy": "bestofn"}}}, 400, "ttscale.strategy"),
    ({"extra_headers": {"X-TTS-Strategy": "nope"}}, 400, "X-TTS-Strategy"),
    ({"n": 0}, 400, "n"),
    ({"n": 3, "extra_body": {"ttscale": {"n": 2}}}, 400, "n"),
    ({"extra_body": {"ttscale": {"selection": "oracle", "n": 2}}}, 400, "ttscale.selection"),
    ({"extra_body": {"ttscale": {"verifier": "oracle-orm"}}}, 400, "ttscale.verifier"),
    ({"extra_body": {"ttscale": {"selection": "max-score"}}}, 400, "ttscale.verifier"),
    ({"extra_body": {"ttscale": {"budget_flops": 1e12}}}, 400, "ttscale.budget_flops"),
    ({"extra_body": {"ttscale": {"wat": 1}}}, 400, "ttscale.wat"),
    ({"extra_body": {"ttscale": {"strategy": "beam-search"}}, "stop": ["x"]}, 400, "stop"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"max_tokens": 100_000}, 400, "max_tokens"),
    ({"temperature": -1}, 400, "temperature"),
    ({"extra_body": {"frobnicate": True}}, 400, "frobnicate"),
    ({"model": "other-model"}, 404, "model"),
    ({"model": "nostrategy-8/fake"}, 404, "model"),
])
def test_bad_requests_get_openai_errors_naming_the_field(fake, kwargs, status, param):
    client, _, _ = fake
    model = kwargs.pop("model", "fake")
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, model=model, **kwargs)
    error = caught.value
    assert error.status_code == status
    assert error.body["param"] == param and error.body["type"] == "invalid_request_error" and error.body["message"]


def test_malformed_body_and_unknown_route(fake):
    _, http, _ = fake
    response = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = http.post("/v1/chat/completions", json={"model": "fake", "messages": [{"role": "tool", "content": "x"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages[0].role"
    assert http.get("/v1/nothing").status_code == 404


def test_api_key(monkeypatch):
    monkeypatch.setenv("TTS_TEST_KEY", "s3cret")
    settings = ServeSettings(backend="fake", model="fake", api_key_env="TTS_TEST_KEY")
    client, http, _ = make_client(settings, api_key="wrong")
    good = openai.OpenAI(base_url="http://testserver/v1", api_key="s3cret", http_client=http, max_retries=0)
    with http:
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(client)
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        assert "s3cret" not in json.dumps(caught.value.body)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        assert ask(good, seed=1).choices[0].message.content
        assert http.get("/health").status_code == 200  # health needs no key


def test_metrics_count_requests_tokens_and_flops(fake):
    client, http, _ = fake
    responses = [ask(client, seed=s, extra_body={"ttscale": {"n": 2}}) for s in (1, 2)]
    with pytest.raises(openai.BadRequestError):
        ask(client, n=0)
    text = http.get("/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values['ttscale_requests_total{route="/v1/chat/completions",status="200"}'] == 2
    assert values['ttscale_requests_total{route="/v1/chat/completions",status="400"}'] == 1
    assert values["ttscale_completion_tokens_total"] == sum(r.usage.completion_tokens for r in responses)
    assert values["ttscale_prompt_tokens_total"] == sum(r.usage.prompt_tokens for r in responses)
    assert values["ttscale_flops_total"] == sum(r.model_extra["ttscale"]["flops"] for r in responses)
    assert values["ttscale_request_latency_seconds_count"] == 3
    assert values['ttscale_request_latency_seconds_bucket{le="+Inf"}'] == 3


# --- the allocation policy ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    """A policy fitted on synthetic best-of-n runs of the fake model (ttscale.allocation.fit)."""
    from ttscale.allocation.fit import fit_policy

    root = tmp_path_factory.mktemp("policy")
    levels = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    run = write_run(root, "bon", [levels[i % len(levels)] for i in range(60)], n=16)
    return fit_policy([run]).save(root / "policy.json")


@pytest.fixture
def with_policy(policy_path):
    client, http, state = make_client(ServeSettings(backend="fake", model="fake", policy=policy_path))
    with http:
        yield client, http, state


@pytest.mark.parametrize("budget", [4, 16])
def test_policy_chooses_under_a_budget_header_exactly_as_the_library(with_policy, policy_path, budget):
    from ttscale.allocation.policy import AllocationPolicy

    client, _, _ = with_policy
    policy = AllocationPolicy.load(policy_path)
    if True:
        response = ask(client, model="policy/fake", seed=7, extra_headers={"X-TTS-Budget-Samples": str(budget)},
                       extra_body={"ttscale": {"candidates": True}})
        backend = FakeBackend("fake")

        async def direct():
            plan = await policy.allocate_async(QUESTION, backend, budget_samples=budget)
            return plan, await plan.run(backend, seed=7)

        plan, trace = asyncio.run(direct())
        block = response.model_extra["ttscale"]
        assert block["policy"]["bin"] == plan.bin and block["policy"]["bin_source"] == plan.bin_source
        assert block["policy"]["budget_samples"] == budget and block["policy"]["setting"] == plan.describe()
        assert block["strategy"] == plan.setting.strategy and block["options"] == plan.setting.options
        assert response.usage.prompt_tokens == trace.cost.prompt_tokens
        assert response.usage.completion_tokens == trace.cost.generated_tokens  # the probe's samples included
        assert block["flops"] == trace.cost.flops and block["structural_flops"] == trace.cost.structural_flops
        assert len(block["candidates"]) <= budget
        assert block["policy"]["budget"]["samples_drawn"] == len(trace.candidates)


def test_policy_budget_from_extra_body_and_its_refusals(with_policy):
    client, _, _ = with_policy
    block = ask(client, seed=1, extra_body={"ttscale": {"budget_flops": 1e12}}).model_extra["ttscale"]
    assert block["source"] == "extra_body" and block["policy"]["budget_flops"] == 1e12
    assert "policy/fake" in [m.id for m in client.models.list()]
    cases = [
        ({"extra_headers": {"X-TTS-Budget-Flops": "nan"}}, "X-TTS-Budget-Flops", "finite"),
        ({"extra_headers": {"X-TTS-Budget-Flops": "inf"}}, "X-TTS-Budget-Flops", "finite"),
        ({"extra_headers": {"X-TTS-Budget-Flops": "1"}}, "X-TTS-Budget-Flops", "below the cheapest"),
        ({"extra_headers": {"X-TTS-Budget-Samples": "0"}}, "X-TTS-Budget-Samples", "finite"),
        ({"extra_headers": {"X-TTS-Budget-Samples": "two"}}, "X-TTS-Budget-Samples", "whole number"),
        ({"extra_body": {"ttscale": {"budget_flops": 1e12, "strategy": "best-of-n"}}}, "ttscale.budget_flops", "both"),
        ({"extra_body": {"ttscale": {"budget_flops": 1e12, "n": 4}}}, "ttscale.n", "policy chooses"),
        ({"extra_headers": {"X-TTS-Budget-Samples": "8"}, "max_tokens": 7}, "max_tokens", "fitted"),
        ({"model": "policy/fake"}, "budget_flops", "needs a per-prompt budget"),
    ]
    for kwargs, param, words in cases:
        model = kwargs.pop("model", "fake")
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, model=model, **kwargs)
        assert caught.value.body["param"] == param, kwargs
        assert words in caught.value.body["message"], (kwargs, caught.value.body["message"])


def test_a_policy_for_another_model_is_refused_at_start(policy_path):
    from ttscale.errors import TtscaleError

    with pytest.raises(TtscaleError, match="fitted for model 'fake'"):
        asyncio.run(ServerState.start(ServeSettings(backend="fake", model="other", policy=policy_path)))


# --- an upstream server that goes away; SIGTERM -------------------------------------------------


def start_serve(*args: str, port: int) -> subprocess.Popen:
    """`ttscale serve` as a user starts it, on 127.0.0.1; returns once /health answers (stderr is piped)."""
    return start_server(serve_command(port, *args), port, timeout=60)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return process.returncode, err


def test_a_dead_upstream_gives_503_and_the_proxy_serves_again_once_it_is_back():
    """--backend openai over an upstream (here ttscale serve on the fake backend, which speaks the
    same API): upstream down, 503 in OpenAI's shape and the proxy stays up; upstream back, 200."""
    upstream_port = free_port()
    settings = ServeSettings(backend="openai", model="fake", backend_options={
        "base_url": f"http://127.0.0.1:{upstream_port}/v1", "max_retries": 0, "num_params": 1_000_000, "vllm_extensions": False})
    client, http, _ = make_client(settings)
    with http:
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client, seed=1)
        assert caught.value.status_code == 503 and caught.value.body["code"] == "upstream_unavailable"
        assert "unavailable" in caught.value.body["message"]
        assert http.get("/health").status_code == 200
        upstream = start_serve("--backend", "fake", "--model", "fake", port=upstream_port)
        try:
            response = ask(client, seed=1, extra_body={"ttscale": {"n": 2}})
            assert response.usage.completion_tokens == 2 * COMPLETION_TOKENS
            assert response.usage.prompt_tokens == 2 * PROMPT_TOKENS  # n=2 split in two requests upstream (no token ids)
        finally:
            assert stop(upstream)[0] == 0
        with pytest.raises(openai.APIStatusError) as caught:
            ask(client, seed=1)
        assert caught.value.status_code == 503


def test_sigterm_finishes_the_request_in_flight_and_exits_0():
    # The fake backend takes 10 s: a wide window, so that seeing the request in flight, signalling,
    # and seeing new connections refused all happen while it runs, however loaded the machine.
    port = free_port()
    server = start_serve("--backend", "fake", "--model", "fake", "--backend-option", "delay_s=10", port=port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    result = {}

    def request():
        result["response"] = ask(client, seed=1, extra_body={"ttscale": {"n": 2}})

    thread = threading.Thread(target=request)
    thread.start()
    wait_until_in_flight(f"http://127.0.0.1:{port}/metrics", thread, timeout_s=60)
    server.send_signal(signal.SIGTERM)
    refused = None
    while refused is None and thread.is_alive():  # no new requests once it is stopping
        try:
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=5).models.list()
            time.sleep(0.05)  # not stopped listening yet
        except openai.APIConnectionError as error:
            refused = error
        except openai.APIStatusError as error:  # accepted while closing, and turned away
            assert error.status_code == 503, error
            refused = error
    assert refused is not None, "new connections were still accepted while the last request finished"
    thread.join(timeout=60)
    _, err = server.communicate(timeout=30)
    assert result["response"].usage.completion_tokens == 2 * COMPLETION_TOKENS
    assert server.returncode == 0, err
    assert "Traceback" not in err


def test_cli_refuses_user_mistakes_in_one_line(tmp_path):
    port = free_port()
    for args, words in [
        (["--backend", "fake", "--n", "0"], "greater than or equal to 1"),
        (["--backend", "fake", "--strategy", "bestofn"], "Did you mean 'best-of-n'"),
        (["--backend", "fake", "--policy", str(tmp_path / "missing.json")], "does not exist"),
        (["--backend", "fake", "--host", "0.0.0.0"], "TTSCALE_API_KEY is unset"),
        (["--backend", "fake", "--base-url", "http://x/v1"], "--backend openai"),
    ]:
        env = {k: v for k, v in os.environ.items() if k != "TTSCALE_API_KEY"}
        result = subprocess.run([sys.executable, "-m", "ttscale.cli", "serve", "--port", str(port), *args],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and words in " ".join(result.stderr.split()), (args, result.stderr)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "ttscale.cli", "serve", "--backend", "fake", "--port", str(taken)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_verifier_tokens_are_in_usage_and_the_block(fake):
    """A judge verifier on the same backend: its tokens are counted apart and in total_tokens."""
    from ttscale.registry import verifiers
    from ttscale.grading.math_answer import DEFAULT_VERIFIER

    client, _, _ = fake
    response = ask(client, seed=11, extra_body={"ttscale": {"n": 2, "selection": "max-score", "verifier": "llm-judge-prm"}})
    problem_backend = FakeBackend("fake")
    judge = verifiers.create("llm-judge-prm", benchmark=DEFAULT_VERIFIER)
    from ttscale.serve.protocol import chat_problem

    problem = chat_problem((ChatMessage(role="user", content=QUESTION),))
    trace = asyncio.run(solve(problem, backend=problem_backend, options={"n": 2, "selection": "max-score"}, verifier=judge,
                              params=SampleParams(max_tokens=256), seed=11))
    usage, block = response.usage, response.model_extra["ttscale"]
    assert trace.cost.verifier_tokens > 0 and usage.verifier_tokens == trace.cost.verifier_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens + trace.cost.verifier_tokens
    assert (usage.prompt_tokens, usage.completion_tokens) == (trace.cost.prompt_tokens, trace.cost.generated_tokens)
    assert block["verifier_calls"] == trace.cost.verifier_calls >= 1 and block["verifier_flops"] == trace.cost.verifier_flops
    assert block["engine_calls"] == trace.cost.calls + trace.cost.verifier_calls
    assert block["flops"] == trace.cost.flops and block["verifier"] == "llm-judge-prm" and block["selection"] == "max-score"


def test_a_step_search_runs_with_a_verifier(fake):
    client, _, _ = fake
    response = ask(client, model="beam-search/fake", seed=3,
                   extra_body={"ttscale": {"n": 4, "verifier": "scripted-prm", "options": {"beam_width": 2, "max_steps": 3},
                                           "candidates": True}})
    block = response.model_extra["ttscale"]
    assert block["strategy"] == "beam-search" and block["options"] == {"n": 4, "beam_width": 2, "max_steps": 3}
    assert response.usage.completion_tokens == block["cost"]["generated_tokens"] > 0
    assert block["engine_calls"] >= 2 and len(block["candidates"]) >= 1
