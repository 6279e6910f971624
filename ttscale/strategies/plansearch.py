"""PlanSearch (Wang et al. 2024, "Planning In Natural Language Improves LLM Search For Code
Generation"; reference code scaleapi/plansearch, search/combo_observation_model.py): search over
natural-language plans rather than over programs, for diverse candidates.

    observations = parse(LLM(observations_prompt(question, O)))     # one call: a list of O hints
    subsets      = every subset of observations of size 0..K        # K = max_combination
    shuffle(subsets); subsets = subsets[:N]                         # the per-problem seeded RNG
    plans        = [LLM(plan_prompt(question, s)) for s in subsets] # one batched call each stage
    programs     = [LLM(question + "follow this plan" + p) for p in plans]
    run(programs, visible tests); select: pass-examples | behaviour-vote | first | random | majority

What the reference does and this does not, scaled to a 135M model on 2 CPU cores:
- the paper and reference ask for 10 first-order observations, take every subset of at most
  K = 2, then ask for derived (second-order) observations from each subset and take subsets of
  those too: hundreds of plans per problem. Here: O = `observations` (default 4) first-order
  ones and K = `max_combination` (default 2), so 1 + 4 + 6 = 11 subsets, of which N (default 8)
  become plans. The derived-observation stage is not built.
- the reference turns the model's observations into a Python list with three more calls
  (list them, keep the useful ones, format as a list); here the reply is started with "1." (an
  assistant prefix) and its numbered or bulleted lines are parsed with a regular expression (a
  small model does not follow those format requests).
- the reference goes plan -> pseudocode -> program; here plan -> program (one call fewer).
Fewer subsets than N (few observations parsed) give fewer programs: the run draws no filler.

Every call goes through ctx.backend (the cost meter): 1 + 2 x min(N, subsets) calls per problem.
Only the visible tests (the prompt's examples) run; the hidden tests stay on the benchmark.
"""

from __future__ import annotations

import itertools
import re
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ttscale.code_exec import code_arrays, exec_metadata, execute_async
from ttscale.context import SolveContext
from ttscale.selection import code_selections
from ttscale.types import Candidate, ChatMessage, Completion, GenRequest, Problem, Trace

OBSERVATIONS_PROMPT = (
    "Here is a programming problem:\n\n{question}\n\n"
    "Do not solve it yet. Brainstorm a numbered list of {count} useful, non-obvious and correct observations "
    "about the problem, like hints to solve it, each one line long. Do not write any code."
)
PLAN_PROMPT = (
    "Here is a programming problem:\n\n{question}\n\n{observations}"
    "Use the observations above to write a natural-language solution to the problem: a short step-by-step "
    "plan, like an editorial. Do not write any code."
)
PROGRAM_SUFFIX = "\n\nSolve it by following this plan:\n{plan}"
NO_OBSERVATION = "No observations are necessary to solve this problem.\n\n"
# The observations reply is started with this, so that even a small model continues a numbered
# list (without it, the embedded model listed nothing parseable on 16 of 20 HumanEval problems).
LIST_START = "1."
# "1. text", "2) text", "- text", "* text", "Observation 3: text"
LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•]|observation\s*\d+\s*:)\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def parse_observations(text: str, limit: int) -> list[str]:
    """The first `limit` distinct items of a numbered or bulleted list in `text`."""
    items: list[str] = []
    for match in LIST_ITEM.finditer(text):
        item = match.group(1).strip()
        if item and item not in items:
            items.append(item)
    return items[:limit]


def observation_subsets(count: int, max_size: int) -> list[tuple[int, ...]]:
    """Every subset of `count` observations (as indices) of size 0..max_size, smallest first."""
    return [s for size in range(min(max_size, count) + 1) for s in itertools.combinations(range(count), size)]


def observations_block(observations: list[str]) -> str:
    """The observations a plan is asked to use, as a bulleted list (or that none are needed)."""
    if not observations:
        return NO_OBSERVATION
    return "Here are observations that help solve the problem:\n" + "".join(f" - {o}\n" for o in observations) + "\n"


class PlanSearch(BaseModel):
    """Observations about the problem, subsets of them made into natural-language plans, one
    program per plan; selection over the programs by a code rule."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "plansearch"

    n: int = Field(default=8, ge=1, description="N: the most plans (and programs) per problem")
    observations: int = Field(default=4, ge=1, le=20, description="O: first-order observations asked for (paper: 10)")
    max_combination: int = Field(default=2, ge=0, le=4, description="K: the largest subset of observations in one plan (paper: 2)")
    selection: Literal["pass-examples", "behaviour-vote", "first", "random", "majority"] = Field(
        default="pass-examples", description="the rule over the programs")
    test_timeout_s: float = Field(default=2.0, gt=0, le=60, description="the wall clock of one visible test")

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Observations, then plans, then programs (one batched call per stage), then selection."""
        *head, last = problem.prompt if not isinstance(problem.prompt, str) else (ChatMessage(role="user", content=problem.prompt),)
        question = last.content

        [observed] = await self._generate(ctx, [OBSERVATIONS_PROMPT.format(question=question, count=self.observations)], head,
                                          prefix=LIST_START)
        observations = parse_observations(LIST_START + observed.text, self.observations)
        subsets = observation_subsets(len(observations), self.max_combination)
        ctx.rng.shuffle(subsets)  # as the reference shuffles its combinations, seeded per problem
        subsets = subsets[: self.n]

        plan_prompts = [PLAN_PROMPT.format(question=question, observations=observations_block([observations[i] for i in s]))
                        for s in subsets]
        plans = await self._generate(ctx, plan_prompts, head, seed_offset=1)
        programs = await self._generate(ctx, [question + PROGRAM_SUFFIX.format(plan=p.text.strip()) for p in plans], head,
                                        seed_offset=1 + len(subsets))

        candidates = [Candidate(text=c.text, answer=ctx.answers.extract_answer(c.text), num_tokens=c.num_tokens,
                                finish_reason=c.finish_reason) for c in programs]
        results = await execute_async(problem, [c.answer for c in candidates], test_timeout_s=self.test_timeout_s)
        passed, behaviour = code_arrays(results)
        selections = code_selections(candidates, passed, behaviour, ctx.answers.equivalent,
                                     np.random.default_rng(ctx.rng.getrandbits(64)))
        metadata = {
            **exec_metadata(results),
            "observations_text": observed.text,  # the model's reply, after the "1." it was started with
            "observations": observations,
            "plan_observations": [list(s) for s in subsets],  # per candidate: the observations its plan used
            "plans": [p.text for p in plans],
        }
        return Trace(candidates=tuple(candidates), selections=selections, chosen_rule=self.selection, metadata=metadata)

    async def _generate(self, ctx: SolveContext, contents: list[str], head: list[ChatMessage], seed_offset: int = 0,
                        prefix: str = "") -> list[Completion]:
        """One sample for each user message (after the prompt's earlier messages, the reply
        started with `prefix`), in one metered call; request i is seeded seed + seed_offset + i,
        so no two stages share a sample."""
        if not contents:
            return []
        seed = ctx.params.seed
        requests = [
            GenRequest(prompt=(*head, ChatMessage(role="user", content=content)), prefix=prefix,
                       params=ctx.params.model_copy(update={"n": 1, "seed": None if seed is None else (seed + seed_offset + i) & 0x7FFFFFFF}))
            for i, content in enumerate(contents)
        ]
        generations = await ctx.backend.generate(requests)
        return [g.completions[0] for g in generations]
