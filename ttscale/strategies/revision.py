"""Sequential revision (Snell et al. 2024, §6): chains of attempts, each revising the last ones.

    chains = N / L                         # --ratio L:chains sets sequential:parallel
    for each chain, concurrently:
        attempts = [LLM(question)]
        repeat L - 1 times:
            attempts += [LLM(template(question, attempts[-k:]))]    # k = history, default 4
    select over all N attempts:
        hierarchical: verifier-weighted best-of-N within each chain, then across the chains' winners
        majority:     majority vote over all N attempts at once

The model is *prompted* to revise; it is not fine-tuned for revision as Snell et al.'s is, so a
small model may copy or worsen its earlier attempts. The per-depth accuracy and the share of
correct answers that a revision turns incorrect (Snell et al. report about 38%) are recorded
so a run shows how much revising helps.

The revision prompt is the problem's own prompt with its last user message replaced by
`template`, which must hold {question} (that message, formatting instructions included) and
{attempts} (the last k attempts, oldest first, each headed "Attempt i:"). Attempts are appended
at the end, so until the window of k slides, each revision's prompt extends the previous one and
vLLM's prefix cache serves the shared part (the CostMeter counts it as cached prompt tokens).
"""

from __future__ import annotations

import asyncio
import string
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ttscale.context import SolveContext
from ttscale.cost import CostMeter
from ttscale.protocols import TraceMetadata
from ttscale.selection import answer_groups, first_answer, majority_vote
from ttscale.types import Candidate, ChatMessage, GenRequest, Problem, Trace
from ttscale.steps import Aggregation, aggregate, split_steps

DEFAULT_TEMPLATE = (
    "{question}\n\n"
    "Here are your previous attempts at this problem, oldest first. Some of them may be wrong.\n\n"
    "{attempts}\n\n"
    "Write a new, better attempt: check the attempts above, fix any mistake, and solve the "
    "problem again step by step in the same answer format."
)
ATTEMPT_HEADER = "Attempt {index}:\n{text}"
TEMPLATE_FIELDS = {"question", "attempts"}


def parse_ratio(ratio: str) -> tuple[int, int]:
    """'L:chains' as (chain length L, number of chains), both >= 1."""
    length, sep, chains = ratio.partition(":")
    try:
        parsed = int(length), int(chains)
    except ValueError:
        parsed = None
    if not sep or parsed is None or min(parsed) < 1:
        raise ValueError(f"ratio {ratio!r}: expected L:CHAINS with positive integers, e.g. 4:2 (2 chains of 4 attempts)")
    return parsed


def _check_ratio(value: str) -> str:
    parse_ratio(value)
    return value


# An "L:chains" option (revision, self-debug): checked when the options are built, parsed by parse_ratio.
Ratio = Annotated[str, AfterValidator(_check_ratio)]


def format_attempts(texts: list[str]) -> str:
    """Attempts as numbered blocks, oldest first."""
    return "\n\n".join(ATTEMPT_HEADER.format(index=i, text=text.strip()) for i, text in enumerate(texts, 1))


