"""DeepConf (Fu et al. 2025, "Deep Think with Confidence"): vote with the traces the model was
sure of, and stop the others early. No verifier, no gold: confidence is read from each trace's
own top-k logprobs (ttscale.confidence).

    C_i = -mean of token i's top-k logprobs;  group confidence = mean C_i over `window` tokens

Offline (-S mode=offline), over N traces drawn as best-of-N draws them:

    traces = LLM(prompt, n=N, logprobs=k)                         # trace i seeded seed + i
    score  = [trace_score(t) for t in traces]                     # lowest-group | bottom-10 | tail | mean
                                                                  # (tail: the last `tail` tokens)
    kept   = [t for t in traces if score(t) >= percentile(score, 100 - eta)]
    return weighted_vote(kept, weights=score)                     # "filtered-vote" (DeepConf@N)
    # "confidence-vote": weighted_vote(traces, weights=score), nothing filtered

Online (-S mode=online, the default; Algorithm 2):

    warm  = LLM(prompt, n=N_init, logprobs=k)                     # traces 0..N_init-1, in full
    s     = percentile(lowest_group(warm), 100 - eta)             # eta=10: DeepConf-low, 90: -high
                                                                  # (N_init = 1: s is that trace's score, any eta)
    votes = [t in warm if lowest_group(t) >= s]
    while drawn < N:
        for j in the next `batch` traces (at once):
            t_j = LLM(prompt, n=1, seed=seed + j) streamed, aborted the moment the group
                  confidence of its last `window` tokens falls below s
            if t_j finished and lowest_group(t_j) >= s: votes += t_j   # stopped traces never vote,
        if weighted share of the leading answer in votes >= tau: break #   but their tokens are paid
    return weighted_vote(votes, weights=lowest_group)              # "deepconf"

Trace j carries best-of-N's seed for sample j, so every online decision can be replayed from a
recorded best-of-N run with `-S logprobs=k` (ttscale.confidence.online_replay): same threshold,
same traces stopped at the same token, same answer. A trace shorter than one window is never
stopped, and votes if the mean of all its tokens reaches s (their code's convention). A stopped
trace states no final answer: its candidate's answer is None.

Knobs and the reference's (facebookresearch/deepconf): the group window and the tail length are
set apart, as there (wrapper.py:80 window_size; utils.py:104 tail_tokens; both 2048 for traces of
thousands of tokens, both 16 here for answers of about a hundred). tau = 0.95 by default, the
paper's consensus threshold (the released code draws all N - N_init traces at once and has no
consensus stop, wrapper.py:224); `ttscale adaptive` sweeps 0.6, 0.8 and 0.95 and reports which it
chose, so a measured tau never silently becomes the default. With N_init = 1 eta has no effect
(the percentile of one value is that value): `ttscale adaptive` sweeps eta with N_init >= 2.

Online needs a backend that streams and aborts (StreamingBackend: vllm, fake); the openai backend
cannot, and the strategy refuses it before generating anything.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ttscale.confidence import (
    DEFAULT_TAIL,
    DEFAULT_WINDOW,
    GroupConfidenceStop,
    lowest_group_confidence,
    online_threshold,
    trace_score,
    vote_share,
)
from ttscale.context import SolveContext
from ttscale.errors import ConfigError
from ttscale.selection import answer_classes, confidence_vote, filtered_vote, first_answer, majority_vote
from ttscale.strategies.best_of_n import sample_candidates
from ttscale.types import Candidate, GenRequest, Problem, Trace

ONLINE_RULES = ("deepconf", "majority", "first")
OFFLINE_RULES = ("filtered-vote", "confidence-vote", "majority", "first")


class DeepConf(BaseModel):
    """DeepConf: confidence-filtered voting (offline) or early-stopped traces (online)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "deepconf"

    n: int = Field(default=16, ge=1, description="N: the most traces drawn for one problem (warm-up included)")
    mode: Literal["online", "offline"] = Field(
        default="online", description="online: warm-up, then traces stopped early; offline: N full traces, filtered vote"
    )
    eta: float = Field(
        default=10.0, gt=0.0, le=100.0,
        description="eta: percent of traces kept (offline) or of warm-up traces passing the threshold (online); 10: DeepConf-low, 90: -high",
    )
    warmup: int = Field(
        default=4, ge=1,
        description="online: N_init, warm-up traces run in full to set the threshold (with 1, the threshold is that trace's score: eta has no effect)",
    )
    window: int = Field(default=DEFAULT_WINDOW, ge=1, description="tokens per group (paper: 2048 for long reasoning traces)")
    tail: int = Field(default=DEFAULT_TAIL, ge=1, description="offline score tail: the last this many tokens (set apart from window, as the reference)")
    consensus: float = Field(
        default=0.95, gt=0.0, le=1.0, description="online: tau, stop once the leading answer's weighted share reaches it (0.95: the paper's)"
    )
    batch: int = Field(default=1, ge=1, description="online: traces drawn at once after the warm-up; consensus is checked after each batch")
    score: Literal["lowest-group", "bottom-10", "tail", "mean"] = Field(
        default="lowest-group", description="offline: the trace score that filters and weights the vote"
    )
    logprobs: int = Field(default=10, ge=1, le=20, description="k: top-k logprobs per token that token confidence reads")
    selection: str | None = Field(default=None, description="the rule reported: online deepconf (default), offline filtered-vote (default)")

    @model_validator(mode="after")
    def _valid_for_mode(self) -> "DeepConf":
        rules = ONLINE_RULES if self.mode == "online" else OFFLINE_RULES
        if self.selection is not None and self.selection not in rules:
            raise ValueError(f"selection {self.selection!r} is not a rule of deepconf {self.mode}; use one of {', '.join(rules)}")
        if self.mode == "online" and self.warmup > self.n:
            raise ValueError(f"warmup ({self.warmup}) cannot exceed n ({self.n})")
        return self

    @property
    def chosen_rule(self) -> str:
        """The rule whose answer is the trace's answer."""
        return self.selection or ("deepconf" if self.mode == "online" else "filtered-vote")

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Offline: N traces and the confidence-filtered vote. Online: warm-up, stopped traces, consensus."""
        if self.mode == "offline":
            return await self._offline(problem, ctx)
        if not ctx.backend.streams:
            raise ConfigError(
                "deepconf online streams traces and aborts them early, which this backend cannot; "
                "use --backend vllm, or -S mode=offline"
            )
        return await self._online(problem, ctx)

    async def _offline(self, problem: Problem, ctx: SolveContext) -> Trace:
        candidates = await self._draw(problem, ctx, start=0, size=self.n)
        scores = [trace_score(c.token_confidences or (), self.score, self.window, self.tail) for c in candidates]
        candidates = [c.model_copy(update={"score": s}) for c, s in zip(candidates, scores)]
        equivalent = ctx.answers.equivalent
        selections = {
            "filtered-vote": filtered_vote(candidates, scores, equivalent, self.eta),
            "confidence-vote": confidence_vote(candidates, scores, equivalent),
            "majority": majority_vote(candidates, equivalent),
            "first": first_answer(candidates),
        }
        return Trace(
            candidates=tuple(candidates), selections=selections, chosen_rule=self.chosen_rule,
            metadata={"scorer": f"deepconf-{self.score}", "window": self.window, "tail": self.tail, "eta": self.eta},
        )

    async def _online(self, problem: Problem, ctx: SolveContext) -> Trace:
        candidates = await self._draw(problem, ctx, start=0, size=self.warmup)
        weights = [lowest_group_confidence(c.token_confidences or (), self.window) for c in candidates]
        threshold = online_threshold(weights, self.eta)
        stopped: list[int | None] = [None] * len(candidates)
        reason = "budget"
        while len(candidates) < self.n:
            start = len(candidates)
            size = min(self.batch, self.n - start)
            traces = await asyncio.gather(*(self._stream(problem, ctx, start + j, threshold) for j in range(size)))
            for candidate, stop in traces:
                candidates.append(candidate)
                stopped.append(stop)
                weights.append(lowest_group_confidence(candidate.token_confidences or (), self.window))
            if vote_share(self._voting_classes(candidates, stopped, weights, threshold, ctx), weights) >= self.consensus:
                reason = "consensus"
                break
        voters = self._voting_classes(candidates, stopped, weights, threshold, ctx)
        scored = [c.model_copy(update={"score": w}) for c, w in zip(candidates, weights)]
        selections = {
            "deepconf": confidence_vote([c if v >= 0 else c.model_copy(update={"answer": None}) for c, v in zip(scored, voters)],
                                        weights, ctx.answers.equivalent),
            "majority": majority_vote(scored, ctx.answers.equivalent),  # every finished trace, unweighted
            "first": first_answer(scored),
        }
        return Trace(
            candidates=tuple(scored), selections=selections, chosen_rule=self.chosen_rule,
            metadata=self._log(threshold, stopped, voters, reason),
        )

    def _voting_classes(self, candidates: list[Candidate], stopped: list[int | None], weights: list[float],
                        threshold: float, ctx: SolveContext) -> list[int]:
        """Each trace's answer class if it votes (finished, lowest group >= s), else -1."""
        classes = answer_classes([c.answer for c in candidates], ctx.answers.equivalent).tolist()
        return [cls if stop is None and weight >= threshold else -1 for cls, stop, weight in zip(classes, stopped, weights)]

    def _log(self, threshold: float, stopped: list[int | None], voters: list[int], reason: str) -> dict[str, Any]:
        return {
            "scorer": "deepconf-lowest-group",
            "threshold": threshold,
            "warmup": min(self.warmup, self.n),
            "samples_drawn": len(stopped),
            "stop_reason": reason,  # consensus, or budget (N drawn)
            "stopped_at": stopped,  # per trace: tokens when stopped (the window that fell below s ends there), or None
            "votes": [v >= 0 for v in voters],
        }

    async def _draw(self, problem: Problem, ctx: SolveContext, *, start: int, size: int) -> list[Candidate]:
        """Traces start..start+size-1 of best-of-N's sequence, in full: one request, seed + start."""
        params = self._params(ctx, start, size)
        [generation] = await ctx.backend.generate([GenRequest(prompt=problem.prompt, params=params)])
        return sample_candidates(generation.completions, ctx, self.logprobs)

    async def _stream(self, problem: Problem, ctx: SolveContext, index: int, threshold: float) -> tuple[Candidate, int | None]:
        """Trace `index`, streamed and aborted once a window's group confidence is below s: its
        candidate (a stopped one states no answer) and where it stopped (None: it finished)."""
        stop = GroupConfidenceStop(k=self.logprobs, window=self.window, threshold=threshold)
        request = GenRequest(prompt=problem.prompt, params=self._params(ctx, index, 1))
        generation = await ctx.backend.generate_until(request, stop)
        [candidate] = sample_candidates(generation.completions, ctx, self.logprobs)
        if candidate.finish_reason != "abort":
            return candidate, None
        return candidate.model_copy(update={"answer": None}), len(candidate.token_confidences or ())

    def _params(self, ctx: SolveContext, start: int, size: int):
        seed = None if ctx.params.seed is None else ctx.params.seed + start
        return ctx.params.model_copy(update={"n": size, "seed": seed, "logprobs": self.logprobs})
