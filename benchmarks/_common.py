"""What every math benchmark shares: the prompt template, Problem building and grading."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ttscale.types import ChatMessage, Grade, Problem
from ttscale.verifiers.math_answer import MathAnswerVerifier

DEFAULT_MATH_TEMPLATE = (
    "Solve the following problem step by step. "
    "Put your final answer in \\boxed{{}}.\n\n{question}"
)


class MathBenchmark(BaseModel):
    """Base for math benchmarks: options are pydantic fields, so bad ones name themselves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_template: str | None = None  # overrides DEFAULT_MATH_TEMPLATE; must contain {question}

    @field_validator("prompt_template")
    @classmethod
    def _template_has_question(cls, value: str | None) -> str | None:
        if value is not None and "{question}" not in value:
            raise ValueError("must contain the placeholder {question}")
        return value

    @property
    def grader(self) -> MathAnswerVerifier:
        """The math-verify grader shared by extraction, equivalence and grading."""
        return MathAnswerVerifier()

    def make_problem(self, *, id: str, question: str, answer: Any, difficulty: float | None = None, **metadata: Any) -> Problem:
        """A Problem whose prompt is one user message built from the template."""
        template = self.prompt_template or DEFAULT_MATH_TEMPLATE
        content = template.replace("{question}", question).replace("{{}}", "{}")
        return Problem(
            id=id,
            question=question,
            prompt=(ChatMessage(role="user", content=content),),
            answer=str(answer),
            difficulty=difficulty,
            metadata=metadata,
        )

    def extract_answer(self, text: str) -> str | None:
        """The final answer stated in a solution."""
        return self.grader.extract_answer(text)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two answers are mathematically equal."""
        return self.grader.equivalent(a, b)

    def grade(self, problem: Problem, answer: str | None) -> Grade:
        """Ground-truth grading against the gold answer."""
        return self.grader.grade(problem, answer)
