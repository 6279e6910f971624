"""`math500`: MATH-500, the subset of MATH test problems from "Let's Verify Step by Step"."""

from __future__ import annotations

from typing import Any, ClassVar

from ttscale.benchmarks.hub import HubBenchmark
from ttscale.errors import ConfigError
from ttscale.types import Problem


class Math500Benchmark(HubBenchmark):
    """HuggingFaceH4/MATH-500 (test split, 500 problems); difficulty is MATH's level, 1 to 5."""

    name: ClassVar[str] = "math500"
    dataset: ClassVar[str] = "HuggingFaceH4/MATH-500"
    split: ClassVar[str] = "test"

    def problem(self, index: int, row: dict[str, Any]) -> Problem:
        """Problem `math500-<unique_id>`, e.g. math500-test/precalculus/807."""
        unique_id = str(self.field(row, "unique_id", index)).removesuffix(".json")
        level = self.field(row, "level", index)
        try:
            difficulty = float(str(level).removeprefix("Level ").strip())  # MATH itself says "Level 3"
        except ValueError:
            raise ConfigError(f"{self._source()}: row {index}: level {level!r} is not a number from 1 to 5") from None
        return self.make_problem(
            id=f"math500-{unique_id}",
            question=str(self.field(row, "problem", index)),
            answer=str(self.field(row, "answer", index)),
            difficulty=difficulty,
            subject=str(row.get("subject", "")),
            level=int(difficulty),
        )
