"""`champ`: CHAMP competition math (Mao et al. 2024), offline from the PyPI package champ-dataset.

CHAMP's 270 final answers are plain-text phrases written for a human or GPT-4 judge: "No",
"C(10, 5), or equivalently 252", "0 is the only possible value", "The limit exists and is
equal to sqrt(a)", "No integer solutions". We turn each into a gold answer math-verify can
grade, by fixed rules (see `champ_gold`):

- math: a number, expression, set or list of solutions, rewritten in LaTeX (sqrt(x) -> \\sqrt{x},
  2^(n-1) -> 2^{n-1}, "A and B" -> "A, B"), the phrase around it dropped;
- yes-no: "Yes" or "No", graded by math-verify/normalized text ("\\text{No}" matches "No");
- free text ("No integer solutions", "The sequence is not periodic", "f(x)=0 or f(x)=1"): no
  gold math-verify can grade fairly, so these problems are left out.

Of CHAMP v0's 270 problems that gives 205 math answers, 33 yes/no and 32 left out: 238 problems.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import ClassVar, Literal

from pydantic import Field

from ttscale.benchmarks._common import MathBenchmark, take
from ttscale.errors import ConfigError
from ttscale.types import Problem

AnswerKind = Literal["math", "yes-no"]

EQUIVALENT = re.compile(r",?\s+or\s+(?:an\s+)?equivalent(?:ly|\s+form\s+such\s+as)\s+(.+)$")
APPROXIMATELY = re.compile(r",?\s+or\s+approximately\s+.*$")
# "100 (i.e., all values)", "0 (no such selection is possible)": a remark after the answer.
REMARK = re.compile(r"\s+\((?:i\.e\.|none\b|no\b).*\)$|\s+\([^()]*[A-Za-z]{3,}[^()]*\)$")
PHRASES = (
    re.compile(r"^(.+?) is the only possible value$"),
    re.compile(r"^The limit exists and is equal to (.+)$"),
    re.compile(r"^The only possible value for the limit is (.+)$"),
    # "At least how many ...?" "At least 1 number"; "At most how many ...?" "At most 0 values".
    re.compile(r"^At (?:least|most) (\S+)\s.*$"),
    # "How many ...?" "98 values", "2 inequalities", "0 roots"; "How often ...?" "n times".
    re.compile(r"^(\S+) (?:values?|inequalities|roots|pairs|times|numbers?)$"),
)
# Prose: a word of 3+ letters ("solutions"; not \sqrt) or a short English word; "xy-yz" is math.
WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}|\b(?:or|is|if|of|in|at|no|No)\b")


def champ_gold(raw: str) -> tuple[str, AnswerKind] | None:
    """CHAMP's answer phrase as a gold answer math-verify can grade, and its kind; None for free text."""
    answer = raw.strip().replace("\u2212", "-")
    if answer in ("Yes", "No"):
        return answer, "yes-no"
    equivalent = EQUIVALENT.search(answer)
    if equivalent:
        answer = equivalent.group(1)  # "C(10, 5), or equivalently 252": the plainer form
    answer = REMARK.sub("", APPROXIMATELY.sub("", answer)).strip()
    for phrase in PHRASES:
        match = phrase.match(answer)
        if match:
            answer = match.group(1)
            break
    answer = _join_alternatives(answer)
    if answer is None:
        return None
    latex = _to_latex(answer)
    if WORD.search(latex) or "..." in latex or any(c in latex for c in "<>≤≥"):
        return None  # prose, or an inequality: not a value to compare
    if re.search(r"[\w)}]\s*\\pm", latex):
        return None  # "a(1±sqrt(2))": math-verify reads ± only as "x = ±1" or "±2, ±3"
    return latex, "math"


def _join_alternatives(answer: str) -> str | None:
    """"376 and 625" -> "376, 625"; "x=0, y=2 and x=9, y=11" -> "(x=0, y=2), (x=9, y=11)"."""
    parts = answer.split(" and ")
    if len(parts) == 1:
        return answer
    if any(WORD.search(part) for part in parts):
        return None
    if all("=" in part and "," in part and not part.startswith("(") for part in parts):
        parts = [f"({part})" for part in parts]  # solution pairs stay pairs
    return ", ".join(parts)


def _to_latex(answer: str) -> str:
    """Plain-text math as LaTeX: sqrt(x) -> \\sqrt{x}, floor(x) -> \\lfloor x\\rfloor, a^(b) -> a^{b}, ± -> \\pm."""
    answer = _replace_call(answer, "sqrt", "\\sqrt{", "}")
    answer = _replace_call(answer, "floor", "\\lfloor ", "\\rfloor ")
    answer = _replace_call(answer, "^", "^{", "}")
    answer = re.sub(r"\^(\\lfloor [^\\]*\\rfloor )", r"^{\1}", answer)  # 2^floor(n/2): the floor is the exponent
    return answer.replace("±", "\\pm ").replace("*", " \\cdot ").strip()


def _replace_call(text: str, head: str, open_: str, close: str) -> str:
    """Rewrite every `head(` ... `)` (parentheses balanced) as `open_` ... `close`."""
    out, position = [], 0
    while True:
        start = text.find(head + "(", position)
        if start < 0:
            return "".join(out) + text[position:]
        depth, end = 0, None
        for index in range(start + len(head), len(text)):
            depth += {"(": 1, ")": -1}.get(text[index], 0)
            if depth == 0:
                end = index
                break
        if end is None:
            return "".join(out) + text[position:]
        inner = _replace_call(text[start + len(head) + 1 : end], head, open_, close)
        out.append(text[position:start] + open_ + inner + close)
        position = end + 1


@lru_cache(maxsize=1)
def _champ_rows() -> tuple[tuple[str, str, str, str], ...]:
    """(identifier, text, category, raw answer) for every CHAMP problem, in the package's order."""
    try:
        import champ_dataset
    except ImportError:
        raise ConfigError("the champ benchmark needs the champ-dataset package: pip install champ-dataset") from None
    dataset = champ_dataset.load("v0")
    return tuple((p.identifier, p.text, p.category, p.answer) for p in dataset.problems.values())


class ChampBenchmark(MathBenchmark):
    """CHAMP's competition problems whose final answers math-verify can grade (see the module doc)."""

    name: ClassVar[str] = "champ"

    include_yes_no: bool = Field(default=True, description="keep the problems whose answer is Yes or No")
    size: int | None = Field(default=None, ge=1, description="use only the first `size` problems (None: all)")

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The gradable CHAMP problems in the package's order (ids are CHAMP's, e.g. champ-P_Sequence_7)."""
        problems = []
        for identifier, text, category, raw in _champ_rows():
            gold = champ_gold(raw)
            if gold is None or (gold[1] == "yes-no" and not self.include_yes_no):
                continue
            answer, kind = gold
            # No difficulty: CHAMP has none. Category and answer kind are no gold: metadata may hold them.
            problems.append(
                self.make_problem(id=f"champ-{identifier}", question=text, answer=answer, category=category, answer_kind=kind)
            )
        if self.size is not None:
            problems = problems[: self.size]
        return problems[: take(len(problems), limit)]
