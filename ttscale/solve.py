"""`ttscale.solve`: run one strategy on one prompt through a CostMeter, outside any benchmark."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ttscale import registry
from ttscale.context import SolveContext
from ttscale.grading.math_answer import DEFAULT_VERIFIER
from ttscale.problems import derive_seed
from ttscale.types import ChatMessage, Problem, SampleParams, Trace

if TYPE_CHECKING:
    from ttscale.protocols import AnswerTools, Backend, Verifier


def as_problem(prompt: str | Problem, template: str | None = None) -> Problem:
    """A Problem for a bare prompt: one user message (the template filled in, if given), no gold."""
    if isinstance(prompt, Problem):
        return prompt.blind()
    if not prompt.strip():
        raise ValueError("prompt is empty; pass the question to solve")
    content = template.replace("{question}", prompt) if template else prompt
    problem_id = "prompt-" + hashlib.sha256(content.encode()).hexdigest()[:12]
    return Problem(id=problem_id, question=prompt, prompt=(ChatMessage(role="user", content=content),))


async def solve(
    prompt: str | Problem,
    *,
    backend: "Backend",
    strategy: str = "best-of-n",
    options: dict[str, Any] | None = None,
    verifier: "Verifier | None" = None,
    answers: "AnswerTools | None" = None,
    params: SampleParams | None = None,
    seed: int = 0,
) -> Trace:
    """Solve one prompt with a registered strategy; the Trace's `cost` is what it spent.

    `answers` extracts and compares answers (default: math answers, \\boxed{} or a final number).
    """
    problem = as_problem(prompt)
    solver = registry.strategies.create(strategy, "options", **(options or {}))  # a mistake: one-line ConfigError
    ctx = SolveContext.for_problem(
        problem,
        backend=backend,
        answers=answers or DEFAULT_VERIFIER,
        params=params or SampleParams(),
        seed=derive_seed(seed, problem.id),  # as the runner seeds each problem
        verifier=verifier,
    )
    return await ctx.solve(solver, problem)
