"""One contract, every backend: fake, vllm (in-process) and openai (a real vLLM server on loopback)."""

import logging

import pytest
import pytest_asyncio

from ttscale.backends.fake import FakeBackend, render_prompt
from ttscale.backends.openai_http import OpenAIBackend
from ttscale.errors import TtscaleError
from ttscale.types import ChatMessage, GenRequest, SampleParams

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUESTION = (ChatMessage(role="user", content="What is 7 + 5? Think step by step."),)
BACKENDS = ["fake", pytest.param("vllm", marks=pytest.mark.engine), pytest.param("openai", marks=pytest.mark.engine)]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def openai_backend(vllm_server):
    backend = OpenAIBackend("smollm2-135m", base_url=vllm_server, max_retries=2, backoff_s=0.2)
    yield backend
    await backend.close()


class Subject:
    """A backend under test, with the tokenizer its model uses."""

    def __init__(self, backend, count_tokens, prompt_tokens):
        self.backend, self.count_tokens, self.prompt_tokens = backend, count_tokens, prompt_tokens

    async def one(self, **kwargs):
        [generation] = await self.backend.generate([GenRequest(**kwargs)])
        return generation


@pytest.fixture(params=BACKENDS)
def subject(request):
    if request.param == "fake":
        fake = FakeBackend()
        return Subject(fake, fake.count_tokens, lambda r: fake.count_tokens(render_prompt(r)))
    engine = request.getfixturevalue("vllm_backend")  # the tokenizer of the same model
    backend = engine if request.param == "vllm" else request.getfixturevalue("openai_backend")
    return Subject(backend, engine.count_tokens, lambda r: len(engine.prompt_token_ids(r)))


def texts(generation):
    return [c.text for c in generation.completions]


async def test_n_samples_and_a_fixed_seed_repeat(subject):
    params = SampleParams(n=3, max_tokens=16, temperature=1.0, seed=21)
    # Both requests find the prompt in the prefix cache. A cold and a warm cache compute the
    # prompt's KV differently (whole prefill vs cached blocks plus the rest), which in bfloat16
    # rounds differently and can change a sampled token (seen on an AVX512-BF16 CPU; float32 on
    # an AVX2 CPU repeated either way): the seed promises the same samples from the same state.
    await subject.one(prompt=QUESTION, params=SampleParams(max_tokens=1, seed=0))
    a = await subject.one(prompt=QUESTION, params=params)
    b = await subject.one(prompt=QUESTION, params=params)
    assert len(a.completions) == 3
    assert texts(a) == texts(b)


async def test_prompt_tokens_are_the_chat_template_applied_once(subject):
    request = GenRequest(prompt=QUESTION, prefix="Step 1: 7 + 5 = 12.\n\n", params=SampleParams(max_tokens=4, seed=1))
    generation = await subject.one(prompt=request.prompt, prefix=request.prefix, params=request.params)
    assert generation.prompt_tokens == subject.prompt_tokens(request)
    assert 0 <= generation.cached_prompt_tokens <= generation.prompt_tokens


async def test_stop_string_kept_in_a_step_continuation(subject):
    params = SampleParams(n=4, max_tokens=48, temperature=1.0, seed=1, stop=("\n\n",), include_stop_str=True)
    generation = await subject.one(prompt=QUESTION, prefix="Step 1: 7 + 5 = 12.\n\n", params=params)
    stopped = [c.text for c in generation.completions if c.finish_reason == "stop" and "\n\n" in c.text]
    assert stopped, texts(generation)
    assert all(text.endswith("\n\n") and text.count("\n\n") == 1 for text in stopped)


async def test_length_finish_and_token_counts(subject):
    generation = await subject.one(prompt=QUESTION, params=SampleParams(n=2, max_tokens=3, temperature=1.0, seed=4))
    for completion in generation.completions:
        assert completion.finish_reason == "length" and completion.num_tokens == 3
        # Re-encoding decoded text can merge tokens (" \n\n" vs " \n" + "\n"): allow one.
        assert abs(subject.count_tokens(completion.text) - completion.num_tokens) <= 1


