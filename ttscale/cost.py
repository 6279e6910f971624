"""CostMeter: the ONLY place that counts tokens and FLOPs.

FLOPs for now are 2 x params x processed tokens, where processed tokens are the prompt tokens
the engine actually computed (prompt minus cached) plus the generated tokens. Prompt tokens are
counted once per request, however many samples (n) it asks for: the engine prefills once.
A later cost model adds the attention term 2·n_layers·d_model·L (Large Language Monkeys §2.3).
"""

from __future__ import annotations

import time
from typing import Sequence

from ttscale.protocols import Backend, ModelInfo
from ttscale.types import Cost, Generation, GenRequest


def forward_flops(num_params: int, tokens: int) -> float:
    """Forward-pass FLOPs for `tokens` tokens of a dense model with `num_params` parameters."""
    return 2.0 * num_params * tokens


class CostMeter:
    """Wraps a backend and adds up the cost of every call made through it."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.model: ModelInfo = backend.model
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
        self._cost = self._cost + self._cost_of(generations, wall_s)
        return generations

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

    async def close(self) -> None:
        """Closing a meter leaves the shared backend open; the runner owns it."""
