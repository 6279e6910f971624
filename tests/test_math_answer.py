import threading

import pytest

from ttscale.errors import ConfigError
from ttscale.types import ChatMessage, Problem
from ttscale.verifiers.math_answer import MathAnswerVerifier

verifier = MathAnswerVerifier()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("First \\boxed{3}, then corrected: \\boxed{4}", "4"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("The result is \\fbox{12}", "12"),
        ("\\boxed 5", "5"),
        ("The final answer is 42.", "42"),
        ("Final answer: $-3$", "-3"),
        ("**Final Answer**: 1,234", "1,234"),
        ("blah\n#### 28080", "28080"),
        ("The answer is B", "B"),
        ("We get 3 + 4 = 7. Then 7 * 2 = 14", "14"),
        ("x = 3/4", "3/4"),
        ("The numbers are 1, 2 and 3.", "3"),
        ("It costs 1,000,000 dollars.", "1,000,000"),
        ("nothing numeric here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert verifier.extract_answer(text) == expected


def test_long_final_answer_prose_falls_back_to_last_number():
    text = "We add 2 and 5.\nThe answer is a classic example of persistence and careful thought about sums"
    assert verifier.extract_answer(text) == "5"


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("7", "7.0", True),
        ("−4", "-4", True),
        ("1,234", "1234", True),
        ("x+1", "1+x", True),
        ("5", "6", False),
        ("abc", "abd", False),
        ("\\frac{1}{3}", "0.33", False),
    ],
)
def test_equivalent(a, b, same):
    assert verifier.equivalent(a, b) is same


def problem(answer):
    return Problem(id="q", question="?", prompt=(ChatMessage(role="user", content="?"),), answer=answer)


def test_grade_uses_gold():
    assert verifier.grade(problem("-4"), "-4.0").correct
    wrong = verifier.grade(problem("-4"), "4")
    assert not wrong.correct and "expected '-4'" in wrong.reason
    assert verifier.grade(problem("-4"), None).reason == "no answer extracted"
    with pytest.raises(ConfigError, match="'q' has no gold answer"):
        verifier.grade(problem(None), "1")


def test_grading_works_off_the_main_thread():
    # math-verify's signal-based timeout only works in the main thread; we switch it off there.
    results = []
    worker = threading.Thread(target=lambda: results.append(verifier.equivalent("1/2", "0.5")))
    worker.start()
    worker.join()
    assert results == [True]
