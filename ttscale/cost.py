"""CostMeter: the ONLY place that counts tokens and FLOPs.

FLOPs for now are 2 x params x processed tokens, where processed tokens are the prompt tokens
the engine actually computed (prompt minus cached) plus the generated tokens. Prompt tokens are
counted once per request, however many samples (n) it asks for: the engine prefills once.
A later cost model adds the attention term 2·n_layers·d_model·L (Large Language Monkeys §2.3).

A meter has a role. The "generator" meter wraps the policy model's backend; a "verifier" meter
wraps whatever a verifier runs on (a judge model, a PRM served for pooling), and books its
tokens and FLOPs as verifier cost, so every strategy's total includes its verifier.
"""

from __future__ import annotations

import time
from typing import Literal, Sequence

from ttscale.protocols import Backend, ModelInfo
from ttscale.types import Cost, Generation, GenRequest, PoolRequest, PoolResult

MeterRole = Literal["generator", "verifier"]


def forward_flops(num_params: int, tokens: int) -> float:
    """Forward-pass FLOPs for `tokens` tokens of a dense model with `num_params` parameters."""
    return 2.0 * num_params * tokens


class CostMeter:
    """Wraps a backend and adds up the cost of every call made through it."""

    def __init__(self, backend: Backend, *, role: MeterRole = "generator"):
        self._backend = backend
        self.model: ModelInfo = backend.model
        self.role = role
        self._cost = Cost()

    @property
    def cost(self) -> Cost:
        """Everything spent through this meter so far."""
        return self._cost

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Generate through the wrapped backend and record what it cost."""
        started = time.perf_counter()
        generations = await self._backend.generate(requests)
        wall_s = time.perf_counter() - started
        self._record(self._cost_of(generations, wall_s))
        self._record(speculative_cost(self.model, generations))  # zero without speculation
        return generations

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """Run a pooling model (e.g. a PRM's step classifier) and record its prefill cost."""
        pool = getattr(self._backend, "pool", None)
        if pool is None:
            raise TypeError(f"{type(self._backend).__name__} has no pooling API; serve the model with a pooling backend")
        started = time.perf_counter()
        results = await pool(requests)
        wall_s = time.perf_counter() - started
        prompt = sum(r.prompt_tokens for r in results)
        cached = sum(r.cached_prompt_tokens for r in results)
        self._record(
            Cost(
                calls=len(results),
                prompt_tokens=prompt,
                cached_prompt_tokens=cached,
                flops=forward_flops(self.model.num_params, prompt - cached),
                wall_s=wall_s,
            )
        )
        return results

    def _cost_of(self, generations: Sequence[Generation], wall_s: float) -> Cost:
        prompt = sum(g.prompt_tokens for g in generations)
        cached = sum(g.cached_prompt_tokens for g in generations)
        generated = sum(c.num_tokens for g in generations for c in g.completions)
        return Cost(
            calls=len(generations),
            prompt_tokens=prompt,
            cached_prompt_tokens=cached,
            generated_tokens=generated,
            flops=forward_flops(self.model.num_params, prompt - cached + generated),
            wall_s=wall_s,
        )

    def _record(self, cost: Cost) -> None:
        if self.role == "verifier":
            cost = as_verifier_cost(cost)
        self._cost = self._cost + cost

    async def close(self) -> None:
        """Closing a meter leaves the shared backend open; the runner owns it."""


def as_verifier_cost(cost: Cost) -> Cost:
    """Re-book a call's cost as verifier cost: the tokens it read and wrote, and its FLOPs."""
    return Cost(
        verifier_calls=cost.calls,
        verifier_tokens=cost.prompt_tokens + cost.generated_tokens,
        verifier_flops=cost.flops,
        flops=cost.flops,
        eflops=cost.eflops,
        wall_s=cost.wall_s,
    )


# --- Speculative decoding: kept apart from the FLOPs formula above --------------------------------


def speculative_cost(model: ModelInfo, generations: Sequence[Generation]) -> Cost:
    """What speculative decoding adds to a call: the drafter's work and the target's wasted checks.

    The drafted, accepted and draft-step counts come from the backend. Accepted tokens are
    already priced as generated tokens; the target also computes every rejected draft token
    while verifying, priced here at 2·P each (no attention term: drafts are a few tokens). The
    draft model costs 2·P_draft per drafted token (`model.draft_num_params`; 0 for n-gram
    lookup, which runs no model). Both count in `flops` and `eflops`; `draft_flops` says how
    much of that the draft model spent.
    """
    drafts = sum(g.drafts for g in generations)
    drafted = sum(g.draft_tokens for g in generations)
    accepted = sum(g.accepted_draft_tokens for g in generations)
    if not drafted:
        return Cost()
    draft_flops = forward_flops(getattr(model, "draft_num_params", 0), drafted)
    rejected_flops = forward_flops(model.num_params, drafted - accepted)
    return Cost(
        drafts=drafts,
        draft_tokens=drafted,
        accepted_draft_tokens=accepted,
        draft_flops=draft_flops,
        flops=draft_flops + rejected_flops,
        eflops=draft_flops + rejected_flops,
    )
