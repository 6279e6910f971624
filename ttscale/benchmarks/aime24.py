"""`aime24`: the 30 problems of AIME 2024 (I and II), from HuggingFaceH4/aime_2024."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ttscale.benchmarks.hub import HubBenchmark
from ttscale.types import Problem


class Aime24Benchmark(HubBenchmark):
    """AIME 2024 (train split, the only one): every answer is an integer from 0 to 999."""

    name: ClassVar[str] = "aime24"
    dataset: ClassVar[str] = "HuggingFaceH4/aime_2024"
    split: ClassVar[str] = "train"

    def problem(self, index: int, row: dict[str, Any]) -> Problem:
        """Problem `aime24-<id>`, from the dataset's own id column."""
        # url points at the AoPS page with worked solutions; like the solution, it stays out of metadata.
        metadata = {"year": str(row["year"])} if row.get("year") is not None else {}
        return self.make_problem(
            id=f"aime24-{self.field(row, 'id', index)}",
            question=str(self.field(row, "problem", index)),
            # Gold answers are strings such as "204"; some copies store integers, or "033".
            answer=_integer(str(self.field(row, "answer", index))),
            # AIME orders its 15 problems by difficulty; the url names the number ("Problem_3").
            difficulty=_problem_number(row.get("url")),
            **metadata,
        )


def _integer(answer: str) -> str:
    answer = answer.strip()
    return str(int(answer)) if answer.isdigit() else answer


def _problem_number(url: Any) -> float | None:
    match = re.search(r"Problem_(\d+)", str(url or ""))
    return float(match.group(1)) if match else None
