"""Self-debugging (Chen et al. 2023, "Teaching Large Language Models to Self-Debug"): revision with
execution feedback, in chains as the revision strategy runs them.

    chains = N / L                         # --ratio L:chains, or -S rounds=D (L = D + 1)
    for each chain, concurrently:
        dialogue = prompt
        program  = LLM(dialogue)
        repeat up to D times:
            results = run(program, visible tests)           # ttscale.code_exec, in the sandbox
            if every visible test passes: stop              # early stop
            dialogue += [program, feedback(results)]        # the failing asserts, what they got
            program  = LLM(dialogue)
    select over the chains' final programs: pass-examples | behaviour-vote | first | random | majority

The feedback is the paper's "unit test feedback" (UT, §3): the failing assert of each failing
visible test with its real execution result ("# Real Execution Output: <repr>", or the raised
exception's "Type: message", the last line of its traceback, or "timed out"), then a request to
fix the code. Not the paper's "simple feedback" (only "the code above is wrong"), nor UT + code
explanation or UT + trace (those need the model to explain or trace its code, few-shot; this
model is prompted zero-shot). The feedback text is cut to `feedback_chars`. The dialogue keeps
every earlier attempt and its feedback, as the paper's few-shot dialogue does, so each round's
prompt extends the last one and vLLM's prefix cache serves the shared part.

Only the visible tests (the prompt's own examples: ttscale.code_tests) run; the hidden tests
stay on the benchmark. A problem whose prompt shows no test passes vacuously: its chains stop
after the first program (there is nothing to debug against). Every model call goes through
ctx.backend (the cost meter); every sandboxed run is counted in the trace's `execution` totals,
intermediate attempts included.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ttscale.code_exec import EXECUTION, CandidateExec, code_arrays, exec_metadata, execute_async
from ttscale.code_tests import visible_tests_of
from ttscale.context import SolveContext
from ttscale.selection import code_selections
from ttscale.strategies.revision import Ratio, attempt_seed, parse_ratio
from ttscale.types import Candidate, ChatMessage, GenRequest, Problem, Trace

FIX_REQUEST = "Please fix the code. Return the complete corrected function in a single ```python code block."


def unit_test_feedback(problem: Problem, result: CandidateExec, limit: int) -> str:
    """Chen et al.'s unit test feedback for one program: each failing visible test as an assert
    with what it really gave, then the request to fix it; cut to `limit` characters."""
    if result.run_status == "no code":
        lines = ["The answer above has no Python code block, so the given unit tests could not run."]
    else:
        lines = ["The code above fails the given unit test:" if sum(t.status != "pass" for t in result.tests) == 1
                 else "The code above fails the given unit tests:"]
        for test, check in zip(visible_tests_of(problem.metadata), result.tests):
            if check.status == "fail":
                got = check.error.removeprefix("returned ")
                lines.append(f"{test.assertion}  # Real Execution Output: {got}")
            elif check.status == "error":
                lines.append(f"{test.assertion}  # Raised: {check.error}")
            elif check.status == "timeout":
                lines.append(f"{test.assertion}  # Timed out: {check.error}")
    text = "\n".join(lines)
    if len(text) > limit:
        text = text[: max(limit - 4, 0)] + " ..."
    return f"{text}\n\n{FIX_REQUEST}"


class SelfDebug(BaseModel):
    """N programs as N/L chains of up to L attempts, each attempt after the first fixing the last
    one from its failures on the visible tests; selection over the chains' final programs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = "self-debug"

    n: int = Field(default=8, ge=1, description="N: the most programs per problem (chains x attempts per chain)")
    ratio: Ratio | None = Field(default=None, description="L:chains, sequential:parallel (as revision); default from rounds")
    rounds: int | None = Field(default=None, ge=0, description="D: the most feedback rounds per chain (L = D + 1); default 3")
    selection: Literal["pass-examples", "behaviour-vote", "first", "random", "majority"] = Field(
        default="pass-examples", description="the rule over the chains' final programs")
    feedback_chars: int = Field(default=1000, ge=50, description="the most characters of test feedback per round")
    test_timeout_s: float = Field(default=2.0, gt=0, le=60, description="the wall clock of one visible test")

    @model_validator(mode="after")
    def _shape_fits(self) -> "SelfDebug":
        length, chains = self.shape
        if self.ratio is not None and self.rounds is not None and self.rounds != length - 1:
            raise ValueError(f"ratio {self.ratio} means {length - 1} rounds, but rounds is {self.rounds}; give one of them")
        if length * chains != self.n:
            raise ValueError(
                f"{chains} chains of {length} attempts (rounds={length - 1}) make {length * chains} programs, but n is "
                f"{self.n}; pass --n {length * chains}, or -S rounds=D with D + 1 dividing n, or -S ratio=L:CHAINS"
            )
        return self

    @property
    def shape(self) -> tuple[int, int]:
        """(L: the most attempts per chain, number of chains)."""
        if self.ratio is not None:
            return parse_ratio(self.ratio)
        length = (3 if self.rounds is None else self.rounds) + 1
        return length, max(self.n // length, 1)

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Run every chain concurrently, then apply every rule to the chains' final programs."""
        length, chains = self.shape
        finished = await asyncio.gather(*(self._chain(problem, ctx, c, length) for c in range(chains)))
        candidates = [attempts[-1][0] for attempts in finished]
        finals = [attempts[-1][1] for attempts in finished]
        every_run = [result for attempts in finished for _, result in attempts]
        passed, behaviour = code_arrays(finals)
        selections = code_selections(candidates, passed, behaviour, ctx.answers.equivalent,
                                     np.random.default_rng(ctx.rng.getrandbits(64)))
        metadata = {
            **exec_metadata(finals),  # code_exec: the final programs', so compare recomputes the rules
            EXECUTION: exec_metadata(every_run)[EXECUTION],  # the cost: every round's run
            "chains": chains,
            "max_attempts": length,
            "attempts": [len(attempts) for attempts in finished],  # per chain: 1 = no feedback round
            "passed_at": [next((i for i, (_, r) in enumerate(attempts, 1) if r.passed), None) for attempts in finished],
        }
        return Trace(candidates=tuple(candidates), selections=selections, chosen_rule=self.selection, metadata=metadata)

    async def _chain(self, problem: Problem, ctx: SolveContext, chain: int, length: int) -> list[tuple[Candidate, CandidateExec]]:
        """One chain: a program, then up to L - 1 fixes, until one passes every visible test."""
        dialogue = tuple(problem.prompt) if not isinstance(problem.prompt, str) else (ChatMessage(role="user", content=problem.prompt),)
        attempts: list[tuple[Candidate, CandidateExec]] = []
        for depth in range(length):
            params = ctx.params.model_copy(update={"n": 1, "seed": attempt_seed(ctx.params.seed, chain, depth, length)})
            [generation] = await ctx.backend.generate([GenRequest(prompt=dialogue, params=params)])
            [completion] = generation.completions
            candidate = Candidate(text=completion.text, answer=ctx.answers.extract_answer(completion.text),
                                  num_tokens=completion.num_tokens, finish_reason=completion.finish_reason)
            [result] = await execute_async(problem, [candidate.answer], test_timeout_s=self.test_timeout_s)
            attempts.append((candidate, result))
            if result.passed:
                break
            feedback = unit_test_feedback(problem, result, self.feedback_chars)
            dialogue = (*dialogue, ChatMessage(role="assistant", content=completion.text), ChatMessage(role="user", content=feedback))
        return attempts
