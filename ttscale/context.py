"""SolveContext: everything a strategy may use for one problem, and nothing it may not."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.protocols import AnswerTools, Backend, Strategy, Verifier, check_trace_metadata
from ttscale.types import Cost, Problem, SampleParams, Trace


@dataclass
class SolveContext:
    """The metered backend, the answer tools, the sampling defaults and a per-problem seeded RNG.

    `params.seed` is already specific to this problem, so per-request seeds stay reproducible
    whatever order problems finish in.
    """

    backend: CostMeter
    answers: "AnswerTools"
    params: SampleParams
    rng: random.Random = field(default_factory=random.Random)
    verifier: "VerifierView | None" = None

    @classmethod
    def for_problem(
        cls,
        problem: Problem,
        *,
        backend: "Backend",
        answers: "AnswerTools",
        params: SampleParams,
        seed: int,
        verifier: "Verifier | None" = None,
    ) -> "SolveContext":
        """A fresh context for one problem: new meters (generator, and verifier if any), params
        and RNG seeded with the per-problem `seed`. The runner and `ttscale.solve` both use it."""
        verifier_meter = CostMeter(verifier.backend or backend, role="verifier") if verifier else None
        return cls(
            backend=CostMeter(backend),
            answers=AnswerView(answers),  # strategies may extract and compare, never grade
            params=params.model_copy(update={"seed": seed}),
            rng=random.Random(seed),
            verifier=VerifierView(verifier, problem, verifier_meter) if verifier_meter else None,
        )

    @property
    def cost(self) -> Cost:
        """Everything spent for this problem so far: generation plus the verifier's meter."""
        return self.backend.cost + self.verifier.meter.cost if self.verifier else self.backend.cost

    async def solve(self, strategy: "Strategy", problem: Problem) -> Trace:
        """Run `strategy` on the blind problem; the Trace comes back with its `cost` filled in.

        The one road a problem's cost travels: the meters count it, this puts it on the Trace,
        and the runner's record and `ttscale.solve` both read `trace.cost`.
        """
        trace = await strategy.solve(problem.blind(), self)
        check_trace_metadata(trace, strategy.name)
        return trace.model_copy(update={"cost": self.cost})

    def require_verifier(self, strategy: str) -> "VerifierView":
        """The verifier, or a clear error for a strategy that cannot run without one."""
        if self.verifier is None:
            raise ConfigError(
                f"strategy {strategy!r} needs a verifier; pass --verifier llm-judge-prm (runs on CPU), "
                "vllm-prm (GPU) or oracle-orm (upper bound)"
            )
        return self.verifier


class VerifierView:
    """A verifier bound to one problem and one metered backend: what a strategy calls.

    Oracle verifiers (uses_gold) are handed the problem with its gold answer; the strategy
    itself still only sees scores.
    """

    def __init__(self, verifier: "Verifier", problem: Problem, meter: CostMeter):
        self._verifier = verifier
        self._problem = problem if verifier.uses_gold else problem.blind()
        self._meter = meter
        self.name: str = verifier.name
        self.uses_gold: bool = verifier.uses_gold

    @property
    def meter(self) -> CostMeter:
        """The verifier-role meter that books this verifier's cost for this problem."""
        return self._meter

    async def score(self, solutions: Sequence[str]) -> list[float]:
        """One outcome score per full solution."""
        return await self._verifier.score(self._problem, solutions, self._meter)

    async def score_steps(self, steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """One score per step, for each partial or full solution given as its list of steps."""
        return await self._verifier.score_steps(self._problem, steps, self._meter)


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
