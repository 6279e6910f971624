"""Math final-answer extraction and equivalence, graded with math-verify.

Extraction order: the last non-empty `\\boxed{...}` (or `\\fbox{...}`), else the answer stated
after the last "final answer" marker, else the last number in the text. Equivalence and grading
use math-verify, gold first.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

from math_verify import parse, verify
from pydantic import BaseModel, ConfigDict, Field

from ttscale.errors import ConfigError
from ttscale.types import Grade, Problem

BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
# The last marker wins: models restate and correct themselves before they conclude.
FINAL_MARKER = re.compile(
    r"(?:final\s+answer|the\s+answer\s+is|\banswer\s*:|####)[\s*:=]*(?:is\b)?[\s*:=]*", re.IGNORECASE
)
MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
# A minus glued to a preceding word, digit or bracket is subtraction ("10-3"), not a sign.
NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?(?:\d+(?:,\d{3}(?!\d))*(?:\.\d+)?(?:[eE][+-]?\d+\b)?(?:\s*/\s*\d+)?|\.\d+)")
PLAIN_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # "dollars" but not "\frac"
SENTENCE_END = re.compile(r"\.(?:\s|$)")
THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "1\,234": a LaTeX thin space between digit groups, which math-verify would read as 1 + 234.
THIN_SPACE_GROUP = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
# "\text{18 cm}": a number and its unit wrapped in text, which math-verify reads as one symbol.
TEXT_NUMBER = re.compile(r"\\(?:text|textrm|mathrm)\{\s*(-?\d[\d,]*(?:\.\d+)?)\s+([^{}]*)\}")
# "1e3", "-2.5E-4": scientific notation, which math-verify reads as 1·e·3 (Euler's e) in lower
# case and as a number in upper case. We hand it m \times 10^{k}, which it reads as a number.
SCIENTIFIC = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([+-]?\d+)")
MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers, and they can stall sympy


def last_boxed(text: str) -> str | None:
    """The content of the last non-empty \\boxed{...} or \\fbox{...} (braces balanced), or None."""
    for match in reversed(list(BOX.finditer(text))):
        content = _box_content(text[match.end() :])
        if content:
            return content
    return None


def _box_content(rest: str) -> str | None:
    stripped = rest.lstrip()
    if not stripped.startswith("{"):
        # `\boxed 5`: the argument is the next token.
        token = re.match(r"\s+([^\s$}]+)", rest)
        return token.group(1) if token else None
    depth = 0
    for position, char in enumerate(stripped):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return stripped[1:position].strip()
    return None  # unbalanced: the sample was cut off inside the box


def last_number(text: str) -> str | None:
    """The last number in the text (signs, decimals, thousands separators, exponents, simple fractions)."""
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(" ", "") if numbers else None


def stated_answer(text: str) -> str | None:
    """The answer after the last "final answer" / "the answer is" / "####" marker, or None."""
    markers = list(FINAL_MARKER.finditer(text))
    if not markers:
        return None
    rest = text[markers[-1].end() :]
    display = MATH_SPAN.match(rest)  # "Final answer:\n\[ ... \]" spans several lines
    if display:
        return _answer_in(_span_content(display))
    sentence = SENTENCE_END.split(rest.split("\n", 1)[0], maxsplit=1)[0]
    spans = list(MATH_SPAN.finditer(sentence))
    return _answer_in(_span_content(spans[-1]) if spans else sentence)


def _span_content(match: re.Match) -> str:
    return next(group for group in match.groups() if group is not None)


def _answer_in(phrase: str) -> str | None:
    """The answer within a short phrase: all of it if it reads as math, else its last number."""
    phrase = _clean(phrase)
    if not phrase:
        return None
    if not PLAIN_WORD.search(phrase):
        return _clean(phrase.rsplit("=", 1)[-1]) or None  # "x = 5" states 5
    number = last_number(phrase)
    if number:
        return number  # "42 dollars"
    return phrase if len(phrase.split()) == 1 else None  # "yes", "B"; prose is no answer


def _clean(answer: str) -> str:
    answer = answer.strip()
    while True:  # strip wrappers in any order: "**$5$.**"
        cleaned = answer.strip().strip("$*").strip().rstrip(".,;").strip()
        if cleaned == answer:
            return answer
        answer = cleaned


class MathAnswerVerifier(BaseModel):
    """Extracts final answers from math solutions and checks them with math-verify."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # An int because math-verify passes it to signal.alarm, which takes whole seconds.
    timeout_s: int = Field(default=5, ge=1, description="math-verify parse/verify timeout (main thread only)")

    def extract_answer(self, text: str) -> str | None:
        """The solution's final answer as a string, or None if it states none."""
        text = text.replace("\u2212", "-")  # Unicode minus, common in model output
        answer = last_boxed(text)
        if answer and _clean(answer):
            return _clean(answer)
        return stated_answer(text) or last_number(text)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two answers are mathematically the same (checked both ways; never raises)."""
        if not isinstance(a, str) or not isinstance(b, str):
            return False
        if _normalize(a) == _normalize(b):
            return True
        # math-verify is not symmetric (e.g. "2^{10} = 1024" vs "1024"); voting needs symmetry.
        return self._verify(a, b) or self._verify(b, a)

    def grade(self, problem: Problem, answer: str | None) -> Grade:
        """Ground truth: does `answer` match the problem's gold answer? (Never shown to strategies.)"""
        if problem.answer is None:
            raise ConfigError(f"problem {problem.id!r} has no gold answer to grade against")
        if answer is None:
            return Grade(correct=False, reason="no answer extracted")
        correct = _normalize(problem.answer) == _normalize(answer) or self._verify(problem.answer, answer)
        return Grade(correct=correct, reason="" if correct else f"expected {problem.answer!r}, got {answer!r}")

    def _verify(self, gold: str, answer: str) -> bool:
        """math-verify's verify(parse(gold), parse(answer)); False on any failure."""
        if len(gold) > MAX_ANSWER_CHARS or len(answer) > MAX_ANSWER_CHARS:
            return False
        # math-verify's timeouts use signal.alarm, which works only in the main thread; elsewhere
        # they must be off, and the length cap above is the only bound.
        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        try:
            return bool(verify(_parse(gold, timeout), _parse(answer, timeout), timeout_seconds=timeout))
        except Exception:  # math-verify can raise on exotic input; an unparseable answer is wrong
            return False


