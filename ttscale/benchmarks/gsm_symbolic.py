"""`gsm-symbolic`: reasoning-gym's GSM-Symbolic word problems (GSM8K templates), seeded, offline."""

from __future__ import annotations

from typing import ClassVar

import reasoning_gym
from pydantic import Field

from ttscale.benchmarks._common import MathBenchmark, reasoning_gym_seed, take
from ttscale.types import Problem


class GsmSymbolicBenchmark(MathBenchmark):
    """Grade-school math word problems with procedurally varied numbers and names."""

    name: ClassVar[str] = "gsm-symbolic"

    seed: int = Field(default=0, ge=0)
    size: int = Field(default=100, ge=1)

    def load(self, *, limit: int | None = None) -> list[Problem]:
        """The first `limit` of `size` generated problems (the same for the same options)."""
        dataset = reasoning_gym.create_dataset("gsm_symbolic", seed=reasoning_gym_seed(self.seed), size=self.size)
        return [
            self.make_problem(
                id=f"gsm-symbolic-s{self.seed}-{index}",
                question=item["question"],
                answer=item["answer"],
                # reasoning-gym's own difficulty is always 1.0; the reference solution's step
                # count (lines before "#### answer") says more about how hard a problem is.
                # The solution itself stays out of metadata: strategies see metadata.
                difficulty=float(_steps(item["metadata"]["answer_cot"])),
            )
            for index, item in zip(range(take(self.size, limit)), dataset)
        ]


def _steps(solution: str) -> int:
    return sum(1 for line in solution.splitlines() if line.strip() and not line.startswith("####"))
