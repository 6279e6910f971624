"""`gsm8k`: GSM8K grade-school word problems (openai/gsm8k, "main", test split: 1319 problems)."""

from __future__ import annotations

from typing import Any, ClassVar

from ttscale.benchmarks.hub import HubBenchmark
from ttscale.errors import ConfigError
from ttscale.types import Problem


class Gsm8kBenchmark(HubBenchmark):
    """GSM8K test problems; the gold is the number after "####" in the reference solution."""

    name: ClassVar[str] = "gsm8k"
    dataset: ClassVar[str] = "openai/gsm8k"
    config: ClassVar[str | None] = "main"
    split: ClassVar[str] = "test"

    def problem(self, index: int, row: dict[str, Any]) -> Problem:
        """Problem `gsm8k-<index>`: ids are positions in the split, so a data_file must hold the whole split."""
        question = str(self.field(row, "question", index))
        solution = str(self.field(row, "answer", index))
        if "####" not in solution:
            raise ConfigError(f"{self._source()}: row {index}: the answer has no '#### <number>' line")
        return self.make_problem(
            id=f"gsm8k-{index}",
            question=question,
            answer=gold_answer(solution),
            # GSM8K has no difficulty label; the reference solution's step count is a fair proxy.
            # The solution itself stays out of metadata: strategies see metadata.
            difficulty=float(solution_steps(solution)),
        )


def gold_answer(solution: str) -> str:
    """The number after the last "####", thousands separators removed: "#### 1,234" gives "1234"."""
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def solution_steps(solution: str) -> int:
    """How many non-empty lines the reference solution has before its "####" line."""
    return sum(1 for line in solution.split("####", 1)[0].splitlines() if line.strip())
