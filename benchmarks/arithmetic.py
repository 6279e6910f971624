"""`arithmetic`: reasoning-gym's basic_arithmetic, seeded, with a difficulty knob."""

from __future__ import annotations

from typing import ClassVar

import reasoning_gym
from pydantic import Field

from ttscale.benchmarks._common import MathBenchmark
from ttscale.types import Problem


class ArithmeticBenchmark(MathBenchmark):
    """Procedural integer arithmetic. Difficulty: `terms` operands of `digits` digits each."""

    name: ClassVar[str] = "arithmetic"

    seed: int = 0
    size: int = Field(default=100, ge=1)
    terms: int = Field(default=2, ge=2, description="operands per expression")
    digits: int = Field(default=1, ge=1, le=10, description="digits per operand")

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` of `size` generated problems (the same for the same options)."""
        dataset = reasoning_gym.create_dataset(
            "basic_arithmetic",
            seed=self.seed,
            size=self.size,
            min_terms=self.terms,
            max_terms=self.terms,
            min_digits=self.digits,
            max_digits=self.digits,
        )
        count = min(limit or self.size, self.size)
        return [
            self.make_problem(
                id=f"arithmetic-t{self.terms}d{self.digits}-s{self.seed}-{index}",
                question=item["question"],
                answer=item["answer"],
                difficulty=float(self.terms * self.digits),
                expression=item["metadata"]["expression"],
            )
            for index, item in zip(range(count), dataset)
        ]
