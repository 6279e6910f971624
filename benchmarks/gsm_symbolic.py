"""`gsm-symbolic`: reasoning-gym's GSM-Symbolic word problems (GSM8K templates), seeded, offline."""

from __future__ import annotations

from typing import ClassVar

import reasoning_gym
from pydantic import Field

from ttscale.benchmarks._common import MathBenchmark
from ttscale.types import Problem


class GsmSymbolicBenchmark(MathBenchmark):
    """Grade-school math word problems with procedurally varied numbers and names."""

    name: ClassVar[str] = "gsm-symbolic"

    seed: int = 0
    size: int = Field(default=100, ge=1)

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` of `size` generated problems (the same for the same options)."""
        dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=self.seed, size=self.size)
        count = min(limit or self.size, self.size)
        return [
            self.make_problem(
                id=f"gsm-symbolic-s{self.seed}-{index}",
                question=item["question"],
                answer=item["answer"],
                difficulty=float(item["metadata"].get("difficulty", 1.0)),
                source_index=item["metadata"].get("source_index"),
            )
            for index, item in zip(range(count), dataset)
        ]
