import pytest
from pydantic import ValidationError

from ttscale.types import ChatMessage, Cost, Generation, GenRequest, Problem, SampleParams, Trace, Completion


def test_problem_blind_hides_gold_answer():
    problem = Problem(id="p1", question="1+1?", prompt=(ChatMessage(role="user", content="1+1?"),), answer="2")
    blind = problem.blind()
    assert blind.answer is None
    assert blind.id == "p1" and blind.prompt == problem.prompt
    assert problem.answer == "2"  # the original is untouched (frozen)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"n": 0}, "n"), ({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p")],
)
def test_sample_params_errors_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        SampleParams(**kwargs)
    assert info.value.errors()[0]["loc"] == (field,)


def test_types_are_frozen_and_reject_unknown_fields():
    params = SampleParams()
    with pytest.raises(ValidationError):
        params.n = 3
    with pytest.raises(ValidationError) as info:
        SampleParams(nn=3)
    assert info.value.errors()[0]["loc"] == ("nn",)


def test_gen_request_rejects_empty_prompt():
    with pytest.raises(ValidationError) as info:
        GenRequest(prompt="")
    assert info.value.errors()[0]["loc"] == ("prompt",)


def test_generation_cached_cannot_exceed_prompt():
    with pytest.raises(ValidationError):
        Generation(completions=(), prompt_tokens=3, cached_prompt_tokens=4)


def test_trace_chosen_rule_must_be_applied_or_oracle():
    with pytest.raises(ValidationError):
        Trace(candidates=(), selections={"majority": "1"}, chosen_rule="first")
    assert Trace(candidates=(), selections={"majority": "1"}, chosen_rule="oracle").answer is None
    assert Trace(candidates=(), selections={"majority": "1"}, chosen_rule="majority").answer == "1"


def test_cost_adds_fieldwise():
    total = Cost(calls=1, prompt_tokens=10, generated_tokens=5, flops=1.0) + Cost(calls=2, cached_prompt_tokens=3, flops=2.5)
    assert total == Cost(calls=3, prompt_tokens=10, cached_prompt_tokens=3, generated_tokens=5, flops=3.5)
