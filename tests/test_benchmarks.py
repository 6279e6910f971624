import json

import pytest
from pydantic import ValidationError

from ttscale.benchmarks.arithmetic import ArithmeticBenchmark
from ttscale.benchmarks.gsm_symbolic import GsmSymbolicBenchmark
from ttscale.benchmarks.jsonl import JsonlBenchmark
from ttscale.errors import ConfigError


def test_arithmetic_defaults_are_two_single_digit_terms():
    problems = ArithmeticBenchmark().load(limit=20)
    assert len(problems) == 20
    for p in problems:
        operands = [t for t in p.metadata["expression"].replace("(", " ").replace(")", " ").split() if t.lstrip("-").isdigit()]
        assert len(operands) == 2 and all(len(t.lstrip("-")) == 1 for t in operands), p.metadata["expression"]
        assert "\\boxed{}" in p.prompt[-1].content and p.question in p.prompt[-1].content


def test_arithmetic_is_seeded_and_the_knob_changes_difficulty():
    a, b = ArithmeticBenchmark(seed=1).load(limit=5), ArithmeticBenchmark(seed=1).load(limit=5)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in ArithmeticBenchmark(seed=2).load(limit=5)]
    hard = ArithmeticBenchmark(terms=4, digits=3).load(limit=3)
    assert all(p.difficulty == 12.0 for p in hard)
    assert len({p.id for p in a + hard}) == 8  # ids carry the knob and seed, so they never collide


def test_bad_benchmark_options_name_the_field():
    with pytest.raises(ValidationError) as info:
        ArithmeticBenchmark(terms=1)
    assert info.value.errors()[0]["loc"] == ("terms",)
    with pytest.raises(ValidationError) as info:
        ArithmeticBenchmark(prompt_template="no placeholder")
    assert info.value.errors()[0]["loc"] == ("prompt_template",)


@pytest.mark.parametrize("benchmark", [ArithmeticBenchmark(size=30), GsmSymbolicBenchmark(size=10)])
def test_gold_answers_grade_correct_through_the_boxed_round_trip(benchmark):
    for p in benchmark.load():
        extracted = benchmark.extract_answer(f"Working...\n\nSo the answer is \\boxed{{{p.answer}}}.")
        assert benchmark.grade(p, extracted).correct, (p.id, p.answer, extracted)
        assert not benchmark.grade(p, str(int(float(p.answer)) + 1)).correct


def test_prompt_template_override():
    [p] = ArithmeticBenchmark(prompt_template="Q: {question}\nA:").load(limit=1)
    assert p.prompt[0].content == f"Q: {p.question}\nA:"


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_with_mapped_columns_and_ids(tmp_path):
    path = write(tmp_path / "mine.jsonl", [
        json.dumps({"problem": "1+1?", "solution": 2, "uid": "a"}),
        "",
        json.dumps({"problem": "2+2?", "solution": "4"}),
    ])
    problems = JsonlBenchmark(path=path, question_field="problem", answer_field="solution", id_field="uid").load()
    assert [(p.id, p.question, p.answer) for p in problems] == [("a", "1+1?", "2"), ("mine:3", "2+2?", "4")]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"question": "1+1?", "answer": "2"}', '{"question": "oops"'], r"bad\.jsonl:2: not valid JSON"),
        (['[1, 2]'], r"bad\.jsonl:1: expected a JSON object"),
        (['{"prompt": "1+1?", "answer": "2"}'], r"bad\.jsonl:1: no 'question' field .* -B question_field=NAME"),
        (['{"id": 1, "question": "a", "answer": "1"}', '{"id": 1, "question": "b", "answer": "2"}'], r"bad\.jsonl:2: id '1' repeats line 1"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(ConfigError, match=message):
        JsonlBenchmark(path=write(tmp_path / "bad.jsonl", lines)).load()


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        JsonlBenchmark(path=tmp_path / "nope.jsonl").load()
