import threading

import pytest
from pydantic import ValidationError

from ttscale.errors import ConfigError
from ttscale.types import ChatMessage, Problem
from ttscale.grading.math_answer import DEFAULT_VERIFIER, MathAnswerVerifier

verifier = MathAnswerVerifier()


@pytest.mark.parametrize(
    "text, expected",
    [
        # \boxed{} wins, the last non-empty one, braces balanced
        ("So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("First \\boxed{3}, then corrected: \\boxed{4}", "4"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("The result is \\fbox{12}", "12"),
        ("\\boxed 5", "5"),
        ("The answer is \\boxed 5.", "5"),
        ("The final answer is $\\boxed{18}$. I hope it is correct.", "18"),
        ("**Final Answer**\n\n\\[\n\\boxed{\\dfrac{7}{2}}\n\\]", "\\dfrac{7}{2}"),
        ("3 + 4 = 7\n\nThe answer is 6\n\n**Final Answer**\n\\boxed{7}", "7"),
        ("Final answer: \\boxed{1,000}", "1,000"),
        ("\\boxed{18 \\text{ dollars}}", "18 \\text{ dollars}"),
        ("We get \\boxed{5}. Put your answer in \\boxed{}.", "5"),
        ("Put the answer in \\boxed{}. We get 6.", "6"),
        # a "final answer" marker: the answer right after the last one
        ("The final answer is 42.", "42"),
        ("Final answer: $-3$", "-3"),
        ("**Final Answer**: 1,234", "1,234"),
        ("blah\n#### 28080", "28080"),
        ("#### 1,234.", "1,234"),
        ("The answer is B", "B"),
        ("The answer is (B).", "(B)"),
        ("Final answer: yes", "yes"),
        ("The answer is: 12", "12"),
        ("Answer: 3.", "3"),
        ("The answer is **15**.", "15"),
        ("The final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("The answer is $-\\frac{3}{4}$", "-\\frac{3}{4}"),
        ("Therefore, the answer is \\(\\frac{3}{4}\\).", "\\frac{3}{4}"),
        ("Final Answer: The final answer is $2x+1$. I hope it is correct.", "2x+1"),
        ("**Final Answer**\n\\[\n\\frac{7}{2}\n\\]", "\\frac{7}{2}"),
        ("**Final Answer**\nThe total is 18.", "18"),
        ("So she has 42 dollars left.\nThe answer is 42 dollars.", "42"),
        ("The answer is $18.", "18"),
        ("The answer is x = 5", "5"),
        ("The answer is $2^{10} = 1024$.", "1024"),
        ("The answer is 2^{10}", "2^{10}"),
        ("The final answer is 3/4.", "3/4"),
        ("The answer is −4", "-4"),
        ("The answer is 7.\n\nCheck: 3 + 4 = 7, and 7 - 2 = 5 apples? No.", "7"),
        ("The answer is not obvious. Let's compute 3+4=7.", "7"),
        # else the last number
        ("We get 3 + 4 = 7. Then 7 * 2 = 14", "14"),
        ("x = 3/4", "3/4"),
        ("The numbers are 1, 2 and 3.", "3"),
        ("It costs 1,000,000 dollars.", "1,000,000"),
        ("so 10-3=7", "7"),
        ("x is -3", "-3"),
        ("The value is -.5", "-.5"),
        ("cost is $5.50.", "5.50"),
        ("The result is (-9 / 9) = -1", "-1"),
        ("\\boxed{3", "3"),  # cut off inside the box
        ("nothing numeric here", None),
        ("\\boxed{", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert verifier.extract_answer(text) == expected


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac{7}{2}", "3.5", True),
        ("7", "7.0", True),
        ("10", "10.", True),
        ("−4", "-4", True),
        ("1,234", "1234", True),
        ("1,000,000", "1000000", True),
        ("x+1", "1+x", True),
        ("5", "x = 5", True),
        ("1024", "2^{10} = 1024", True),
        ("18", "\\$18", True),
        ("18", "18 \\text{ dollars}", True),
        ("B", "b", True),
        ("$5$", "5", True),
        ("5", "6", False),
        ("-4", "4", False),
        ("abc", "abd", False),
        ("\\frac{1}{3}", "0.33", False),
        ("1,234", "1.234", False),
    ],
)
def test_equivalent_is_symmetric(a, b, same):
    assert verifier.equivalent(a, b) is same
    assert verifier.equivalent(b, a) is same


# Scientific notation: math-verify alone reads "1e3" as 1·e·3 (Euler's e) but "1E3" as 1000.
SCIENTIFIC = [
    ("1e3", "1000", True),
    ("1e3", "1000.0", True),
    ("1.0e3", "1000", True),  # trailing zeros in the mantissa
    ("2.50e2", "250", True),
    ("1e+3", "1000", True),  # an explicit exponent sign
    ("+1e3", "1000", True),
    ("-2e2", "-200", True),  # a negative mantissa
    ("1.5e-3", "0.0015", True),  # a negative exponent
    ("-2.5e-4", "-0.00025", True),
    (".5e1", "5", True),
    ("5.e0", "5", True),
    ("1e0", "1", True),
    ("1.23e5", "123000", True),
    ("1e3", "10^3", True),
    ("1e3", "1 \\times 10^{3}", True),
    ("1e3", "1e3", True),
    ("1e3", "10e2", True),
    ("1e3", "1001", False),
    ("1e3", "3", False),
    ("1e3", "e^3", False),
    ("1e-3", "1000", False),  # the exponent's sign matters
    ("-1e3", "1000", False),  # and the mantissa's
    ("1.2345e3", "1234.6", False),
    ("2e2", "20", False),
]


def _cases(a: str) -> set[str]:
    return {a, a.replace("e", "E")}


@pytest.mark.parametrize("a, b, same", SCIENTIFIC)
def test_scientific_notation_is_equivalent_both_ways_round_in_either_case(a, b, same):
    for left in _cases(a):
        for right in _cases(b) if "e" in b and "\\" not in b and "^" not in b else {b}:
            assert verifier.equivalent(left, right) is same, (left, right)
            assert verifier.equivalent(right, left) is same, (right, left)
            assert verifier.grade(problem(right), left).correct is same, (right, left)
            assert verifier.grade(problem(left), right).correct is same, (left, right)


@pytest.mark.parametrize("text, gold", [
    ("So the total is \\boxed{1e3}.", "1000"),
    ("So the total is \\boxed{1E3}.", "1000"),
    ("The answer is 2.5e-3.", "0.0025"),
    ("We end up with about 4.2E6 cells", "4200000"),
])
def test_scientific_notation_is_extracted_and_graded(text, gold):
    answer = verifier.extract_answer(text)
    assert verifier.grade(problem(gold), answer).correct, (text, answer)


@pytest.mark.parametrize("weird", ["", "}{", "\\frac{", "$$", "\\boxed{}", "x" * 5000, "1/0", "\\left(", "=="])
def test_weird_input_never_raises(weird):
    assert verifier.equivalent(weird, "1") is False
    assert verifier.grade(problem("1"), weird).correct is False
    verifier.extract_answer(weird)


def test_non_string_input_is_not_equivalent():
    assert verifier.equivalent(None, "1") is False  # type: ignore[arg-type]


def problem(answer):
    return Problem(id="q", question="?", prompt=(ChatMessage(role="user", content="?"),), answer=answer)


def test_grade_uses_gold():
    assert verifier.grade(problem("-4"), "-4.0").correct
    assert verifier.grade(problem("0.5"), "\\frac{1}{2}").correct
    assert verifier.grade(problem("1024"), "2^{10} = 1024").correct
    wrong = verifier.grade(problem("-4"), "4")
    assert not wrong.correct and "expected '-4'" in wrong.reason
    assert verifier.grade(problem("-4"), None).reason == "no answer extracted"
    assert not verifier.grade(problem("-4"), None).correct
    with pytest.raises(ConfigError, match="'q' has no gold answer"):
        verifier.grade(problem(None), "1")


def test_grade_after_extraction():
    text = "Adding up, 12 + 30 = 42.\n\nThe answer is \\boxed{42}."
    assert verifier.grade(problem("42"), verifier.extract_answer(text)).correct
    assert not verifier.grade(problem("41"), verifier.extract_answer(text)).correct


def test_options_are_validated_by_name():
    with pytest.raises(ValidationError, match="timeout_s"):
        MathAnswerVerifier(timeout_s=0)
    with pytest.raises(ValidationError, match="unknown"):
        MathAnswerVerifier(unknown=1)
    assert DEFAULT_VERIFIER == MathAnswerVerifier()


def test_grading_works_off_the_main_thread():
    # math-verify's signal-based timeout only works in the main thread; we switch it off there.
    results = []

    def work():
        results.append(verifier.equivalent("\\frac{2}{3}", "4/6"))
        results.append(verifier.grade(problem("0.25"), "1/4").correct)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert results == [True, True]