DEFAULT_VERIFIER = MathAnswerVerifier()
"""The verifier with default settings, shared by the math benchmarks."""


@lru_cache(maxsize=4096)  # voting and grading parse the same few answers again and again
def _parse_cached(latex: str, timeout: int | None) -> tuple:
    return tuple(parse(latex, parsing_timeout=timeout))


def _parse(answer: str, timeout: int | None) -> list:
    return list(_parse_cached(_as_latex(answer), timeout))


def _as_latex(answer: str) -> str:
    """Wrap a bare answer in $...$ so math-verify parses it as one math expression."""
    answer = _clean(answer.replace("\u2212", "-"))
    answer = THIN_SPACE_GROUP.sub("", answer)
    text_number = TEXT_NUMBER.fullmatch(answer)
    if text_number:
        answer = f"{text_number.group(1)} \\text{{ {text_number.group(2)}}}"
    if THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")  # "1,234" is a number, not the set {1, 234}
    scientific = SCIENTIFIC.fullmatch(answer)
    if scientific:
        mantissa = re.sub(r"^([+-]?)\.", r"\g<1>0.", scientific.group(1)).rstrip(".")  # ".5" and "5."
        answer = f"{mantissa} \\times 10^{{{int(scientific.group(2))}}}"
    return f"${answer}$"


def _normalize(answer: str) -> str:
    return re.sub(r"\s+", "", _clean(answer.replace("\u2212", "-"))).lower()
