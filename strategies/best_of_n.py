"""Best-of-N: draw N samples in one request, then pick an answer by a selection rule.

    samples = LLM(prompt, n=N)
    answers = [extract(s) for s in samples]
    return select(answers)          # majority vote | first sample | oracle (graded later)

The oracle rule ("any of the N is correct", i.e. coverage) needs the gold answer, so the runner
applies it when grading; the strategy never sees gold answers.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ttscale.context import SolveContext
from ttscale.types import Candidate, GenRequest, Problem, Trace
from ttscale.strategies._selection import first_answer, majority_vote


class BestOfN(BaseModel):
    """N parallel samples; selection by majority vote, first sample, or oracle."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "best-of-n"

    n: int = Field(default=8, ge=1, description="N: the number of samples drawn for one problem")
    selection: Literal["majority", "first", "oracle"] = "majority"

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Sample N completions of the problem's prompt and apply every selection rule."""
        params = ctx.params.model_copy(update={"n": self.n})
        [generation] = await ctx.backend.generate([GenRequest(prompt=problem.prompt, params=params)])
        candidates = tuple(
            Candidate(
                text=c.text,
                answer=ctx.answers.extract_answer(c.text),
                num_tokens=c.num_tokens,
                finish_reason=c.finish_reason,
            )
            for c in generation.completions
        )
        selections = {
            "majority": majority_vote(candidates, ctx.answers.equivalent),
            "first": first_answer(candidates),
        }
        return Trace(candidates=candidates, selections=selections, chosen_rule=self.selection)
