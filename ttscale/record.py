"""Grade and record one problem: solve it blind, grade every candidate and selection against gold,
and build its samples.jsonl record (the runner's and each Ray replica's unit of work)."""

from __future__ import annotations

from typing import Any

from ttscale.analysis.passk import k_values, pass_at_k
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.protocols import Backend, Benchmark, Strategy, Verifier, verifier_saw_gold
from ttscale.types import ORACLE_RULE, Problem, Trace


def grade_trace(problem: Problem, trace: Trace, benchmark: Benchmark) -> dict[str, Any]:
    """Grade every candidate and every selection against the gold answer (never seen by strategies)."""
    candidate_grades = [benchmark.grade(problem, c.answer) for c in trace.candidates]
    candidate_correct = [grade.correct for grade in candidate_grades]
    selections = {
        rule: {"answer": answer, "correct": benchmark.grade(problem, answer).correct}
        for rule, answer in trace.selections.items()
    }
    first_correct = next((c.answer for c, ok in zip(trace.candidates, candidate_correct) if ok), None)
    selections[ORACLE_RULE] = {"answer": first_correct, "correct": any(candidate_correct)}
    n, c = len(candidate_correct), sum(candidate_correct)
    return {
        "candidates": [
            {**candidate.model_dump(), "correct": grade.correct, "grade_reason": grade.reason}
            for candidate, grade in zip(trace.candidates, candidate_grades)
        ],
        "selections": selections,
        "n": n,
        "num_correct": c,
        "pass_at_k": {str(k): pass_at_k(n, c, k) for k in k_values(n)} if n else {},
    }


async def solve_and_record(
    problem: Problem,
    *,
    strategy: Strategy,
    backend: Backend,
    benchmark: Benchmark,
    config: RunConfig,
    verifier: Verifier | None = None,
) -> dict[str, Any]:
    """Solve one problem blind, grade it, and build its samples.jsonl record."""
    seed = config.problem_seed(problem.id)
    ctx = SolveContext.for_problem(
        problem, backend=backend, answers=benchmark, params=config.sampling, seed=seed, verifier=verifier
    )
    trace = await ctx.solve(strategy, problem)  # blind: strategies may extract and compare, never grade
    return {
        "problem_id": problem.id,
        "question": problem.question,
        "gold": problem.answer,
        "difficulty": problem.difficulty,
        "seed": seed,
        "strategy": config.strategy,
        "verifier": verifier.name if verifier else None,
        "verifier_uses_gold": verifier_saw_gold(verifier, problem.id),
        "chosen_rule": trace.chosen_rule,
        **grade_trace(problem, trace, benchmark),
        "trace_metadata": trace.metadata,
        "cost": trace.cost.model_dump(),
    }
