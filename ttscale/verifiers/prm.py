"""Process and outcome reward models behind the Verifier protocol.

- `llm-judge-prm`: for each step, the probability that a judge model answers "Yes" to "is this
  step correct?", read from the first generated token's logprobs. The default judge is the
  policy model itself (the embedded SmolLM2 on CPU): weak, but real, and it runs anywhere.
- `vllm-prm`: a PRM served by vLLM's pooling API, e.g. Qwen/Qwen2.5-Math-PRM-7B (GPU).
- `oracle-orm`: final-answer correctness from the gold answer. An upper bound for verifiable
  tasks, never a deployable verifier; runs record `verifier_uses_gold: true`.
- `scripted-prm`: scores steps by keyword rules; for tests and demos of the search strategies.

Step scores depend only on the question and the steps up to and including the scored one (the
judge reads that prefix; a PRM attends causally), so a verifier may reuse a step's score when a
search asks again about the same prefix.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from pydantic import Field, PrivateAttr

from ttscale import registry
from ttscale.backends.vllm_pooling import VLLMPoolingBackend
from ttscale.cost import CostMeter
from ttscale.protocols import Backend, Benchmark
from ttscale.types import ChatMessage, GenRequest, PoolRequest, Problem, SampleParams
from ttscale.verifiers.base import VerifierBase

JUDGE_SYSTEM = "You are a careful teacher. You check one step of a student's solution at a time."
JUDGE_TEMPLATE = (
    "Problem:\n{question}\n\nSolution so far:\n{previous}\n\nNext step:\n{step}\n\n"
    "Is the next step correct? Answer Yes or No."
)


def yes_probability(top_logprobs: dict[str, float]) -> float:
    """P(Yes) / (P(Yes) + P(No)) among a token's top alternatives (0.5 if neither appears).

    Variants such as " Yes" and "yes" are pooled. Normalising by Yes + No removes the mass the
    judge puts on other tokens (punctuation, "The", ...), as LLM-as-judge scoring usually does.
    """
    yes = sum(math.exp(lp) for token, lp in top_logprobs.items() if token.strip().lower() == "yes")
    no = sum(math.exp(lp) for token, lp in top_logprobs.items() if token.strip().lower() == "no")
    return yes / (yes + no) if yes + no > 0 else 0.5


class LLMJudgePRM(VerifierBase):
    """A judge model's P("Yes") that each step is correct, from its first answer token."""

    name: str = Field(default="llm-judge-prm", exclude=True)
    judge_model: str | None = Field(default=None, description="judge model; None = the policy model's backend")
    judge_backend_options: dict[str, Any] = Field(default_factory=dict)
    top_logprobs: int = Field(default=20, ge=2, le=20, description="alternatives read for Yes/No")
    template: str = JUDGE_TEMPLATE
    _backend: Backend | None = PrivateAttr(default=None)
    _memo: dict[tuple[str, tuple[str, ...]], float] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        if self.judge_model is not None:
            self._backend = registry.backends.create(
                "vllm", model=self.judge_model, **self.judge_backend_options
            )

    @property
    def backend(self) -> Backend | None:
        """The judge's own engine, or None to judge with the policy model's backend."""
        return self._backend

    async def score_steps(
        self, problem: Problem, steps: Sequence[Sequence[str]], meter: CostMeter
    ) -> list[list[float]]:
        """Judge every step not judged before (one request each, all at once), then look up."""
        wanted = {(problem.id, tuple(s[: i + 1])) for s in steps for i in range(len(s))}
        todo = sorted(key for key in wanted if key not in self._memo)
        if todo:
            params = SampleParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
            requests = [GenRequest(prompt=self._judge_prompt(problem, prefix), params=params) for _, prefix in todo]
            for key, generation in zip(todo, await meter.generate(requests)):
                [completion] = generation.completions
                first = (completion.top_logprobs or ({},))[0]
                self._memo[key] = yes_probability(first)
        return [[self._memo[(problem.id, tuple(s[: i + 1]))] for i in range(len(s))] for s in steps]

    def _judge_prompt(self, problem: Problem, prefix: tuple[str, ...]) -> tuple[ChatMessage, ...]:
        previous = "\n\n".join(prefix[:-1]) or "(nothing yet)"
        user = self.template.format(question=problem.question, previous=previous, step=prefix[-1])
        return (ChatMessage(role="system", content=JUDGE_SYSTEM), ChatMessage(role="user", content=user))

    async def close(self) -> None:
        """Stop the judge's own engine, if it has one."""
        if self._backend is not None:
            await self._backend.close()


PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class VLLMPRM(VerifierBase):
    """A process reward model served by vLLM's pooling runner (task "token_classify").

    Qwen2.5-Math-PRM convention: the assistant turn is the steps joined by `<extra_0>` and
    ending with one; step pooling returns a [negative, positive] pair per `<extra_0>`, and the
    positive column is the step's score. Runs on GPU; the CPU machines here cannot hold a 7B PRM.
    """

    name: str = Field(default="vllm-prm", exclude=True)
    model: str = "Qwen/Qwen2.5-Math-PRM-7B"
    step_tag: str = "<extra_0>"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    _backend: Backend | None = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        self._backend = VLLMPoolingBackend(model=self.model, **self.backend_options)

    @property
    def backend(self) -> Backend | None:
        """The PRM's own pooling engine."""
        return self._backend

    def pool_request(self, problem: Problem, steps: Sequence[str]) -> PoolRequest:
        """The chat the PRM reads: question, then the steps each closed by the step tag."""
        assistant = "".join(step + self.step_tag for step in steps)
        return PoolRequest(
            prompt=(
                ChatMessage(role="system", content=PRM_SYSTEM),
                ChatMessage(role="user", content=problem.question),
                ChatMessage(role="assistant", content=assistant),
            )
        )

    async def score_steps(
        self, problem: Problem, steps: Sequence[Sequence[str]], meter: CostMeter
    ) -> list[list[float]]:
        """One pooled [negative, positive] pair per step; the positive probability is the score."""
        nonempty = [i for i, s in enumerate(steps) if s]
        results = await meter.pool([self.pool_request(problem, steps[i]) for i in nonempty])
        scores: list[list[float]] = [[] for _ in steps]
        for i, result in zip(nonempty, results):
            if len(result.data) != len(steps[i]):
                raise ValueError(
                    f"{self.model} returned {len(result.data)} step scores for {len(steps[i])} steps; "
                    f"is it a step-pooling PRM with step tag {self.step_tag!r}?"
                )
            scores[i] = [float(pair[-1]) for pair in result.data]
        return scores

    async def close(self) -> None:
        """Stop the PRM's engine."""
        if self._backend is not None:
            await self._backend.close()


class OracleORM(VerifierBase):
    """Final-answer correctness against the gold answer: 1 or 0. An upper bound, not a verifier
    one can deploy; it needs gold answers, and runs that use it say so (`verifier_uses_gold`).

    As step scores, every step gets the outcome of the solution so far: 1 or 0 once it states
    an answer, 0.5 (undecided) before; so last, min, prod and mean all give the outcome of a
    finished solution.
    """

    name: str = Field(default="oracle-orm", exclude=True)
    uses_gold: bool = Field(default=True, exclude=True)

    def model_post_init(self, __context: Any) -> None:
        if not isinstance(self.benchmark, Benchmark):
            raise ValueError("oracle-orm needs the benchmark's grader; it is built by the runner")

    async def score_steps(
        self, problem: Problem, steps: Sequence[Sequence[str]], meter: CostMeter
    ) -> list[list[float]]:
        """The outcome of the text so far, repeated for every step."""
        return [[self._outcome(problem, "\n\n".join(s))] * len(s) for s in steps]

    def _outcome(self, problem: Problem, text: str) -> float:
        answer = self.benchmark.extract_answer(text)
        if answer is None:
            return 0.5
        return float(self.benchmark.grade(problem, answer).correct)


class ScriptedPRM(VerifierBase):
    """Scores a step by the first keyword rule it matches (else `default`). For tests and demos."""

    name: str = Field(default="scripted-prm", exclude=True)
    rules: dict[str, float] = Field(default_factory=dict)
    default: float = Field(default=0.5, ge=0.0, le=1.0)

    async def score_steps(
        self, problem: Problem, steps: Sequence[Sequence[str]], meter: CostMeter
    ) -> list[list[float]]:
        """Each step's score from the rules; costs nothing (no model runs)."""
        return [[self._score(step) for step in s] for s in steps]

    def _score(self, step: str) -> float:
        return next((score for keyword, score in self.rules.items() if keyword in step), self.default)
