from ttscale.backends.fake import FakeBackend
from ttscale.cost import CostMeter
from ttscale.types import GenRequest, SampleParams


async def test_meter_counts_prompt_once_per_request_and_every_generated_token():
    backend = FakeBackend(script=["a b c", "d e"], num_params=1000, block_size=100)
    meter = CostMeter(backend)
    await meter.generate([GenRequest(prompt="x y z w", params=SampleParams(n=2))])
    cost = meter.cost
    assert cost.calls == 1
    assert cost.prompt_tokens == 4  # prefilled once, not once per sample
    assert cost.generated_tokens == 3 + 2
    assert cost.flops == 2 * 1000 * (4 + 5)


async def test_cached_prompt_tokens_cost_no_prefill_flops():
    backend = FakeBackend(script=["a"], num_params=10, block_size=2)
    meter = CostMeter(backend)
    request = GenRequest(prompt="p q r s t", params=SampleParams())
    await meter.generate([request])
    await meter.generate([request])
    assert meter.cost.prompt_tokens == 10
    assert meter.cost.cached_prompt_tokens == 4  # two full blocks of 2 seen before
    assert meter.cost.flops == 2 * 10 * ((10 - 4) + 2)
