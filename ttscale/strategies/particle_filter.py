"""Particle filtering for inference-time scaling (Puri et al. 2025).

N particles are partial solutions. Each step every unfinished particle grows by one step and
the PRM scores it; a particle's weight is the logit of its aggregated PRM score (default: the
product of step scores). The next generation is drawn from all N particles with probabilities
softmax(weight / T): finished particles keep their weight and stay in the pool, so a good
finished answer keeps being copied.

    particles = N empty solutions
    for step in 1..max_steps (the last step runs to the end):
        grow every unfinished particle by one step; score it with the PRM
        w_i = logit(aggregate(step scores of particle i))
        p = softmax(w / T)
        particles = resample N of them with probabilities p (multinomial or systematic)
    answer = the particle with the highest weight (or a weighted vote: sum of scores per answer)
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ttscale.context import SolveContext
from ttscale.strategies.tree_search import Beam, expand, score, verifier_selections
from ttscale.types import Problem, Trace
from ttscale.steps import Aggregation

SCORE_EPSILON = 1e-6  # keeps logit finite for scores of exactly 0 or 1


def logit(p: float) -> float:
    """log(p / (1 - p)), with p clipped into [eps, 1 - eps]."""
    p = min(max(p, SCORE_EPSILON), 1.0 - SCORE_EPSILON)
    return math.log(p / (1.0 - p))


def resampling_probabilities(weights: list[float], temperature: float) -> np.ndarray:
    """softmax(weights / T), computed stably."""
    z = np.asarray(weights, dtype=np.float64) / temperature
    z -= z.max()
    e = np.exp(z)
    return e / e.sum()


def resample(probabilities: np.ndarray, count: int, method: str, rng: np.random.Generator) -> list[int]:
    """Indices of the `count` particles drawn: multinomial, or systematic (one uniform offset)."""
    if method == "multinomial":
        return rng.choice(len(probabilities), size=count, p=probabilities).tolist()
    positions = (rng.uniform() + np.arange(count)) / count
    cumulative = np.cumsum(probabilities)
    cumulative[-1] = 1.0  # guard against rounding leaving the last position past the end
    return np.searchsorted(cumulative, positions, side="right").tolist()


class ParticleFilter(BaseModel):
    """N particles grown step by step and resampled by softmax(logit(PRM score) / T)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "particle-filter"
    needs_verifier: ClassVar[bool] = True

    n: int = Field(default=8, ge=1, description="N: particles")
    temperature: float = Field(default=1.0, gt=0.0, description="T in softmax(logit / T)")
    resampling: Literal["multinomial", "systematic"] = "multinomial"
    max_steps: int = Field(default=10, ge=1, description="the last step is generated to the end")
    aggregation: Aggregation = "prod"
    selection: Literal["max-score", "weighted-vote", "majority", "oracle"] = "max-score"

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Grow, weigh and resample the particles until all have finished."""
        ctx.require_verifier(self.name)
        rng = np.random.default_rng(ctx.rng.randrange(2**32))
        particles = [Beam(origin=i) for i in range(self.n)]
        log = []
        for step in range(self.max_steps):
            growing = [i for i, p in enumerate(particles) if not p.finished]
            if not growing:
                break
            families = await expand(problem, ctx, [particles[i] for i in growing], 1, to_the_end=step == self.max_steps - 1)
            grown = await score(ctx, [kids[0] for kids in families], self.aggregation)
            for i, particle in zip(growing, grown):
                particles[i] = particle
            probabilities = resampling_probabilities([logit(p.score) for p in particles], self.temperature)
            chosen = resample(probabilities, self.n, self.resampling, rng)
            particles = [particles[i] for i in chosen]  # frozen beams: copies share nothing mutable
            log.append({"probabilities": probabilities.round(6).tolist(), "chosen": chosen})
        candidates = [p.to_candidate(ctx) for p in particles]
        return Trace(
            candidates=tuple(candidates),
            selections=verifier_selections(candidates, ctx),
            chosen_rule=self.selection,
            metadata={"steps": log},
        )
