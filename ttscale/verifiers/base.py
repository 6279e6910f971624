"""VerifierBase: the public base class of verifiers, built-in or from another package.

It makes a verifier a pydantic model, so its options are validated like every other plugin's
(an unknown option is an error naming it), and fills in what most verifiers share: the
`benchmark` every verifier factory is handed (answer extraction, and the grader for oracles),
`uses_gold` (False), `backend` (None: run on the generation backend), an outcome score that is
the score of the last step, and a `close` with nothing to release. A subclass sets `name` and
implements `score_steps`; it overrides `score` when it scores whole solutions itself.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ttscale.protocols import Backend, Meter
from ttscale.steps import split_steps
from ttscale.types import Problem


class VerifierBase(BaseModel):
    """Options are validated like every other plugin's; unknown options are errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    benchmark: Any = Field(default=None, exclude=True, repr=False)  # answer tools (and grader, for oracles)
    uses_gold: bool = Field(default=False, exclude=True)

    @property
    def backend(self) -> Backend | None:
        """None: run on the generation backend."""
        return None

    async def score(self, problem: Problem, solutions: Sequence[str], meter: Meter) -> list[float]:
        """Outcome score of a full solution: the score of its last step."""
        step_scores = await self.score_steps(problem, [split_steps(s) or [s] for s in solutions], meter)
        return [scores[-1] if scores else 0.0 for scores in step_scores]

    @abstractmethod  # pydantic models are ABCs: a subclass without it cannot be instantiated
    async def score_steps(self, problem: Problem, steps: Sequence[Sequence[str]], meter: Meter) -> list[list[float]]:
        """One score per step of each solution (higher is better); every verifier implements it."""

    async def close(self) -> None:
        """Nothing to release unless the verifier started its own engine."""
