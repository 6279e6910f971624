"""Adaptive-Consistency (Aggarwal et al. 2023) and ESC (Li et al. 2024): self-consistency that
stops sampling once the majority answer is settled.

    samples = []
    while len(samples) < N:
        b = min(batch, N - len(samples))
        samples += LLM(prompt, n=b, seed=seed + len(samples))     # sample i is seeded seed + i
        classes = answer_classes([extract(s) for s in samples])   # -1: no answer
        if stopping.should_stop(classes): break                    # settled (or give up)
    return samples[stopping.answer_position(classes)]              # ESC: its unanimous window; else majority

Sample i carries the seed best-of-N's sample i gets (vLLM seeds child i of a request seeded s
with s + i), so an adaptive run draws exactly a prefix of best-of-N's samples. It can be replayed
from a recorded best-of-N run with no new generation: `ttscale.stopping.stop_index` on the
recorded answer classes is how many samples it draws, and `answer_position` of those its answer.

The stopping rules (ttscale.stopping.StoppingRule): `-S rule=beta -S threshold=0.95` (the two
leading answers' Beta posterior), `rule=dirichlet`, or `rule=esc -S window=5` (a window of equal
answers, ESC's default 5); `-S give_up=4` also stops when the first 4 samples all disagree;
`-S unanswered=class` counts a sample without an answer as an answer class of its own, as both
references do (default `skip`: it counts toward no class). The batch defaults to 1 (ESC: its
window). Every batch is a request that pays its prompt again; the engine's prefix cache serves
the repeats (the cost's cached prompt tokens say how much, and its structural, cache-independent
count treats every repeat as cached).

Selections: "adaptive" (the default) is the method's answer, `answer_position`: ESC's unanimous
window when it stopped on one, else the leading class of what was drawn; "majority" votes over
the answered samples drawn, "first" takes the first sample's answer.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ttscale.context import SolveContext
from ttscale.selection import answer_classes, first_answer, majority_vote
from ttscale.stopping import StoppingRule, default_batch
from ttscale.strategies.best_of_n import sample_candidates
from ttscale.types import Candidate, GenRequest, Problem, Trace

# StoppingRule's fields may be given flat (-S rule=esc -S window=5) as well as nested.
_RULE_FIELDS = tuple(StoppingRule.model_fields)


class AdaptiveConsistency(BaseModel):
    """Self-consistency in batches of b, up to N samples, stopping when the majority is settled."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "adaptive-consistency"

    n: int = Field(default=16, ge=1, description="N: the most samples drawn for one problem")
    batch: int | None = Field(
        default=None, ge=1, description="samples drawn per request, and how often the rule is checked (default: 1; esc: its window)"
    )
    stopping: StoppingRule = Field(default_factory=StoppingRule, description="when to stop (ttscale.stopping)")
    selection: Literal["adaptive", "majority", "first"] = Field(
        default="adaptive", description="adaptive: the method's answer (ESC: the unanimous window's); majority; first"
    )
    logprobs: int | None = Field(
        default=None, ge=1, le=20,
        description="k: record each token's confidence from its top-k logprobs (DeepConf), and each sample's mean logprob",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_rule_fields(cls, data: Any) -> Any:
        """Fold flat rule fields (rule, threshold, window, min_samples, give_up, unanswered) into `stopping`."""
        if not isinstance(data, dict) or not any(key in data for key in _RULE_FIELDS):
            return data
        data = dict(data)
        stopping = data.get("stopping") or {}
        stopping = stopping.model_dump() if isinstance(stopping, StoppingRule) else dict(stopping)
        stopping.update({key: data.pop(key) for key in _RULE_FIELDS if key in data})
        data["stopping"] = stopping
        return data

    @property
    def step(self) -> int:
        """The batch actually drawn per request."""
        return self.batch if self.batch is not None else default_batch(self.stopping)

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Draw batches until the stopping rule says the majority is settled, then vote."""
        candidates: list[Candidate] = []
        reason, requests = "budget", 0
        while len(candidates) < self.n:
            size = min(self.step, self.n - len(candidates))
            candidates += await self._draw(problem, ctx, start=len(candidates), size=size)
            requests += 1
            classes = answer_classes([c.answer for c in candidates], ctx.answers.equivalent).tolist()
            stop = self.stopping.stop_reason(classes)
            if stop is not None:
                reason = stop
                break
        classes = answer_classes([c.answer for c in candidates], ctx.answers.equivalent).tolist()
        position = self.stopping.answer_position(classes)
        return Trace(
            candidates=tuple(candidates),
            selections={
                "adaptive": candidates[position].answer if position >= 0 else None,
                "majority": majority_vote(candidates, ctx.answers.equivalent),
                "first": first_answer(candidates),
            },
            chosen_rule=self.selection,
            metadata={
                "samples_drawn": len(candidates),
                "stop_reason": reason,  # settled, give-up, or budget (N drawn)
                "requests": requests,
                "posterior": self.stopping.posterior(classes),
            },
        )

    async def _draw(self, problem: Problem, ctx: SolveContext, *, start: int, size: int) -> list[Candidate]:
        """Samples start..start+size-1 of best-of-N's sequence: one request, n=size, seed + start."""
        seed = None if ctx.params.seed is None else ctx.params.seed + start
        params = ctx.params.model_copy(update={"n": size, "seed": seed, "logprobs": self.logprobs})
        [generation] = await ctx.backend.generate([GenRequest(prompt=problem.prompt, params=params)])
        return sample_candidates(generation.completions, ctx, self.logprobs)
