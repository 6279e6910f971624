"""Self-debug on the fake backend: it stops after the round whose program passes the visible
tests, feeds back the failing assert and what the program really gave (cut to a bound), never
runs more than D rounds per chain or N programs in all, meters every call, and sees only the
blind problem."""

import pytest

from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.humaneval import HumanEvalBenchmark
from ttscale.code_tests import visible_tests_of
from ttscale.context import SolveContext
from ttscale.errors import ConfigError
from ttscale.registry import strategies
from ttscale.strategies.self_debug import FIX_REQUEST, SelfDebug
from ttscale.types import SampleParams


def fenced(body: str) -> str:
    return f"Here it is:\n```python\n{body}\n```\n"


RIGHT = fenced("def add(x, y):\n    return x + y")
WRONG = fenced("def add(x, y):\n    return x - y")
CRASHING = fenced("def add(x, y):\n    raise ValueError('no such luck')")


@pytest.fixture(scope="module")
def humaneval():
    benchmark = HumanEvalBenchmark()
    problems = {p.id: p for p in benchmark.load()}
    return benchmark, problems["HumanEval/53"]  # add(x, y): visible tests add(2, 3) == 5, add(5, 7) == 12


async def run(humaneval, responder, **options):
    """Solve HumanEval/53 with a scripted model; returns the trace and every prompt it was sent."""
    benchmark, problem = humaneval
    prompts = []

    def respond(prompt, index):
        prompts.append(prompt)
        return responder(prompt, len(prompts))

    ctx = SolveContext.for_problem(problem, backend=FakeBackend(responder=respond), answers=benchmark,
                                   params=SampleParams(max_tokens=4096), seed=0)
    trace = await ctx.solve(SelfDebug(test_timeout_s=1.0, **options), problem)
    return trace, prompts


async def test_stops_after_the_round_whose_program_passes_and_feeds_back_the_failing_assert(humaneval):
    trace, prompts = await run(humaneval, lambda prompt, call: WRONG if call == 1 else RIGHT, n=4, rounds=3)
    assert len(prompts) == 2 and trace.cost.calls == 2  # wrong, then fixed: rounds 3 and 4 never asked for
    feedback = prompts[1].rsplit("user: ", 1)[1]
    assert "The code above fails the given unit tests:" in feedback
    assert "assert add(2, 3) == 5  # Real Execution Output: -1" in feedback
    assert "assert add(5, 7) == 12  # Real Execution Output: -2" in feedback
    assert FIX_REQUEST in feedback
    assert "assistant: " + WRONG.strip() in prompts[1]  # the failed program is in the dialogue
    assert trace.metadata["attempts"] == [2] and trace.metadata["passed_at"] == [2]
    assert [c.text for c in trace.candidates] == [RIGHT]  # the chain's final program
    assert trace.selections["pass-examples"] == trace.candidates[0].answer
    assert trace.metadata["execution"]["runs"] == 2  # both rounds' runs are counted
    assert len(trace.metadata["code_exec"]) == 1


async def test_a_crash_is_fed_back_with_its_exception_and_the_chain_stops_at_d_rounds(humaneval):
    trace, prompts = await run(humaneval, lambda prompt, call: CRASHING, n=3, rounds=2)
    assert len(prompts) == 3 and trace.cost.calls == 3  # the first program and D = 2 fixes, no more
    assert "assert add(2, 3) == 5  # Raised: ValueError: no such luck" in prompts[1]
    assert prompts[2].count("# Raised: ValueError") == 4  # the dialogue keeps both rounds' feedback
    assert trace.metadata["attempts"] == [3] and trace.metadata["passed_at"] == [None]
    assert trace.metadata["execution"]["runs"] == 3
    assert trace.selections["pass-examples"] == trace.candidates[0].answer  # nothing passed: the first


async def test_feedback_is_cut_to_its_bound(humaneval):
    trace, prompts = await run(humaneval, lambda prompt, call: CRASHING, n=2, rounds=1, feedback_chars=60)
    feedback = prompts[1].rsplit("user: ", 1)[1]
    tests_part = feedback.split("\n\n" + FIX_REQUEST)[0]
    assert len(tests_part) <= 60 and tests_part.endswith(" ...")
    assert tests_part.startswith("The code above fails the given unit tests:")


async def test_missing_code_is_said_and_chains_never_exceed_n_programs(humaneval):
    trace, prompts = await run(humaneval, lambda prompt, call: "I cannot write this.", n=8, ratio="4:2")
    assert len(prompts) == 8 and trace.cost.calls == 8  # 2 chains x 4 attempts, none passing
    assert all("has no Python code block" in p for p in prompts[2:]) and len(trace.candidates) == 2
    assert trace.metadata["attempts"] == [4, 4] and trace.metadata["chains"] == 2


async def test_chains_run_in_parallel_and_the_rule_picks_among_their_finals(humaneval):
    # Whichever chain asks first gets the right program; the other is wrong, then gives up.
    trace, prompts = await run(humaneval, lambda prompt, call: RIGHT if call == 1 else WRONG, n=4, ratio="2:2")
    assert len(prompts) == 3 and trace.cost.calls == 3  # one chain stops at once, the other uses its round
    assert sorted(trace.metadata["attempts"]) == [1, 2]
    right = HumanEvalBenchmark().extract_answer(RIGHT)
    assert trace.selections["pass-examples"] == right
    assert trace.chosen_rule == "pass-examples"


async def test_the_strategy_sees_no_hidden_test(humaneval):
    benchmark, problem = humaneval
    hidden = benchmark._rows()[problem.id]["test"]  # the grading tests stay on the benchmark
    assert "assert candidate(" in hidden
    trace, prompts = await run(humaneval, lambda prompt, call: WRONG, n=2, rounds=1)
    visible = {t.assertion for t in visible_tests_of(problem.metadata)}  # add(2, 3) == 5 is both: the prompt shows it
    hidden_asserts = [a for line in hidden.splitlines() if "assert" in line
                      if (a := line.strip().replace("candidate(", "add(")) not in visible]
    shown = [p for p in prompts if any(a in p for a in hidden_asserts) or "def check(candidate)" in p]
    assert hidden_asserts and not shown
    assert problem.answer.strip() not in "".join(prompts)  # nor the canonical solution


def test_options_are_checked_with_a_one_line_error():
    assert strategies.create("self-debug", n=8, rounds=3).shape == (4, 2)
    assert strategies.create("self-debug", n=6, ratio="3:2").shape == (3, 2)
    with pytest.raises(ConfigError, match="rounds=2.*n is 8"):
        strategies.create("self-debug", n=8, rounds=2)
    with pytest.raises(ConfigError, match="ratio 4:2 means 3 rounds, but rounds is 1"):
        strategies.create("self-debug", n=8, ratio="4:2", rounds=1)
