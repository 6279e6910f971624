"""Best-of-N: draw N samples in one request, then pick an answer by a selection rule.

    samples = LLM(prompt, n=N)
    answers = [extract(s) for s in samples]
    if verifier: scores = [aggregate(PRM(s)) for s in samples]     # or an ORM's score
    return select(answers, scores)   # majority | first | max-score | weighted-vote | oracle

max-score is "ORM/PRM best-of-N"; weighted-vote sums the scores of equivalent answers (Snell et
al.'s "best-of-N weighted"). The oracle rule ("any of the N is correct", i.e. coverage) needs the
gold answer, so the runner applies it when grading; the strategy never sees gold answers.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ttscale.confidence import mean_logprob, token_confidences
from ttscale.context import SolveContext
from ttscale.selection import first_answer, majority_vote, max_score, weighted_vote
from ttscale.types import Candidate, GenRequest, Problem, Trace
from ttscale.steps import Aggregation, aggregate, split_steps

VERIFIER_RULES = ("max-score", "weighted-vote")


class BestOfN(BaseModel):
    """N parallel samples; selection by majority vote, first sample, verifier max or weighted vote."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "best-of-n"

    n: int = Field(default=8, ge=1, description="N: the number of samples drawn for one problem")
    selection: Literal["majority", "first", "max-score", "weighted-vote", "oracle"] = "majority"
    aggregation: Aggregation = Field(default="last", description="how a PRM's step scores become one score")
    logprobs: int | None = Field(
        default=None, ge=1, le=20,
        description="k: record each token's confidence from its top-k logprobs (DeepConf), and each sample's mean logprob",
    )

    @property
    def needs_verifier(self) -> bool:
        """Whether the chosen rule needs a verifier (the runner checks before starting)."""
        return self.selection in VERIFIER_RULES

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Sample N completions of the problem's prompt and apply every selection rule."""
        if self.selection in VERIFIER_RULES:
            ctx.require_verifier(f"{self.name} --selection {self.selection}")
        params = ctx.params.model_copy(update={"n": self.n, "logprobs": self.logprobs})
        [generation] = await ctx.backend.generate([GenRequest(prompt=problem.prompt, params=params)])
        candidates = [
            Candidate(
                text=c.text,
                answer=ctx.answers.extract_answer(c.text),
                num_tokens=c.num_tokens,
                finish_reason=c.finish_reason,
                token_confidences=token_confidences(c, self.logprobs) if self.logprobs else None,
                mean_logprob=mean_logprob(c) if self.logprobs else None,
            )
            for c in generation.completions
        ]
        selections = {
            "majority": majority_vote(candidates, ctx.answers.equivalent),
            "first": first_answer(candidates),
        }
        if ctx.verifier is not None:
            step_scores = await ctx.verifier.score_steps([split_steps(c.text) for c in candidates])
            candidates = [
                c.model_copy(update={"score": aggregate(s, self.aggregation), "step_scores": tuple(s)})
                for c, s in zip(candidates, step_scores)
            ]
            selections["max-score"] = max_score(candidates)
            selections["weighted-vote"] = weighted_vote(candidates, ctx.answers.equivalent)
        return Trace(candidates=tuple(candidates), selections=selections, chosen_rule=self.selection)
