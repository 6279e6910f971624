"""PRM-guided beam search (Snell et al. 2024), in the search-and-learn convention.

N is the number of beams generated per step and M the beam width: every step keeps the best
N/M unfinished beams and expands each into M children (when fewer than N/M are left, the
survivors are repeated so the step still generates N children, as search-and-learn does).

    active = [empty solution]
    for step in 1..max_steps:                                     # max_steps = 40
        children = N children of `active`, one new step each (the last step runs to the end)
        if lookahead k: roll each child k greedy steps further (paid for, then dropped)
        score children with the PRM over child + rollout (score_rollouts), or child alone
        aggregate step scores (default: last)
        finished += children that end (EOS, out of tokens; \\boxed if stop_at_boxed)
        active = top N/M unfinished children (duplicates dropped if filter_duplicates)
    candidates = the first N finished beams, in finishing order (the N best if sort_completed),
                 repeated if fewer finished
    answer = weighted vote over candidates: sum of scores per equivalent answer (Snell et al.)

Snell et al.'s sweep: --beam-width = sqrt(N) or 4, --lookahead 0, 1 or 3.

Against search-and-learn's beam_search.py (see ttscale/strategies/tree_search.py for the shared options):

- `sort_completed` (default False, as search-and-learn): the candidates are the first N beams
  to finish; True keeps the N best-scored finished beams instead.
- `score_rollouts` (default True): a child's score is the PRM's over its text plus its
  lookahead rollout, as Snell et al. define lookahead search (and search-and-learn's DVTS
  does). search-and-learn's beam search generates the rollout but scores only the child's own
  text; `score_rollouts=false` does that (the rollout is still generated and paid for).
- `stop_at_boxed` (default False, as search-and-learn's beam search): a beam that states
  \\boxed goes on until EOS; True ends it at that step.
- `max_tokens_per` (default "solution"; "step" as search-and-learn) and `max_steps` (40).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ttscale.context import SolveContext
from ttscale.strategies.tree_search import Beam, TreeSearchOptions, expand, lookahead_texts, score, verifier_selections
from ttscale.types import Problem, Trace


def top_beams(beams: list[Beam], keep: int) -> list[Beam]:
    """The `keep` best-scored beams, best first; ties keep the earlier beam (stable sort)."""
    return sorted(beams, key=lambda beam: -beam.score)[:keep]


def unique_beams(beams: list[Beam]) -> list[Beam]:
    """Beams with distinct texts, first occurrence kept (search-and-learn's filter_duplicates)."""
    seen: set[str] = set()
    return [b for b in beams if not (b.text in seen or seen.add(b.text))]


def repeat_to(beams: list[Beam], count: int) -> list[Beam]:
    """`beams` repeated in order until there are `count` of them."""
    return [beams[i % len(beams)] for i in range(count)] if beams else []


def children_per_beam(num_beams: int, total: int) -> list[int]:
    """How many of `total` children each of `num_beams` beams gets: M each when N/M are kept,
    and the survivors share all N when fewer are left (search-and-learn repeats them to N)."""
    return [total // num_beams + (i < total % num_beams) for i in range(num_beams)]


class BeamSearch(TreeSearchOptions):
    """PRM-guided beam search: keep N/M beams, expand each into M children per step."""

    name: ClassVar[str] = "beam-search"

    lookahead: int = Field(default=0, ge=0, description="greedy steps rolled out only for scoring")
    filter_duplicates: bool = False
    sort_completed: bool = Field(
        default=False, description="candidates: the N best finished beams, not the first N to finish (search-and-learn)"
    )
    score_rollouts: bool = Field(
        default=True, description="score a child with its lookahead rollout (Snell et al.); false: its own text only"
    )
    stop_at_boxed: bool = Field(default=False, description="a step stating \\boxed ends the beam (search-and-learn's beam search: no)")

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Search step by step, then vote over the finished beams."""
        ctx.require_verifier(self.name)
        keep = self.n // self.beam_width
        active, finished, log = [Beam()], [], []
        for step in range(self.max_steps):
            last = step == self.max_steps - 1
            widths = children_per_beam(len(active), self.n)
            families = await expand(problem, ctx, active, widths, to_the_end=last, rules=self.rules)
            children = [kid for kids in families for kid in kids]
            rollouts = await lookahead_texts(problem, ctx, children, self.lookahead, self.rules) if self.lookahead else None
            children = await score(ctx, children, self.aggregation, rollouts if self.score_rollouts else None)
            finished += [c for c in children if c.finished]
            active = [c for c in children if not c.finished]
            if self.filter_duplicates:
                active = unique_beams(active)
            active = top_beams(active, keep)
            log.append({"children": len(children), "finished": len(finished), "kept_scores": [b.score for b in active]})
            if not active:
                break
        kept = top_beams(finished, self.n) if self.sort_completed else finished[: self.n]
        best = repeat_to(kept, self.n)
        candidates = [beam.to_candidate(ctx) for beam in best]
        return Trace(
            candidates=tuple(candidates),
            selections=verifier_selections(candidates, ctx),
            chosen_rule=self.selection,
            metadata={"steps": log, "finished_beams": len(finished)},
        )
