"""Diverse Verifier Tree Search (Beeching et al., search-and-learn): N/M independent subtrees.

Each subtree is a greedy search on the PRM: every step expands its one beam into M children and
follows the best-scored child. The subtrees never compete, which keeps the N solutions diverse.

    subtrees = N/M empty solutions
    for step in 1..max_steps (the last step runs to the end):
        for each unfinished subtree:
            children = M continuations of the subtree by one step
            score children with the PRM; aggregate step scores (default: last)
            subtree = best child; the subtree ends if that child ends
    candidates = every subtree's M children from its last expansion   # N solutions
    answer = weighted vote over candidates (sum of scores per equivalent answer)

trace.metadata["subtree"] gives each candidate's subtree, so scaling curves for smaller N can
subsample whole subtrees from one run.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ttscale.context import SolveContext
from ttscale.strategies._search import Beam, resolve_beam_width, expand, score
from ttscale.strategies._selection import majority_vote, max_score, weighted_vote
from ttscale.types import Problem, Trace
from ttscale.verifiers._steps import Aggregation


class DVTS(BaseModel):
    """N/M independent greedy PRM searches, each expanding M children per step."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "dvts"
    needs_verifier: ClassVar[bool] = True

    n: int = Field(default=8, ge=1, description="N: solutions returned (N/M subtrees x M children)")
    beam_width: int = Field(default=4, ge=1, description="M: children per subtree per step; 'sqrt' = sqrt(N)")
    max_steps: int = Field(default=10, ge=1, description="the last step is generated to the end")
    aggregation: Aggregation = "last"
    selection: Literal["weighted-vote", "max-score", "majority", "oracle"] = "weighted-vote"

    _sqrt_width = model_validator(mode="before")(resolve_beam_width)

    @model_validator(mode="after")
    def _width_divides_n(self) -> "DVTS":
        if self.n % self.beam_width:
            raise ValueError(f"n ({self.n}) must be a multiple of beam_width ({self.beam_width}): N/M subtrees")
        return self

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Grow every subtree greedily until it ends; return each one's last M children."""
        ctx.require_verifier(self.name)
        subtrees = [Beam(origin=i) for i in range(self.n // self.beam_width)]
        last_children: list[list[Beam]] = [[] for _ in subtrees]
        for step in range(self.max_steps):
            growing = [i for i, beam in enumerate(subtrees) if not beam.finished]
            if not growing:
                break
            to_the_end = step == self.max_steps - 1
            families = await expand(problem, ctx, [subtrees[i] for i in growing], self.beam_width, to_the_end=to_the_end)
            flat = await score(ctx, [kid for kids in families for kid in kids], self.aggregation)
            for j, i in enumerate(growing):
                kids = flat[j * self.beam_width : (j + 1) * self.beam_width]
                last_children[i] = kids
                subtrees[i] = max(kids, key=lambda beam: beam.score)  # first of equal scores
        finals = [kid for kids in last_children for kid in kids]
        candidates = [beam.to_candidate(ctx) for beam in finals]
        selections = {
            "weighted-vote": weighted_vote(candidates, ctx.answers.equivalent),
            "max-score": max_score(candidates),
            "majority": majority_vote(candidates, ctx.answers.equivalent),
        }
        return Trace(
            candidates=tuple(candidates),
            selections=selections,
            chosen_rule=self.selection,
            metadata={"subtree": [beam.origin for beam in finals]},
        )
