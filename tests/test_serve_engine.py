"""`ttscale serve` with the real engine (embedded SmolLM2-135M), driven by the official openai client.

Two servers run the same client tests: `--backend vllm` (the in-process engine) and
`--backend openai` over a real vLLM OpenAI server (conftest's `vllm_server`). A third vLLM
server of this module's own is killed mid-request (503, the proxy stays up) and started again
(the proxy serves again). The fast mirror of every test is tests/test_serve.py (fake backend).
Generations are short; nothing asserts a model's wording or timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from ttscale.testing import free_port, serve_command, start_server, wait_until_in_flight

sys.path.insert(0, str(Path(__file__).parent))
from _allocation_data import write_run  # noqa: E402

pytestmark = pytest.mark.engine

MODEL = "smollm2-135m"
KEY = "engine-test-key"
QUESTION = "What is 12 + 7? Put the final answer in \\boxed{}."
LONG = "Write a long, detailed story of at least 600 words about a lighthouse keeper and a storm."


def start_serve(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`ttscale serve ARGS` on 127.0.0.1 with the API key set; returns once /health answers."""
    port = free_port()
    process = start_server(serve_command(port, *args), port, log=log, env={**os.environ, "TTSCALE_API_KEY": KEY}, timeout=600)
    return process, f"http://127.0.0.1:{port}/v1"


def stop(process: subprocess.Popen) -> int:
    """SIGTERM, as a service manager stops it; the exit code."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    """A small policy the library accepts, for this model: fitted on synthetic best-of-n runs."""
    from ttscale.allocation.fit import fit_policy

    root = tmp_path_factory.mktemp("serve-policy")
    levels = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    run = write_run(root, "bon", [levels[i % len(levels)] for i in range(40)], n=8, model=MODEL)
    return fit_policy([run], k0=2).save(root / "policy.json")


SERVE_ARGS = ["--model", MODEL, "--concurrency", "8", "--max-tokens", "48", "--max-tokens-limit", "256"]


@pytest.fixture(scope="module")
def embedded_server(policy_file, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-vllm") / "serve.log"
    process, url = start_serve(["--backend", "vllm", "--policy", str(policy_file), *SERVE_ARGS], log)
    yield process, url
    if process.poll() is None:
        stop(process)


@pytest.fixture(scope="module")
def proxy_server(policy_file, vllm_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-openai") / "serve.log"
    process, url = start_serve(["--backend", "openai", "--base-url", vllm_server, "--policy", str(policy_file), *SERVE_ARGS], log)
    yield process, url
    if process.poll() is None:
        stop(process)


@pytest.fixture(params=["vllm", "openai"])
def client(request):
    _, url = request.getfixturevalue("embedded_server" if request.param == "vllm" else "proxy_server")
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=300)


def ask(client, model=MODEL, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], **kwargs)


def check_usage(response, candidates) -> None:
    """usage counts every candidate's tokens; FLOPs are at least 2·P per token computed."""
    usage, block = response.usage, response.model_extra["ttscale"]
    assert usage.completion_tokens == sum(c["num_tokens"] for c in candidates) >= 1
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    computed = usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens + usage.completion_tokens
    assert block["flops"] >= 2 * 134_000_000 * computed and block["flops"] == block["cost"]["flops"]
    assert block["cost_known"] is True


def test_best_of_n_via_extra_body(client):
    response = ask(client, max_tokens=32, seed=1, extra_body={"ttscale": {"strategy": "best-of-n", "n": 2, "candidates": True}})
    block = response.model_extra["ttscale"]
    assert (block["strategy"], block["options"], block["source"]) == ("best-of-n", {"n": 2}, "extra_body")
    assert len(block["candidates"]) == 2 and all(c["num_tokens"] <= 32 for c in block["candidates"])
    assert block["engine_calls"] == 1
    assert response.choices[0].message.content in [c["text"] for c in block["candidates"]]
    check_usage(response, block["candidates"])


def test_best_of_n_via_model_prefix(client):
    response = ask(client, model=f"best-of-n-2/{MODEL}", n=2, max_tokens=32, seed=2, extra_body={"ttscale": {"candidates": True}})
    block = response.model_extra["ttscale"]
    assert (block["strategy"], block["options"], block["source"]) == ("best-of-n", {"n": 2}, "model")
    assert len(response.choices) == 2 and response.model == f"best-of-n-2/{MODEL}"
    check_usage(response, block["candidates"])


def test_policy_with_a_budget_header(client):
    response = ask(client, seed=3, extra_headers={"X-TTS-Budget-Samples": "4"}, extra_body={"ttscale": {"candidates": True}})
    block = response.model_extra["ttscale"]
    policy = block["policy"]
    assert policy["budget_samples"] == 4 and policy["bin_source"] in ("predicted", "unprobed")
    assert policy["bin_source"] == "unprobed" or 0 <= policy["bin"] < 5
    assert 1 <= policy["budget"]["samples_drawn"] == len(block["candidates"]) <= 4
    assert block["strategy"] == "best-of-n" and block["options"]["n"] <= 4
    check_usage(response, block["candidates"])  # the probe's samples are among them (best-of-n reuses them)


