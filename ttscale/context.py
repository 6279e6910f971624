"""SolveContext: everything a strategy may use for one problem, and nothing it may not."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from ttscale.types import SampleParams

if TYPE_CHECKING:
    from ttscale.cost import CostMeter
    from ttscale.protocols import AnswerTools


@dataclass
class SolveContext:
    """The metered backend, the answer tools, the sampling defaults and a per-problem seeded RNG.

    `params.seed` is already specific to this problem, so per-request seeds stay reproducible
    whatever order problems finish in.
    """

    backend: "CostMeter"
    answers: "AnswerTools"
    params: SampleParams
    rng: random.Random = field(default_factory=random.Random)


class AnswerView:
    """A benchmark seen through extraction and equivalence only: no grade(), no gold data."""

    __slots__ = ("_benchmark",)

    def __init__(self, benchmark: "AnswerTools"):
        self._benchmark = benchmark

    def extract_answer(self, text: str) -> str | None:
        """The final answer stated in a solution."""
        return self._benchmark.extract_answer(text)

    def equivalent(self, a: str, b: str) -> bool:
        """Whether two answers are the same answer."""
        return self._benchmark.equivalent(a, b)
