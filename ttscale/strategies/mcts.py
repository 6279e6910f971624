"""Monte-Carlo tree search over reasoning steps, guided by a PRM (OpenR's `vanila_mcts` convention).

A node is a partial solution; its children are its next steps, grown with the same step cutting,
continuation and PRM scoring as beam search (ttscale/strategies/tree_search.py), so vLLM's
prefix cache serves every re-sent prefix. N is the number of simulations, and every simulation
ends in one complete solution (a terminal node, or a rollout's end): N complete paths, the N
candidates, as best-of-N returns N samples and beam search N finished beams. A simulation may
end on a solution an earlier one reached (no new generation then); it is a candidate again, so
the votes over candidates count a solution once per simulation that ended there.

    root = the empty solution
    for simulation in 1..N:                       (and while the FLOPs budget lasts, if one is set)
        path = [root]; node = root
        while node is not terminal:                                        # 1. selection
            if node has no children:                                       # 2. expansion
                k children of node, one new step each (depth max_steps runs to the end)
                PRM-score each: V0 = aggregate(its step scores), prior P = V0 / sum of siblings' V0
                if value == "rollout": node = the best child by the tree policy; break
            node = argmax over children of  Q(child) + U(child)             # tree policy
            path += [node]
        value = V0(node) if node is terminal                               # 3. evaluation
                else the PRM score of one sample rolled out from node to the end ("rollout")
        for every node on path: visits += 1; value_sum += value            # 4. backpropagation
    Q(child) = value_sum / visits, or V0 while unvisited
    puct: U = c(N_p) * P * sqrt(N_p) / (1 + N_c),  c(N_p) = c_puct + log((N_p + c_base + 1) / c_base)
    uct:  U = c_uct * sqrt(ln N_p / N_c); unvisited children first, the best-scored of them first
    answer: follow the most-visited child from the root to a solution ("visits"), or the best
            Q ("value"); or a vote over the N simulations' solutions (majority, weighted-vote, max-score)

Which paper's variant each default follows, and where this differs:

- Simulation to a terminal node, value = the PRM's score of where it ends, children initialised
  with their PRM score (V0), unvisited children picked by V0: OpenR (openreasoner/openr,
  reason/guided_search/tree.py, `vanila_mcts` with `init_critic_value`, PRM-last as the value).
- PUCT with c_puct = 1.25 and c_base = 19652: OpenR's `_ucb_score` (AlphaZero's pb_c_init and
  pb_c_base). OpenR's prior is the policy's own probability of the step; here it is the PRM's
  score normalised over the siblings (the verifier as prior); OpenR's root Dirichlet noise is
  not used (its `vanila_mcts` leaves it out too).
- `tree_policy=uct`: UCT (Kocsis & Szepesvári 2006) with the textbook c = sqrt(2), as rStar-Math
  (Guan et al. 2025) selects, with Q initialised from its PRM (the PPM); optillm's mcts.py uses
  UCT with c = 0.2 and value_sum / (visits + 1e-8), which ranks unvisited children first too.
  rStar-Math's own constants and its code-execution filter are not reproduced.
- `value=rollout`: classic MCTS (optillm's `simulate`, ReST-MCTS*'s and rStar-Math's rollouts to
  an answer): a new leaf's best child is rolled out to the end with one sample at the run's
  temperature; the rollout's PRM score is the value and the rolled-out solution the path. The
  rollout is not added to the tree. ReST-MCTS*'s weighted value and rStar-Math's terminal
  correctness reward need gold or training data and are left out (strategies never see gold).
- `selection=visits` (default): the most-visited path, as AlphaZero and optillm choose the root's
  most-visited child, continued down to a solution; ties go to the higher Q, then the earlier.
- `width` = 4 children per expansion (OpenR's `tree_max_width` is its config's; 4 here matches
  beam search's default M); `max_steps` = 40, `max_tokens_per` and `stop_at_boxed` (default
  true: a step stating \\boxed ends the solution, as OpenR's environment stops at the answer)
  are the tree searches' StepRules.

Budgets. Samples: exactly N simulations, so at most N solutions and at most N·max_steps
expansions of `width` steps (plus N rollouts). FLOPs (`max_flops`, optional): the problem's
cache-independent FLOPs (`ctx.cost.structural_flops`: generation plus verifier, what `compare`
matches on). The search starts an expansion only while what is spent plus the dearest expansion
so far (its generation, scoring and rollout) fits the budget; a simulation cut short this way is
dropped. This is a stopping rule, not a hard cap: the first expansion always runs, and one
dearer than every earlier one can pass the budget by its excess, which the trace records
(`flops_over_budget`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ttscale.context import SolveContext
from ttscale.selection import majority_vote, max_score, weighted_vote
from ttscale.steps import Aggregation
from ttscale.strategies.tree_search import Beam, StepRules, TokenBudget, expand, score
from ttscale.types import Problem, Trace


@dataclass(eq=False)
class Node:
    """A partial (or complete) solution in the tree, with its search statistics."""

    beam: Beam
    parent: "Node | None" = None
    depth: int = 0
    prior: float = 1.0
    children: list["Node"] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    rollouts: list[Beam] = field(default_factory=list)  # solutions rolled out from here ("rollout")

    @property
    def terminal(self) -> bool:
        return self.beam.finished

    @property
    def q(self) -> float:
        """Mean backed-up value; the PRM's score (V0) while unvisited (OpenR's initial value)."""
        return self.value_sum / self.visits if self.visits else self.beam.score


def normalised(scores: list[float]) -> list[float]:
    """Scores as priors summing to 1 (uniform when all are 0)."""
    total = sum(scores)
    return [s / total for s in scores] if total > 0 else [1.0 / len(scores)] * len(scores)


def puct(parent: Node, child: Node, c_init: float, c_base: float) -> float:
    """OpenR's (AlphaZero's) PUCT score: Q + c(N_p) · P · sqrt(N_p) / (1 + N_c)."""
    c = c_init + math.log((parent.visits + c_base + 1) / c_base)
    return child.q + c * child.prior * math.sqrt(parent.visits) / (1 + child.visits)


def uct(parent: Node, child: Node, c: float) -> float:
    """UCT: Q + c · sqrt(ln N_p / N_c); an unvisited child ranks above every visited one."""
    if child.visits == 0:
        return math.inf
    return child.q + c * math.sqrt(math.log(parent.visits) / child.visits)


def walk(node: Node):
    """The node and all its descendants, depth first, children in generation order."""
    yield node
    for child in node.children:
        yield from walk(child)


class Search:
    """One problem's tree and what its search has spent: the per-problem state of an MCTS run."""

    def __init__(self, options: "MCTS", problem: Problem, ctx: SolveContext):
        self.options, self.problem, self.ctx = options, problem, ctx
        self.root = Node(Beam())
        self.dearest = 0.0  # the most FLOPs one expansion (with its rollout) has cost
        self.expansion_began = 0.0  # the FLOPs spent when the latest expansion began

    async def simulate(self) -> Beam | None:
        """One simulation; the complete solution it ended in, or None when the FLOPs budget stopped it."""
        path, node = [self.root], self.root
        while not node.terminal:  # 1. selection, down to a terminal node
            if not node.children:  # 2. expansion
                if not self.affordable():
                    return None
                await self.expand(node)
                if self.options.value == "rollout":  # 3. evaluation of the new leaf's best child by a rollout
                    node = self.best_child(node)
                    path.append(node)
                    solution = node.beam if node.terminal else await self.rollout(node)
                    backpropagate(path, solution.score)  # 4. backpropagation
                    return solution
            node = self.best_child(node)
            path.append(node)
        backpropagate(path, node.beam.score)  # 3-4. the terminal node's PRM score, backed up
        return node.beam

    def affordable(self) -> bool:
        """Whether the next expansion fits the FLOPs budget, predicted by the dearest one so far."""
        budget = self.options.max_flops
        return budget is None or self.ctx.cost.structural_flops + self.dearest <= budget

    def book(self) -> None:
        """Note what the latest expansion (with its rollout, if any) has cost so far."""
        self.dearest = max(self.dearest, self.ctx.cost.structural_flops - self.expansion_began)

    async def expand(self, node: Node) -> None:
        """Give `node` its k children: one step each, PRM-scored; priors are the normalised scores."""
        options, self.expansion_began = self.options, self.ctx.cost.structural_flops
        last = node.depth == options.max_steps - 1
        [kids] = await expand(self.problem, self.ctx, [node.beam], options.width, to_the_end=last, rules=options.rules)
        kids = await score(self.ctx, kids, options.aggregation)
        priors = normalised([kid.score for kid in kids])
        node.children = [Node(kid, parent=node, depth=node.depth + 1, prior=p) for kid, p in zip(kids, priors)]
        self.book()

    async def rollout(self, node: Node) -> Beam:
        """One sample from `node` to the end, PRM-scored; kept on the node, not added to the tree.
        Its cost counts with the expansion just made (the node's parent's)."""
        [[ending]] = await expand(self.problem, self.ctx, [node.beam], 1, to_the_end=True, rules=self.options.rules)
        [ending] = await score(self.ctx, [ending], self.options.aggregation)
        node.rollouts.append(ending)
        self.book()
        return ending

    def best_child(self, node: Node) -> Node:
        """The child the tree policy picks (ties: the best-scored, then the earliest)."""
        o = self.options
        if o.tree_policy == "puct":
            return max(node.children, key=lambda c: (puct(node, c, o.c_puct, o.c_base), c.beam.score))
        return max(node.children, key=lambda c: (uct(node, c, o.c_uct), c.beam.score))


