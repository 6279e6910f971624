"""Math final-answer extraction and equivalence, graded with math-verify.

Extraction order: the last `\\boxed{...}` (or `\\fbox{...}`), else a "final answer" line, else
the last number in the text. Equivalence and grading use math-verify, gold first.
"""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify
from pydantic import BaseModel, ConfigDict, Field

from ttscale.errors import ConfigError
from ttscale.types import Grade, Problem

BOX_COMMANDS = ("\\boxed", "\\fbox")
FINAL_ANSWER = re.compile(
    r"(?:final answer|the answer is|answer:|####)\s*(?:is)?\s*[:=]?\s*\**\s*:?\s*(?P<answer>[^\n]+)",
    re.IGNORECASE,
)
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
MAX_TEXT_ANSWER = 40  # a "final answer" line with no number is taken only if it is this short


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} or \\fbox{...}, with nested braces balanced."""
    start = max(text.rfind(command) for command in BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start:]
    brace = rest.find("{")
    if brace < 0 or rest[:brace].strip() not in BOX_COMMANDS:
        # `\boxed 5` form: the argument is the next token.
        match = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", rest)
        return match.group(1) if match else None
    depth = 0
    for position in range(brace, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[position], 0)
        if depth == 0:
            return rest[brace + 1 : position].strip()
    return None  # unbalanced: the sample was cut off inside the box


def last_number(text: str) -> str | None:
    """The last number in the text (integers, decimals, thousands separators, simple fractions)."""
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(" ", "") if numbers else None


def _clean(answer: str) -> str:
    return answer.strip().strip("$").strip().rstrip(".").strip().strip("*").strip()


class MathAnswerVerifier(BaseModel):
    """Extracts final answers from math solutions and checks them with math-verify."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: int = Field(default=5, ge=1, description="math-verify parse/verify timeout (main thread only)")

    def extract_answer(self, text: str) -> str | None:
        """The solution's final answer as a string, or None if it states none."""
        boxed = last_boxed(text)
        if boxed:
            return _clean(boxed)
        finals = list(FINAL_ANSWER.finditer(text))
        if finals:
            line = finals[-1].group("answer")
            boxed_or_number = last_boxed(line) or last_number(line)
            if boxed_or_number:
                return _clean(boxed_or_number)
            short = _clean(line.split(". ")[0])
            if short and len(short) <= MAX_TEXT_ANSWER:
                return short  # e.g. "The answer is B" or "Final answer: yes"
        number = last_number(text)
        return _clean(number) if number else None

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two extracted answers are mathematically the same."""
        if _normalize(a) == _normalize(b):
            return True
        return self._verify(a, b)

    def grade(self, problem: Problem, answer: str | None) -> Grade:
        """Ground truth: does `answer` match the problem's gold answer? (Never shown to strategies.)"""
        if problem.answer is None:
            raise ConfigError(f"problem {problem.id!r} has no gold answer to grade against")
        if answer is None:
            return Grade(correct=False, reason="no answer extracted")
        correct = _normalize(problem.answer) == _normalize(answer) or self._verify(problem.answer, answer)
        return Grade(correct=correct, reason="" if correct else f"expected {problem.answer!r}, got {answer!r}")

    def _verify(self, gold: str, answer: str) -> bool:
        # math-verify's timeouts use signal.alarm, which only works in the main thread; elsewhere
        # they must be off (our inputs are short extracted answers, so parsing is quick).
        timeout = self.timeout_s if threading.current_thread() is threading.main_thread() else None
        try:
            return bool(
                verify(
                    parse(_as_latex(gold), parsing_timeout=timeout),
                    parse(_as_latex(answer), parsing_timeout=timeout),
                    timeout_seconds=timeout,
                )
            )
        except Exception:  # math-verify can raise on exotic input; an unparseable answer is wrong
            return False


def _as_latex(answer: str) -> str:
    """Wrap a bare answer so math-verify parses it as one math expression."""
    answer = answer.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", answer) else answer
    return f"${answer}$"


def _normalize(answer: str) -> str:
    return re.sub(r"\s+", "", answer.replace("−", "-")).rstrip(".").lower()
