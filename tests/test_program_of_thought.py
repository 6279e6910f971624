"""Program of thought: scripted programs (right, wrong, crashing, looping, printing garbage,
hostile) on the fake backend; majority over the executed answers, and the cost and containment of
running them."""

import json
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.arithmetic import ArithmeticBenchmark
from ttscale.code_exec import EXECUTION, ProgramRun, printed_answer
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.runner import run_eval
from ttscale.strategies.program_of_thought import PROGRAM_EXEC, ProgramOfThought
from ttscale.types import ChatMessage, Problem, SampleParams

TIMEOUT_S = 1.0
HOSTILE_TARGET = Path(__file__).parent / f"hostile-{uuid.uuid4().hex}.txt"  # outside the sandbox


def fenced(body: str) -> str:
    return f"Let me compute it.\n```python\n{body}\n```\n"


RIGHT = fenced("print(3 + 4)")
RIGHT_TOO = fenced("a, b = 3, 4\nprint('the sum is')\nprint(a + b)")  # the last printed line counts
RIGHT_FLOAT = fenced("print(float(3 + 4))")  # 7.0: equivalent to 7
WRONG = fenced("print(3 - 4)")
CRASHING = fenced("print(7)\nraise ValueError('no')")  # printed the right value, then crashed: no answer
LOOPING = fenced("while True:\n    pass")
SILENT = fenced("x = 3 + 4")  # prints nothing: no answer
GARBAGE = fenced("import os\nprint('x' * 200000)\nos.write(1, b'garbage\\n' * 1000)")
HOSTILE = fenced(f"import os, signal\n"
                 f"try:\n    open({str(HOSTILE_TARGET)!r}, 'w').write('escaped')\nexcept Exception:\n    pass\n"
                 f"try:\n    os.kill(1, signal.SIGKILL)\nexcept Exception:\n    pass\n"
                 f"print(-1)")
NO_CODE = "The answer is \\boxed{7}."  # a boxed answer without a program is no program's answer
PROBLEM = Problem(id="p", question="What is 3 + 4?", prompt=(ChatMessage(role="user", content="What is 3 + 4?"),), answer="7")


async def solve(texts, **options):
    backend = FakeBackend(script=texts)
    ctx = SolveContext.for_problem(PROBLEM, backend=backend, answers=ArithmeticBenchmark(), params=SampleParams(), seed=0)
    trace = await ctx.solve(ProgramOfThought(n=len(texts), timeout_s=TIMEOUT_S, **options), PROBLEM)
    return trace, backend


async def test_majority_over_executed_answers_picks_the_right_value():
    texts = [WRONG, CRASHING, LOOPING, RIGHT, GARBAGE, NO_CODE, SILENT, RIGHT_TOO, HOSTILE, RIGHT_FLOAT]
    trace, backend = await solve(texts)
    assert [c.answer for c in trace.candidates] == ["-1", None, None, "7", "garbage", None, None, "7", "-1", "7.0"]
    # The wrong value has two votes (WRONG and HOSTILE), the right one three (7, 7, 7.0)
    assert trace.selections["majority"] == "7"
    assert trace.selections["first"] == "-1"
    runs = [ProgramRun.model_validate(r) for r in trace.metadata[PROGRAM_EXEC]]
    assert [r.status for r in runs] == ["pass", "fail", "timeout", "pass", "pass", "no code", "pass", "pass", "pass", "pass"]
    assert [r.runs for r in runs] == [1, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    assert "ValueError" in runs[1].error
    assert trace.metadata[EXECUTION]["runs"] == 9
    assert trace.metadata[EXECUTION]["cpu_s"] == pytest.approx(sum(r.cpu_s for r in runs))
    # The model was asked for a program, not a \boxed{} answer
    [request] = backend.requests
    assert "```python" in request.prompt[-1].content and "What is 3 + 4?" in request.prompt[-1].content


async def test_a_looping_or_hostile_program_costs_at_most_its_timeout_and_leaves_the_host_unchanged():
    trace, _ = await solve([LOOPING, HOSTILE])
    looping, hostile = (ProgramRun.model_validate(r) for r in trace.metadata[PROGRAM_EXEC])
    assert looping.status == "timeout" and looping.answer is None
    # An upper bound, not a race: the sandbox's wall clock plus its kill grace, with room for load.
    assert looping.wall_s <= TIMEOUT_S + 30
    assert hostile.answer == "-1"  # it ran to its end, inside the sandbox
    assert not HOSTILE_TARGET.exists()


def test_printed_answer_is_the_last_non_blank_line():
    assert printed_answer("1\n2\n  42 \n\n") == "42"
    assert printed_answer("\n \n") is None
    assert len(printed_answer("x" * 10_000)) == 200


def test_code_rules_and_templates_without_the_question_are_refused():
    with pytest.raises(ValidationError, match="math"):
        ProgramOfThought(selection="pass-examples")
    with pytest.raises(ValidationError, match="question"):
        ProgramOfThought(template="write a program")


async def test_eval_records_execution_per_candidate_and_per_problem(tmp_path):
    config = RunConfig(benchmark="arithmetic", benchmark_options={"terms": 2, "digits": "1", "size": 2},
                       strategy="program-of-thought", backend="fake", model="fake", output=tmp_path / "runs", limit=2,
                       strategy_options={"n": 3, "timeout_s": TIMEOUT_S})
    result = await run_eval(config, backend=FakeBackend(script=[RIGHT, SILENT, CRASHING], num_params=100))
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    for record in records:
        assert [c["answer"] for c in record["candidates"]] == ["7", None, None]
        assert len(record["trace_metadata"][PROGRAM_EXEC]) == 3 and record["trace_metadata"][EXECUTION]["runs"] == 3
    assert result.summary["execution"]["runs"] == 6 and result.summary["execution"]["problems"] == 2
