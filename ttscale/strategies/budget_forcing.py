"""Budget forcing (s1: Muennighoff et al. 2025, "s1: Simple test-time scaling"): sequential scaling
by controlling how long a model thinks.

    thinking = think(prompt, budget=B)      # at most B generated tokens; each time the model ends
                                            # its thinking early, "Wait" replaces the end delimiter,
                                            # `extensions` times at most (s1's thinking_n_ignore)
    answer   = LLM(prompt + thinking + end [+ "Final Answer:" where B cut it])
    return extract(answer span only)

The mechanics are ttscale.thinking's (thinking-aware generation: spans generated, recorded and
counted apart). Every request goes through the problem's meter; the prompt each continuation
re-reads is priced by the cost model (the prefix cache serves it).

A budget sweep is one run: `-S thinking_budget=[64,128,256]` thinks once up to the largest budget,
continuing the same thinking span, and forces an answer at each budget on the way. Decoding
greedily, each budget's candidate is what a run with that budget alone would give (sampling, a
draw from the same distribution: ttscale.thinking.Thinker), and its recorded cost is what that
run would spend: the thinking up to its budget plus its own answer. A thinking that ended by itself before a budget gives that
budget the same candidate and cost as the smaller one (a run at the larger budget would stop at
the same place). `ttscale compare` draws the budgets as one scaling curve (its N column is the
thinking budget). The "forced" rule reports the largest budget's answer.

Sampling follows the run's --temperature (s1 decodes greedily: pass --temperature 0).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ttscale.context import SolveContext
from ttscale.cost import CostMeter
from ttscale.protocols import TraceMetadata
from ttscale.thinking import DELIMITERS, FORCED_RULE, DelimiterName, Spans, Thinker, ThinkingFormat
from ttscale.types import Candidate, Cost, Problem, Trace


class BudgetForcing(BaseModel):
    """Think up to a token budget, suppress early ends with "Wait", then force the answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "budget-forcing"

    thinking_budget: tuple[int, ...] = Field(
        default=(512,), description="tokens the thinking span may generate; a list sweeps several budgets in one run")
    extensions: int = Field(default=1, ge=0, description='times an early end of thinking is suppressed by "Wait" (s1: 1 to 6)')
    wait: str = Field(default="Wait", min_length=1, description="what replaces a suppressed end of thinking")
    delimiters: DelimiterName = Field(default="think", description="think: <think>...</think>; plain: no opening, 'Final answer:' closes")
    think_start: str | None = Field(default=None, description="overrides the delimiters' opening")
    think_end: str | None = Field(default=None, min_length=1, description="overrides the delimiters' end of thinking")
    cut_cue: str | None = Field(default=None, description="overrides what follows the end delimiter at a cut")
    answer_max_tokens: int | None = Field(default=None, ge=1, description="tokens of the answer span (default: the run's --max-tokens)")

    @field_validator("thinking_budget", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, int) else value

    @field_validator("thinking_budget")
    @classmethod
    def _budgets(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(b < 1 for b in value):
            raise ValueError(f"needs positive token budgets, e.g. 512 or [128,256,512]; got {list(value)}")
        return tuple(sorted(set(value)))

    @property
    def format(self) -> ThinkingFormat:
        """The delimiters in use: the preset with any overrides."""
        preset = DELIMITERS[self.delimiters]
        overrides = {"start": self.think_start, "end": self.think_end, "cut_cue": self.cut_cue}
        return preset.model_copy(update={k: v for k, v in overrides.items() if v is not None})

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Think once up to the largest budget; force an answer at each budget on the way."""
        fmt = self.format
        thinker = Thinker(problem.prompt, ctx.params, fmt, extensions=self.extensions, wait=self.wait)
        answer_tokens = self.answer_max_tokens or ctx.params.max_tokens
        candidates: list[Candidate] = []
        records: list[dict[str, Any]] = []
        thought = Cost()  # the thinking so far
        last: tuple[Any, Candidate, Spans, Cost] | None = None
        for budget in self.thinking_budget:
            # Own meters inside the problem's: the problem's total counts everything once, these
            # give each budget the cost of a run at that budget alone.
            thinking_meter = CostMeter(ctx.backend)
            await thinker.think_to(thinking_meter, budget)
            thought = thought + thinking_meter.cost
            state = (thinker.thinking, thinker.ended_by)
            if last is not None and last[0] == state:  # ended by itself below this budget: the same sample
                _, candidate, spans, cost = last
            else:
                answer_meter = CostMeter(ctx.backend)
                spans = await thinker.answer(answer_meter, answer_tokens)
                cost = thought + answer_meter.cost
                candidate = Candidate(text=spans.text(fmt), answer=ctx.answers.extract_answer(spans.answer),
                                      num_tokens=spans.thinking_tokens + spans.answer_tokens,
                                      finish_reason=spans.finish_reason)
            last = (state, candidate, spans, cost)
            candidates.append(candidate)
            records.append({"budget": budget, **spans.model_dump(exclude={"thinking", "answer"}), "cost": cost.model_dump()})
        metadata = {
            "delimiters": fmt.model_dump(),
            "wait": self.wait,
            "allowed_extensions": self.extensions,
            **TraceMetadata(thinking=records),
        }
        return Trace(candidates=tuple(candidates), selections={FORCED_RULE: candidates[-1].answer}, chosen_rule=FORCED_RULE,
                     metadata=metadata)