async def test_empty_generation_is_a_valid_completion(subject):
    # After "The answer is" the next token starts with a space (the fake starts with "L"), so
    # generation stops before any text. OpenAI-style servers take at most 4 stop strings.
    stop = (" ", "\n", "L", ":")
    generation = await subject.one(prompt=QUESTION, prefix="The answer is", params=SampleParams(max_tokens=8, seed=2, stop=stop))
    [completion] = generation.completions
    assert completion.text == "" and completion.finish_reason == "stop"


@pytest.mark.engine
async def test_openai_unreachable_server_names_the_url():
    backend = OpenAIBackend("smollm2-135m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_s=0.01)
    with pytest.raises(TtscaleError, match=r"http://127.0.0.1:9/v1/chat/completions did not answer after 2 tries"):
        await backend.generate([GenRequest(prompt=QUESTION)])
    await backend.close()


@pytest.mark.engine
async def test_openai_timeout_and_bad_request(openai_backend, vllm_server):
    slow = OpenAIBackend("smollm2-135m", base_url=vllm_server, timeout_s=0.001, max_retries=0)
    with pytest.raises(TtscaleError, match="did not answer after 1 tries .*Timeout"):
        await slow.generate([GenRequest(prompt=QUESTION, params=SampleParams(max_tokens=64))])
    await slow.close()
    with pytest.raises(TtscaleError, match=r"rejected the request \(HTTP 400\)"):
        await openai_backend.generate([GenRequest(prompt=QUESTION, params=SampleParams(max_tokens=100_000))])


@pytest.mark.engine
async def test_openai_without_per_sample_counts_splits_n_and_says_so_once(vllm_server, caplog):
    plain = OpenAIBackend("smollm2-135m", base_url=vllm_server, vllm_extensions=False)
    with caplog.at_level(logging.WARNING, logger="ttscale.backends.openai_http"):
        [a] = await plain.generate([GenRequest(prompt=QUESTION, params=SampleParams(n=2, max_tokens=5, seed=3))])
        [b] = await plain.generate([GenRequest(prompt=QUESTION, params=SampleParams(n=2, max_tokens=5, seed=3))])
    await plain.close()
    assert len(a.completions) == 2 and all(c.num_tokens == 5 for c in a.completions)
    assert texts(a) == texts(b)
    assert sum("separate requests" in r.message for r in caplog.records) == 1


@pytest.fixture(params=["vllm_backend", "openai_backend"])
def engine_backend(request):
    return request.getfixturevalue(request.param)  # resolved here, outside the running loop


@pytest.mark.engine
async def test_logprobs_give_a_cumulative_logprob(engine_backend):
    [generation] = await engine_backend.generate([GenRequest(prompt=QUESTION, params=SampleParams(max_tokens=5, seed=1, logprobs=1))])
    [completion] = generation.completions
    assert completion.cumulative_logprob is not None and completion.cumulative_logprob < 0


@pytest.mark.engine
async def test_top_logprobs_list_alternatives_per_token(engine_backend):
    params = SampleParams(max_tokens=3, temperature=0.0, logprobs=5)
    [generation] = await engine_backend.generate([GenRequest(prompt=QUESTION, params=params)])
    [completion] = generation.completions
    assert len(completion.top_logprobs) == completion.num_tokens
    for alternatives in completion.top_logprobs:
        # Top 5 (plus the sampled token where it is not among them); token ids that decode to
        # the same text share one key, so there may be fewer.
        assert 1 <= len(alternatives) <= 6
        assert all(isinstance(token, str) and logprob <= 0 for token, logprob in alternatives.items())
    # Greedy: the first token is the most likely alternative, and it begins the text.
    first = completion.top_logprobs[0]
    best = max(first, key=first.get)
    assert completion.text.startswith(best.strip()) or completion.text.startswith(best)
