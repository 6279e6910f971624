"""Tricky (gold, model output, correct?) triples through the whole grading path: extract, then grade."""

import pytest

from ttscale.types import ChatMessage, Problem
from ttscale.grading.math_answer import DEFAULT_VERIFIER

PAIRS = [
    # fractions and decimals
    ("\\frac{1}{2}", "So the probability is \\boxed{0.5}.", True),
    ("0.5", "The answer is $\\boxed{\\frac12}$.", True),
    ("\\frac{3}{4}", "Thus \\boxed{3/4}.", True),
    ("\\frac{1}{3}", "\\boxed{0.33}", False),
    ("\\frac{2}{3}", "\\boxed{\\frac{4}{6}}", True),
    ("1.25", "The final answer is $\\frac{5}{4}$.", True),
    ("\\frac{14}{3}", "\\boxed{4\\frac{2}{3}}", True),  # a mixed number
    # \frac, \dfrac, \tfrac
    ("\\frac{7}{2}", "\\boxed{\\dfrac{7}{2}}", True),
    ("\\dfrac{7}{2}", "\\boxed{\\tfrac{7}{2}}", True),
    ("\\tfrac{1}{4}", "\\boxed{\\frac{1}{4}}", True),
    ("\\frac{7}{2}", "\\boxed{\\dfrac{2}{7}}", False),
    # units and text around the answer
    ("18", "She makes \\boxed{\\$18} a day.", True),
    ("18", "The answer is 18 dollars.", True),
    ("18", "\\boxed{18 \\text{ dollars}}", True),
    ("18", "\\boxed{18 \\text{ cm}}", True),
    ("18", "The final answer is $18.", True),
    ("18", "\\boxed{18\\,\\text{cm}^2}", True),
    ("18", "\\boxed{\\text{18 cm}}", True),  # math-verify alone reads one symbol "18cm"
    ("18", "\\boxed{\\text{81 cm}}", False),
    ("-2.5", "\\boxed{\\text{-2.5 degrees}}", True),
    ("18", "\\boxed{81 \\text{ cm}}", False),
    ("5", "The answer is 5 hours and 30 minutes.", False),  # the last number is 30: wrong, and graded so
    # intervals
    ("(1,2]", "\\boxed{(1, 2]}", True),
    ("(1,2]", "\\boxed{(1,2)}", False),
    ("(1,2]", "\\boxed{[1,2]}", False),
    ("(-\\infty, 3)", "\\boxed{(-\\infty,3)}", True),
    ("(2,12) \\cup (12,102)", "\\boxed{(2, 12) \\cup (12, 102)}", True),
    # A known limit of math-verify, pinned so a change shows: it does not read an inequality as an interval.
    ("[-2, 7]", "\\boxed{-2 \\le x \\le 7}", False),
    # negative numbers
    ("-4", "The answer is \\boxed{-4}.", True),
    ("-4", "The answer is \\boxed{4}.", False),
    ("-4", "so x = \u22124", True),  # a Unicode minus
    ("-\\frac{3}{4}", "\\boxed{-0.75}", True),
    ("-\\frac{3}{4}", "\\boxed{\\frac{-3}{4}}", True),
    ("-3", "Subtracting, 10-13 = -3", True),
    # thousands separators
    ("1234", "\\boxed{1,234}", True),
    ("1000000", "It costs 1,000,000 dollars.", True),
    ("1080", "#### 1,080", True),
    ("1234", "\\boxed{1.234}", False),
    ("1234", "\\boxed{1{,}234}", True),
    ("1234", "\\boxed{1\\,234}", True),  # a thin space: math-verify alone reads 1 + 234
    ("235", "\\boxed{1\\,234}", False),
    ("12345678", "\\boxed{12\\,345\\,678}", True),
    ("1.5", "\\boxed{1\\,5}", False),  # not a digit group: left alone
    # \boxed with nested braces
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt{3}}{2}}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{\\left(3,\\frac{\\pi}{2}\\right)}", True),
    ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}", True),
    ("x^{2}+1", "\\boxed{x^{2} + 1}", True),
    ("2^{10}", "\\boxed{{1024}}", True),
    # percentages
    ("25\\%", "\\boxed{25\\%}", True),
    ("25", "The answer is 25%.", True),
    ("25\\%", "\\boxed{25}", True),
    ("25\\%", "\\boxed{26\\%}", False),
    # square roots
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", True),
    ("\\sqrt{2}/2", "\\boxed{\\frac{1}{\\sqrt{2}}}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\boxed{\\frac{1}{\\sqrt3}}", True),
    ("3\\sqrt{3}", "\\boxed{3\\sqrt{2}}", False),
    ("\\sqrt{2}", "\\boxed{1.41}", False),
    # no answer
    ("7", "I could not solve this problem.", False),
    ("7", "", False),
    ("7", "Put your final answer in \\boxed{}.", False),
    ("7", "The answer is \\boxed{\\text{no solution}}.", False),
    ("0", "There is no answer.", False),
]


def problem(gold: str) -> Problem:
    return Problem(id="q", question="?", prompt=(ChatMessage(role="user", content="?"),), answer=gold)


@pytest.mark.parametrize("gold, output, correct", PAIRS)
def test_grade_after_extraction(gold, output, correct):
    answer = DEFAULT_VERIFIER.extract_answer(output)
    assert DEFAULT_VERIFIER.grade(problem(gold), answer).correct is correct, (gold, output, answer)


def test_enough_cases():
    assert len(PAIRS) >= 40
