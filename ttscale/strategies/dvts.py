"""Diverse Verifier Tree Search (Beeching et al., search-and-learn): N/M independent subtrees.

Each subtree is a greedy search on the PRM: every step expands its one beam into M children and
follows the best-scored child. The subtrees never compete, which keeps the N solutions diverse.

    subtrees = N/M empty solutions
    for step in 1..max_steps (default 40; the last step runs to the end):
        for each unfinished subtree:
            children = M continuations of the subtree by one step
            score children with the PRM; aggregate step scores (default: last)
            subtree = best child; the subtree ends if that child ends (EOS, out of tokens, \\boxed)
    candidates = every subtree's M children from its last expansion   # N solutions
    answer = weighted vote over candidates (sum of scores per equivalent answer)

trace.metadata["subtree"] (ttscale.protocols.TraceMetadata) gives each candidate's subtree, so
scaling curves for smaller N can subsample whole subtrees from one run.

This follows search-and-learn's diverse_verifier_tree_search.py: 40 steps by default, and a
subtree ends at \\boxed (`stop_at_boxed`, default True). One difference is kept as an option
(see ttscale/strategies/tree_search.py): `max_tokens_per` "solution" (default) makes --max-tokens bound a
whole solution; "step" gives every step the full --max-tokens, as search-and-learn does.
"""

from __future__ import annotations

from typing import ClassVar

from ttscale.context import SolveContext
from ttscale.protocols import TraceMetadata
from ttscale.strategies.tree_search import Beam, TreeSearchOptions, expand, score, verifier_selections
from ttscale.types import Problem, Trace


class DVTS(TreeSearchOptions):
    """N/M independent greedy PRM searches, each expanding M children per step."""

    name: ClassVar[str] = "dvts"

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
            families = await expand(
                problem, ctx, [subtrees[i] for i in growing], self.beam_width, to_the_end=to_the_end, rules=self.rules
            )
            flat = await score(ctx, [kid for kids in families for kid in kids], self.aggregation)
            for j, i in enumerate(growing):
                kids = flat[j * self.beam_width : (j + 1) * self.beam_width]
                last_children[i] = kids
                subtrees[i] = max(kids, key=lambda beam: beam.score)  # first of equal scores
        finals = [kid for kids in last_children for kid in kids]
        candidates = [beam.to_candidate(ctx) for beam in finals]
        return Trace(
            candidates=tuple(candidates),
            selections=verifier_selections(candidates, ctx),
            chosen_rule=self.selection,
            metadata=TraceMetadata(subtree=[beam.origin for beam in finals]),
        )
