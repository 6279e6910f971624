"""Shared fixtures. The vLLM engine starts once per test session: it takes about a minute."""

import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_backend():
    """The in-process vLLM backend with the embedded SmolLM2, shared by every engine test."""
    from ttscale.backends.vllm import VLLMBackend

    backend = VLLMBackend("smollm2-135m", max_model_len=2048)
    await backend.start()
    yield backend
    await backend.close()
