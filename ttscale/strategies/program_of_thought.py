"""Program of thoughts for math (Chen et al. 2022, "Program of Thoughts Prompting"; Gao et al.
2022, PAL): the model writes a program, the sandbox runs it, and what it prints is the answer.

    samples = LLM(program_prompt(question), n=N)   # each asked for a ```python program that prints the answer
    answers = [last_line(sandbox(code(s))) for s in samples]   # crash, timeout, no output: no answer
    return select(answers, ...)                     # every best-of-N rule: majority over executed answers, ...

This is best-of-N (ttscale/strategies/best_of_n.py) with one step changed: a sample's answer is its
program's printed value, not the \\boxed{} text. The strategy runs best-of-N's own solve with the
problem's prompt rewritten (`template`, zero-shot: the papers' prompts are few-shot, and PoT's
ends in `ans = ...`; here the program prints the answer, as PAL's harness reads `solution()`),
and a context whose meter runs each sample's program right after generating it and whose answer
extraction reads that run. So every math rule (majority, first, max-score and weighted-vote with
a verifier or a logprob scorer, oracle) applies unchanged and `compare` recomputes them on
subsets from the recorded answers.

Each program runs once in the sandbox grading uses (ttscale.grading.sandbox: no network, a
private tmpfs for files, its own uid and limits), with a wall clock of `timeout_s`; the answer
is the last non-blank line it printed, if it exited cleanly. A program that crashes, loops or
prints nothing has no answer (it votes for nothing). Execution cost is recorded as
ttscale.code_exec does: per candidate in trace metadata "program_exec" (sandbox verdict, answer,
CPU and wall seconds), per problem in "execution" (runs, cpu_s, wall_s).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import ClassVar, Sequence

from pydantic import Field, model_validator

from ttscale.code_exec import EXECUTION, PROGRAM_EXEC, ProgramRun, execution_totals, run_programs
from ttscale.context import SolveContext
from ttscale.cost import CostMeter
from ttscale.selection import CODE_RULES
from ttscale.strategies.best_of_n import BestOfN
from ttscale.types import ChatMessage, Cost, Generation, GenRequest, Problem, Trace

DEFAULT_TEMPLATE = (
    "Write a Python program that computes the answer to the following problem and prints it. "
    "The last line the program prints is taken as the answer, so print only the final value last. "
    "Put the program in a ```python block.\n\n{question}"
)


class _ExecutingMeter(CostMeter):
    """A meter inside the problem's (which prices and books every call, as always) that runs each
    sample's program right after generating it, off the event loop, so the answers are ready
    when best-of-N extracts them."""

    def __init__(self, meter: CostMeter, *, timeout_s: float):
        super().__init__(meter)
        self._timeout_s = timeout_s
        self.runs: list[tuple[str, ProgramRun]] = []  # (sample text, its run), in sample order

    async def _generate_priced(self, requests: Sequence[GenRequest]) -> tuple[list[Generation], list[Cost]]:
        generations, costs = await super()._generate_priced(requests)
        texts = [c.text for g in generations for c in g.completions]
        runs = await asyncio.to_thread(run_programs, texts, timeout_s=self._timeout_s)
        self.runs.extend(zip(texts, runs))
        return generations, costs


class _ExecutedAnswers:
    """Answer tools whose extraction reads a sample's executed program; equivalence is the benchmark's."""

    def __init__(self, answers, meter: _ExecutingMeter):
        self._answers = answers
        self._meter = meter

    def extract_answer(self, text: str) -> str | None:
        return next((run.answer for sample, run in reversed(self._meter.runs) if sample == text), None)

    def equivalent(self, a: str, b: str) -> bool:
        return self._answers.equivalent(a, b)


class ProgramOfThought(BestOfN):
    """Best-of-N whose samples are programs: each is run in the sandbox and its printed value is its answer."""

    name: ClassVar[str] = "program-of-thought"

    template: str = Field(default=DEFAULT_TEMPLATE, description="the prompt asking for a program; {question} is the problem")
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="the wall clock of one program's run in the sandbox")

    @model_validator(mode="after")
    def _math_rules_only(self) -> "ProgramOfThought":
        if self.selection in CODE_RULES:
            raise ValueError(f"selection {self.selection!r} runs code benchmarks' visible tests; program-of-thought "
                             "answers math problems: use majority, first, max-score, weighted-vote or borda-vote")
        if "{question}" not in self.template:
            raise ValueError("template must contain {question}")
        return self

    def program_prompt(self, problem: Problem) -> Problem:
        """The problem with its last user message replaced by the request for a program."""
        *head, _ = problem.prompt
        content = self.template.replace("{question}", problem.question)
        return problem.model_copy(update={"prompt": (*head, ChatMessage(role="user", content=content))})

    async def solve(self, problem: Problem, ctx: SolveContext) -> Trace:
        """Best-of-N on the program prompt, answers read from the programs' runs; execution recorded."""
        meter = _ExecutingMeter(ctx.backend, timeout_s=self.timeout_s)
        program_ctx = dataclasses.replace(ctx, backend=meter, answers=_ExecutedAnswers(ctx.answers, meter))
        trace = await super().solve(self.program_prompt(problem), program_ctx)
        runs = [run for _, run in meter.runs]
        if [text for text, _ in meter.runs] != [c.text for c in trace.candidates]:
            raise RuntimeError("program-of-thought: best-of-N's candidates are not the samples that were run")
        metadata = {**trace.metadata, PROGRAM_EXEC: [r.model_dump() for r in runs], EXECUTION: execution_totals(runs)}
        return trace.model_copy(update={"metadata": metadata})