def test_streaming_with_usage(client):
    chunks = list(ask(client, max_tokens=32, seed=4, stream=True, stream_options={"include_usage": True},
                      extra_body={"ttscale": {"n": 2}}))
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    last = chunks[-1]
    assert last.choices == [] and 1 <= last.usage.completion_tokens <= 2 * 32
    assert last.model_extra["ttscale"]["options"] == {"n": 2}


def test_401_and_400s(client):
    anonymous = openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(anonymous, max_tokens=8)
    for kwargs, param in [
        ({"extra_body": {"ttscale": {"n": 0}}}, "ttscale.n"),
        ({"extra_body": {"ttscale": {"strategy": "bestofn"}}}, "ttscale.strategy"),
        ({"extra_headers": {"X-TTS-Budget-Flops": "1"}}, "X-TTS-Budget-Flops"),  # below the cheapest setting
        ({"extra_headers": {"X-TTS-Budget-Flops": "nan"}}, "X-TTS-Budget-Flops"),
        ({"max_tokens": 100_000}, "max_tokens"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, **kwargs)
        assert caught.value.body["param"] == param


def test_models_and_health(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL and f"best-of-n/{MODEL}" in ids and f"policy/{MODEL}" in ids
    health = httpx.get(str(client.base_url).rstrip("/").removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["model"] == MODEL


# --- an upstream killed mid-request, then back ----------------------------------------------------


def vllm_server_command(port: int) -> list[str]:
    """conftest's vLLM server command, with a KV cache sized for this test by ttscale.machine."""
    from ttscale.machine import choose_cpu_dtype, plan_kv_cache
    from ttscale.models import prepare_model
    from ttscale.modelshape import load_shape

    model = prepare_model(MODEL)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model.path,
               "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", "4096", "--enable-prefix-caching", "--enable-prompt-tokens-details"]
    if not has_gpu():
        dtype = choose_cpu_dtype().dtype
        plan = plan_kv_cache(load_shape(model.path), dtype=dtype, max_model_len=4096, sequences=4, max_tokens=256)
        command += ["--dtype", dtype, "--enforce-eager", "--kv-cache-memory-bytes", str(plan.cache_bytes),
                    "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096"]
    return command


def has_gpu() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def start_upstream(port: int, log: Path) -> subprocess.Popen:
    return start_server(vllm_server_command(port), port, log=log, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"},
                        timeout=600, own_session=True)


def wait_until_generating(port: int, thread: threading.Thread, outcome: dict, timeout_s: float = 300) -> None:
    """Until vLLM's server reports a running request (its Prometheus gauge), while `thread` waits on it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert thread.is_alive(), f"the request finished before the upstream could be killed: {outcome}"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        running = [line for line in metrics.splitlines() if line.startswith("vllm:num_requests_running")]
        if any(float(line.rsplit(" ", 1)[1]) > 0 for line in running):
            return
        time.sleep(0.05)
    pytest.fail("the upstream never started generating")


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the server and its engine-core child (its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def test_upstream_killed_mid_request_gives_503_and_the_proxy_serves_again(tmp_path):
    port = free_port()
    log = tmp_path / "upstream.log"
    upstream = start_upstream(port, log)
    proxy = None
    try:
        proxy, url = start_serve(["--backend", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", MODEL,
                                  "--backend-option", "max_retries=1", "--backend-option", "backoff_s=0.5"], tmp_path / "proxy.log")
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=300)
        assert ask(client, max_tokens=8, seed=1).usage.completion_tokens >= 1  # it works with the upstream up
        outcome: dict = {}

        def long_request():
            try:
                outcome["response"] = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=256, temperature=1.0, seed=5,
                    extra_body={"ttscale": {"n": 4}, "ignore_eos": True})  # 4 x 256 tokens: still running when seen
            except openai.APIStatusError as error:
                outcome["error"] = error

        thread = threading.Thread(target=long_request)
        thread.start()
        # Kill as soon as the upstream says it is generating: a fixed sleep was a race with the
        # machine's speed (on an idle fast machine four short samples could be done by then).
        wait_until_generating(port, thread, outcome)
        kill_group(upstream)
        thread.join(timeout=120)
        assert "error" in outcome, "the request in flight did not fail when its upstream died"
        error = outcome["error"]
        assert error.status_code == 503 and error.body["code"] == "upstream_unavailable"
        with pytest.raises(openai.APIStatusError) as caught:  # a new request while it is down
            ask(client, max_tokens=8)
        assert caught.value.status_code == 503
        assert httpx.get(url.replace("/v1", "/health"), timeout=10).status_code == 200  # the proxy stays up
        upstream = start_upstream(port, log)
        response = ask(client, max_tokens=8, seed=2)
        assert response.usage.completion_tokens >= 1  # and serves again
        assert stop(proxy) == 0
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.kill()
        kill_group(upstream)


def test_sigterm_stops_the_engine_server_with_exit_0(embedded_server):
    process, url = embedded_server
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=300)
    outcome: dict = {}
    # ignore_eos: both samples run their 48 tokens, so the request is still in flight when seen there.
    thread = threading.Thread(target=lambda: outcome.update(
        response=ask(client, max_tokens=48, seed=6, extra_body={"ttscale": {"n": 2}, "ignore_eos": True})))
    thread.start()
    wait_until_in_flight(url.replace("/v1", "/metrics"), thread)
    assert stop(process) == 0
    thread.join(timeout=60)
    assert outcome["response"].usage.completion_tokens >= 1  # the request in flight finished