def backpropagate(path: list[Node], value: float) -> None:
    """Add one visit and `value` to every node on the simulation's path."""
    for node in path:
        node.visits += 1
        node.value_sum += value


def descend(root: Node, by: Literal["visits", "value"]) -> Beam | None:
    """The solution reached by following the most-visited (or best-Q) visited child from the root
    (ties: the other statistic, then the earlier child); None before any simulation."""
    node = root
    while visited := [c for c in node.children if c.visits]:
        node = max(visited, key=lambda c: (c.visits, c.q) if by == "visits" else (c.q, c.visits))
    if node.terminal:
        return node.beam
    return max(node.rollouts, key=lambda b: b.score, default=None)  # a leaf evaluated by rollout


class MCTS(BaseModel):
    """Monte-Carlo tree search over steps: N simulations, PUCT/UCT on PRM values, k children per expansion."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "mcts"
    needs_verifier: ClassVar[bool] = True

    n: int = Field(default=8, ge=1, description="N: simulations, each ending in one complete solution")
    width: int = Field(default=4, ge=1, description="k: children generated per expansion")
    tree_policy: Literal["puct", "uct"] = Field(default="puct", description="puct (OpenR) or uct (rStar-Math, optillm)")
    c_puct: float = Field(default=1.25, ge=0.0, description="PUCT's c_init (OpenR's pb_c_init)")
    c_base: float = Field(default=19652.0, gt=0.0, description="PUCT's c_base (OpenR's pb_c_base)")
    c_uct: float = Field(default=math.sqrt(2), ge=0.0, description="UCT's exploration constant")
    value: Literal["verifier", "rollout"] = Field(
        default="verifier", description="verifier: descend to a terminal node, its PRM score (OpenR); rollout: one sample to the end"
    )
    max_flops: float | None = Field(default=None, gt=0.0, description="stop before an expansion that would pass these FLOPs")
    max_steps: int = Field(default=40, ge=1, description="depth limit; a node at depth max_steps - 1 is expanded to the end")
    aggregation: Aggregation = "last"
    selection: Literal["visits", "value", "weighted-vote", "max-score", "majority", "oracle"] = "visits"
    stop_at_boxed: bool = Field(default=True, description="a step stating \\boxed ends the solution")
    max_tokens_per: TokenBudget = Field(
        default="solution", description="what --max-tokens bounds: a whole solution, or each step (search-and-learn)"
    )

    @property
    def rules(self) -> StepRules:
        return StepRules(stop_at_boxed=self.stop_at_boxed, max_tokens_per=self.max_tokens_per)

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Run N simulations (select, expand, evaluate, back up), then pick the answer."""
        ctx.require_verifier(self.name)
        search = Search(self, problem, ctx)
        solutions: list[Beam] = []  # the complete path of each simulation, in order
        stopped_by = "n"
        for _ in range(self.n):
            ended = await search.simulate()
            if ended is None:
                stopped_by = "max_flops"
                break
            solutions.append(ended)
        return self._trace(ctx, search.root, solutions, stopped_by)

    def _trace(self, ctx: SolveContext, root: Node, solutions: list[Beam], stopped_by: str) -> Trace:
        candidates = [beam.to_candidate(ctx) for beam in solutions]  # one per simulation, as beam search's N beams
        picks = {rule: descend(root, rule) for rule in ("visits", "value")}
        selections = {rule: ctx.answers.extract_answer(beam.text) if beam else None for rule, beam in picks.items()}
        selections |= {
            "weighted-vote": weighted_vote(candidates, ctx.answers.equivalent),
            "max-score": max_score(candidates),
            "majority": majority_vote(candidates, ctx.answers.equivalent),
        }
        nodes = list(walk(root))
        index = {id(node): i for i, node in enumerate(nodes)}
        tree = [
            {
                "parent": index[id(node.parent)] if node.parent else None,
                "visits": node.visits,
                "q": round(node.q, 6),
                "prior": round(node.prior, 6),
                "score": node.beam.score,
                "terminal": node.terminal,
                "step": node.beam.steps[-1][:60] if node.beam.text else "",
            }
            for node in nodes
        ]
        spent = ctx.cost.structural_flops
        return Trace(
            candidates=tuple(candidates),
            selections=selections,
            chosen_rule=self.selection,
            metadata={
                "simulations": len(solutions),
                "stopped_by": stopped_by,
                "expansions": sum(1 for node in nodes if node.children),
                "generated_steps": len(nodes) - 1 + sum(len(node.rollouts) for node in nodes),
                "distinct_solutions": len({beam.text for beam in solutions}),
                "tree": tree,
                "flops_over_budget": max(0.0, spent - self.max_flops) if self.max_flops else 0.0,
            },
        )
