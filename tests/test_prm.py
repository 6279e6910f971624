"""The vllm-prm verifier up to the vLLM edge: the request it builds and how it reads pooled rows.

It was not run against a real PRM: a 7B PRM needs a GPU, which this project's machines lack.
"""

import pytest

from ttscale.cost import CostMeter
from ttscale.types import ChatMessage, PoolResult, Problem
from ttscale.verifiers.prm import VLLMPRM


class FakePoolingBackend:
    """Returns one [negative, positive] row per step tag, positive = 0.1 * (tag number)."""

    def __init__(self):
        self.model = type("M", (), {"name": "fake-prm", "num_params": 50, "shape": None})()
        self.requests = []

    async def pool(self, requests):
        self.requests += list(requests)
        results = []
        for request in requests:
            steps = request.prompt[-1].content.count("<extra_0>")
            rows = tuple((1 - 0.1 * (i + 1), 0.1 * (i + 1)) for i in range(steps))
            results.append(PoolResult(data=rows, prompt_tokens=20 + steps, cached_prompt_tokens=4))
        return results


@pytest.fixture
def prm(monkeypatch):
    backend = FakePoolingBackend()
    monkeypatch.setattr("ttscale.verifiers.prm.VLLMPoolingBackend", lambda **kwargs: backend)
    return VLLMPRM(model="fake-prm"), backend


async def test_vllm_prm_joins_steps_with_the_step_tag_and_reads_the_positive_column(prm):
    verifier, backend = prm
    problem = Problem(id="p", question="1+1?", prompt=(ChatMessage(role="user", content="1+1?"),))
    meter = CostMeter(backend, role="verifier")
    scores = await verifier.score_steps(problem, [["a", "b", "c"], [], ["x"]], meter)
    assert scores == [pytest.approx([0.1, 0.2, 0.3]), [], pytest.approx([0.1])]
    system, user, assistant = backend.requests[0].prompt
    assert user.content == "1+1?" and assistant.role == "assistant"
    assert assistant.content == "a<extra_0>b<extra_0>c<extra_0>"
    assert len(backend.requests) == 2  # the empty solution is not sent
    cost = meter.cost
    assert cost.verifier_calls == 2 and cost.verifier_tokens == 23 + 21
    assert cost.verifier_flops > 0 and cost.generated_tokens == 0


async def test_vllm_prm_refuses_a_model_that_does_not_pool_per_step(prm):
    verifier, backend = prm
    verifier.step_tag = "<other>"  # the fake counts <extra_0>, so rows no longer match steps
    problem = Problem(id="p", question="q", prompt=(ChatMessage(role="user", content="q"),))
    with pytest.raises(ValueError, match="step scores for 2 steps"):
        await verifier.score_steps(problem, [["a", "b"]], CostMeter(backend, role="verifier"))
