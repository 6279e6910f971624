from ttscale.backends.fake import FakeBackend, render_prompt
from ttscale.types import ChatMessage, GenRequest, SampleParams

MESSAGES = (ChatMessage(role="user", content="What is 2 + 3?"),)


async def test_seeded_samples_repeat_and_differ_by_seed():
    backend = FakeBackend()
    params = SampleParams(n=6, seed=7)
    [a] = await backend.generate([GenRequest(prompt=MESSAGES, params=params)])
    [b] = await backend.generate([GenRequest(prompt=MESSAGES, params=params)])
    [c] = await backend.generate([GenRequest(prompt=MESSAGES, params=params.model_copy(update={"seed": 8}))])
    assert [x.text for x in a.completions] == [x.text for x in b.completions]
    assert [x.text for x in a.completions] != [x.text for x in c.completions]
    assert len(a.completions) == 6


async def test_answer_key_accuracy_extremes():
    always = FakeBackend(answer_key={"2 + 3": "5"}, accuracy=1.0)
    never = FakeBackend(answer_key={"2 + 3": "5"}, accuracy=0.0)
    [good] = await always.generate([GenRequest(prompt=MESSAGES, params=SampleParams(n=4, seed=1))])
    [bad] = await never.generate([GenRequest(prompt=MESSAGES, params=SampleParams(n=4, seed=1))])
    assert all(c.text.endswith("\\boxed{5}.") for c in good.completions)
    assert not any("\\boxed{5}" in c.text for c in bad.completions)


async def test_exact_token_counts_and_stop_and_length():
    backend = FakeBackend(script=["one two three.\n\nfour five"])
    [g] = await backend.generate([GenRequest(prompt="hi there", params=SampleParams(stop=("\n\n",), include_stop_str=True))])
    assert g.prompt_tokens == 2
    assert g.completions[0].text == "one two three.\n\n"
    assert g.completions[0].num_tokens == 4  # one, two, three, "."
    assert g.completions[0].finish_reason == "stop"
    [g] = await backend.generate([GenRequest(prompt="hi there", params=SampleParams(max_tokens=2))])
    assert g.completions[0].text == "one two"
    assert g.completions[0].finish_reason == "length"


async def test_prefix_is_continued_and_prefix_cache_counts_blocks():
    backend = FakeBackend(block_size=4)
    request = GenRequest(prompt=MESSAGES, prefix="Step 1: add.\n\n", params=SampleParams(seed=0))
    assert render_prompt(request).endswith("assistant: Step 1: add.\n\n")
    [first] = await backend.generate([request])
    [second] = await backend.generate([request])
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens == (second.prompt_tokens // 4) * 4 > 0
