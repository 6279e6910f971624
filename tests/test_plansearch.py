"""PlanSearch on the fake backend: observations, then one plan per subset of them, then one
program per plan, in that order and number; every call metered; its programs go through the
code rules; it sees only the blind problem."""

import pytest

from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.humaneval import HumanEvalBenchmark
from ttscale.context import SolveContext
from ttscale.registry import strategies
from ttscale.strategies.plansearch import observation_subsets, parse_observations
from ttscale.types import SampleParams


def fenced(body: str) -> str:
    return f"Here it is:\n```python\n{body}\n```\n"


RIGHT = fenced("def add(x, y):\n    return x + y")
WRONG = fenced("def add(x, y):\n    return x - y")
# The reply continues the "1." the strategy starts it with.
OBSERVATIONS = " Order does not matter.\n2) The sign is what matters.\n- Inputs are integers.\nDone."
KEY = "Order does not matter."  # a plan that uses this observation leads to the right program


def stage(prompt: str) -> str:
    if "Brainstorm a numbered list" in prompt:
        return "observations"
    if "write a natural-language solution" in prompt:
        return "plan"
    return "program"


def respond(prompt: str) -> str:
    kind = stage(prompt)
    if kind == "observations":
        return OBSERVATIONS
    if kind == "plan":
        return "PLAN-USES-KEY" if KEY in prompt else "PLAN-WITHOUT-KEY"
    return RIGHT if "PLAN-USES-KEY" in prompt else WRONG


@pytest.fixture(scope="module")
def humaneval():
    benchmark = HumanEvalBenchmark()
    return benchmark, next(p for p in benchmark.load() if p.id == "HumanEval/53")


async def run(humaneval, **options):
    benchmark, problem = humaneval
    prompts = []

    def responder(prompt, index):
        prompts.append(prompt)
        return respond(prompt)

    ctx = SolveContext.for_problem(problem, backend=FakeBackend(responder=responder), answers=benchmark,
                                   params=SampleParams(max_tokens=4096), seed=0)
    trace = await ctx.solve(strategies.create("plansearch", test_timeout_s=1.0, **options), problem)
    return trace, prompts


def test_observations_are_parsed_from_a_numbered_or_bulleted_list():
    assert parse_observations("1." + OBSERVATIONS, 10) == ["Order does not matter.", "The sign is what matters.", "Inputs are integers."]
    assert parse_observations("Hints:\n1." + OBSERVATIONS, 2) == ["Order does not matter.", "The sign is what matters."]
    assert parse_observations("no list here", 4) == []
    assert observation_subsets(3, 2) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2)]


async def test_calls_go_observations_then_plans_then_programs_and_are_all_metered(humaneval):
    trace, prompts = await run(humaneval, n=8, observations=3, max_combination=2)
    # 3 observations, subsets of size 0..2: 1 + 3 + 3 = 7 plans (fewer than N = 8), one program each
    assert [stage(p) for p in prompts] == ["observations"] + ["plan"] * 7 + ["program"] * 7
    assert trace.cost.calls == 15 and len(trace.candidates) == 7
    assert prompts[0].endswith("assistant: 1.")  # the reply was started as a numbered list
    assert trace.metadata["observations"] == parse_observations("1." + OBSERVATIONS, 3)
    assert trace.metadata["observations_text"] == OBSERVATIONS
    subsets = trace.metadata["plan_observations"]
    assert sorted(map(tuple, subsets)) == sorted(observation_subsets(3, 2))
    # each plan prompt shows exactly its subset; each program prompt carries its plan
    for subset, plan_prompt in zip(subsets, prompts[1:8]):
        shown = [o for o in trace.metadata["observations"] if f" - {o}" in plan_prompt]
        assert shown == [trace.metadata["observations"][i] for i in subset]
        assert (not subset) == ("No observations are necessary" in plan_prompt)
    assert [("PLAN-USES-KEY" in p) for p in prompts[8:]] == [0 in s for s in subsets]
    assert trace.metadata["execution"]["runs"] == 7


async def test_n_caps_the_plans(humaneval):
    trace, prompts = await run(humaneval, n=4, observations=3, max_combination=2)
    assert [stage(p) for p in prompts] == ["observations"] + ["plan"] * 4 + ["program"] * 4
    assert trace.cost.calls == 9 and len(trace.candidates) == 4


@pytest.mark.parametrize("rule", ["pass-examples", "first"])
async def test_its_programs_are_selected_by_the_rule_given(humaneval, rule):
    trace, _ = await run(humaneval, n=8, observations=3, max_combination=2, selection=rule)
    right = HumanEvalBenchmark().extract_answer(RIGHT)
    uses_key = [0 in s for s in trace.metadata["plan_observations"]]
    assert trace.chosen_rule == rule
    assert trace.selections["pass-examples"] == right  # the first program whose plan used the key
    assert trace.selections["first"] == (right if uses_key[0] else HumanEvalBenchmark().extract_answer(WRONG))
    assert any(uses_key) and not all(uses_key)  # the choice was between right and wrong programs


async def test_the_strategy_sees_no_hidden_test(humaneval):
    benchmark, problem = humaneval
    hidden = benchmark._rows()[problem.id]["test"]
    trace, prompts = await run(humaneval, n=2)
    assert "def check(candidate)" in hidden
    assert not any("def check(candidate)" in p or "add(7, 5)" in p or problem.answer.strip() in p for p in prompts)
