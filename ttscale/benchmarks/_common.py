"""What benchmarks share: the prompt template, Problem building, and math grading."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from ttscale.errors import ConfigError
from ttscale.types import ChatMessage, Grade, Problem
from ttscale.grading.math_answer import DEFAULT_VERIFIER

DEFAULT_MATH_TEMPLATE = (
    "Solve the following problem step by step. Put your final answer in \\boxed{}.\n\n{question}"
)

# reasoning-gym seeds item i of seed s with Random(s + i), so seed 1 would be seed 0 shifted by
# one item. Spacing our seeds this far apart keeps the sets of different seeds disjoint.
SEED_STRIDE = 1_000_003


def reasoning_gym_seed(seed: int) -> int:
    """The reasoning-gym seed for our `seed`: disjoint problem sets for any size below the stride."""
    return seed * SEED_STRIDE


def read_text_lines(path: Path, what: str = "data file") -> list[str]:
    """The lines of a UTF-8 text file (gzipped if it ends in .gz), naming the line of any bad byte.

    A byte-order mark at the start is dropped: spreadsheet tools often write one.
    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; check the path") from None
    except (OSError, EOFError) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from None
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[error.start]:02x} at column {column}); "
            "save the file as UTF-8 and rerun"
        ) from None


def take(count: int, limit: int | None) -> int:
    """How many of `count` problems to return for `limit` (None: all)."""
    return count if limit is None else max(0, min(limit, count))


class TemplatedBenchmark(BaseModel):
    """Base for benchmarks whose prompt is one user message built from an overridable template.

    Options are pydantic fields, so bad ones name themselves.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_template: str | None = None  # overrides default_template; must contain {question}

    default_template: ClassVar[str]

    @field_validator("prompt_template")
    @classmethod
    def _template_has_question(cls, value: str | None) -> str | None:
        if value is not None and "{question}" not in value:
            raise ValueError("must contain the placeholder {question}, where the problem text goes")
        return value

    def make_problem(
        self, *, id: str, question: str, answer: Any, difficulty: float | None = None, **metadata: Any
    ) -> Problem:
        """A Problem whose prompt is one user message built from the template."""
        # str.replace, not str.format: templates and questions hold LaTeX and code braces.
        content = (self.prompt_template or self.default_template).replace("{question}", question)
        return Problem(
            id=id,
            question=question,
            prompt=(ChatMessage(role="user", content=content),),
            answer=str(answer),
            difficulty=difficulty,
            metadata=metadata,
        )


class MathBenchmark(TemplatedBenchmark):
    """Base for math benchmarks: \\boxed{} answers, graded with math-verify."""

    default_template: ClassVar[str] = DEFAULT_MATH_TEMPLATE

    def extract_answer(self, text: str) -> str | None:
        """The final answer stated in a solution."""
        return DEFAULT_VERIFIER.extract_answer(text)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two answers are mathematically equal."""
        return DEFAULT_VERIFIER.equivalent(a, b)

    def grade(self, problem: Problem, answer: str | None) -> Grade:
        """Ground-truth grading against the gold answer."""
        return DEFAULT_VERIFIER.grade(problem, answer)
