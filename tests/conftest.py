"""Shared fixtures. The vLLM engine starts once per test session: it takes about a minute."""

import pytest_asyncio


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_backend():
    """The in-process vLLM backend with the embedded SmolLM2, started once and shared by every
    engine test (mark them `engine` and `asyncio(loop_scope="session")`)."""
    from ttscale.backends.vllm import VLLMBackend

    backend = VLLMBackend("smollm2-135m")
    await backend.start()
    yield backend
    await backend.close()