class Revision(BaseModel):
    """N attempts as N/L parallel chains of L sequential revisions; hierarchical or majority selection."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "revision"

    n: int = Field(default=8, ge=1, description="N: total attempts per problem (chains x chain length)")
    ratio: Ratio | None = Field(default=None, description="L:chains, sequential:parallel; default N:1 (one chain)")
    history: int = Field(default=4, ge=1, description="k: previous attempts shown in a revision prompt")
    selection: Literal["hierarchical", "majority", "first", "oracle"] | None = Field(
        default=None, description="reported rule; default hierarchical with a verifier, else majority"
    )
    aggregation: Aggregation = Field(default="last", description="how a PRM's step scores become one score")
    template: str = Field(default=DEFAULT_TEMPLATE, description="revision prompt with {question} and {attempts}")

    @field_validator("template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as error:
            raise ValueError(f"not a valid format string ({error}); write literal braces as {{{{ and }}}}") from None
        if used != TEMPLATE_FIELDS:
            raise ValueError(
                f"must use exactly the placeholders {{question}} and {{attempts}}, found {sorted(used) or 'none'}"
                " (write literal braces as {{ and }})"
            )
        return value

    @model_validator(mode="after")
    def _ratio_matches_n(self) -> "Revision":
        length, chains = self.shape
        if length * chains != self.n:
            raise ValueError(
                f"ratio {self.ratio} means {chains} chains of {length} = {length * chains} attempts, but n is "
                f"{self.n}; pass --n {length * chains} or a ratio L:CHAINS with L x CHAINS = {self.n}"
            )
        return self

    @property
    def needs_verifier(self) -> bool:
        """Whether the chosen rule needs a verifier (the runner checks before starting)."""
        return self.selection == "hierarchical"

    @property
    def shape(self) -> tuple[int, int]:
        """(chain length L, number of chains)."""
        return parse_ratio(self.ratio) if self.ratio is not None else (self.n, 1)

    def revision_prompt(self, problem: Problem, attempts: list[str]) -> tuple[ChatMessage, ...]:
        """The problem's prompt with its last user message rewritten to show the last k attempts."""
        *head, last = problem.prompt
        shown = attempts[-self.history :]
        content = self.template.format(question=last.content, attempts=format_attempts(shown))
        return (*head, ChatMessage(role="user", content=content))

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Run every chain concurrently, score the attempts if a verifier is set, then select."""
        if self.selection == "hierarchical":
            ctx.require_verifier(f"{self.name} --selection hierarchical")
        length, chains = self.shape
        # One meter per depth, wrapping the problem's meter: the problem's total still counts
        # everything, and the per-depth meters give the cost of each revision round.
        depth_meters = [CostMeter(ctx.backend) for _ in range(length)]
        texts = await asyncio.gather(*(self._chain(problem, ctx, c, depth_meters) for c in range(chains)))
        candidates = [candidate for chain in texts for candidate in chain]
        if ctx.verifier is not None:
            step_scores = await ctx.verifier.score_steps([split_steps(c.text) for c in candidates])
            candidates = [
                c.model_copy(update={"score": aggregate(s, self.aggregation), "step_scores": tuple(s)})
                for c, s in zip(candidates, step_scores)
            ]
        selections = {
            "majority": majority_vote(candidates, ctx.answers.equivalent),
            "first": first_answer(candidates),
        }
        if ctx.verifier is not None:
            selections["hierarchical"] = hierarchical_vote(
                [candidates[c * length : (c + 1) * length] for c in range(chains)], ctx.answers.equivalent
            )
        chosen = self.selection or ("hierarchical" if ctx.verifier is not None else "majority")
        metadata = {
            "chain_length": length,
            "chains": chains,
            "history": self.history,
            **TraceMetadata(
                # Candidates are chain-major: chain 0's attempts by depth, then chain 1's, ...
                chain=[c for c in range(chains) for _ in range(length)],
                depth=[d for _ in range(chains) for d in range(1, length + 1)],  # 1 = first attempt
                depth_cost=[meter.cost.model_dump() for meter in depth_meters],  # index d-1: depth d
            ),
        }
        return Trace(candidates=tuple(candidates), selections=selections, chosen_rule=chosen, metadata=metadata)

    async def _chain(self, problem: Problem, ctx: SolveContext, chain: int, meters: list[CostMeter]) -> list[Candidate]:
        """One chain: a first attempt, then L-1 revisions, each seeing the last k attempts."""
        attempts: list[Candidate] = []
        for depth, meter in enumerate(meters):
            prompt = problem.prompt if depth == 0 else self.revision_prompt(problem, [a.text for a in attempts])
            params = ctx.params.model_copy(update={"n": 1, "seed": attempt_seed(ctx.params.seed, chain, depth, len(meters))})
            [generation] = await meter.generate([GenRequest(prompt=prompt, params=params)])
            [completion] = generation.completions
            attempts.append(
                Candidate(
                    text=completion.text,
                    answer=ctx.answers.extract_answer(completion.text),
                    num_tokens=completion.num_tokens,
                    finish_reason=completion.finish_reason,
                )
            )
        return attempts


def hierarchical_vote(chains: list[list[Candidate]], equivalent) -> str | None:
    """Snell et al.'s hierarchical selection: verifier-weighted best-of-N within each chain,
    then again across the chains' winners, each winner weighted by its summed score in its chain.
    """
    winners = [w for w in (_weighted_winner(chain, equivalent) for chain in chains) if w is not None]
    best = _weighted_winner(winners, equivalent)
    return best.answer if best is not None else None


def _weighted_winner(candidates: list[Candidate], equivalent) -> Candidate | None:
    """The answer with the largest summed score, as a Candidate carrying that sum as its score."""
    groups = answer_groups(candidates, equivalent)
    if not groups:
        return None
    totals = [sum(c.score or 0.0 for c in group) for group in groups]
    best = max(range(len(groups)), key=lambda i: totals[i])  # first of equal totals
    return groups[best][0].model_copy(update={"score": totals[best]})


def attempt_seed(seed: int | None, chain: int, depth: int, length: int) -> int | None:
    """A distinct seed per attempt: chains share their first prompt and must not share samples."""
    return None if seed is None else (seed + chain * length + depth) & 0x7FFFFFFF
