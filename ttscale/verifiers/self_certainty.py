"""`self-certainty`: Kang et al.'s self-certainty of each sample under the policy model itself,
over the full vocabulary (ttscale.self_certainty), as a verifier's score.

    ttscale eval -s best-of-n --n 8 --verifier self-certainty -V model=smollm2-135m --selection borda-vote

is the paper's best-of-N: every sample scored by its self-certainty, then the Borda vote with
p = 0.5 (ttscale/strategies/best_of_n.py, `borda_vote`). `model` must be the run's --model: the score is
the generating model's own certainty. Each solution costs one prefill of the prompt and the
solution on a hidden-state pooling engine, metered as this verifier's cost, as the trained
verifier's reads are. It reads no gold answer, and learned nothing: no problem is an upper bound.

Best-of-N with `--selection borda-vote` asks `score`: each sample's exact text. As step scores
(`score_steps`: what the other rules and the searches ask for), every step of a solution
gets the self-certainty of the whole text so far, its steps joined by blank lines (as the oracle
ORM scores steps), so last, min and mean give the solution's score. Steps are stripped
(ttscale.steps.split_steps): a sample with whitespace around its blank lines, or at either end,
is read without it (24 SmolLM2 samples of arithmetic: 5 texts changed, their scores by at most
0.7%).

Cost: the reference reads every sample again (a second forward pass), and so does this verifier;
its prefill re-reads the prompt too (no prefix caching in hidden-state mode). A generation
engine computes all V logits at every step anyway, so a score read there would cost almost
nothing: the metered figure is the reference's procedure, an upper bound for a deployment.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field, PrivateAttr, model_validator

from ttscale.cost import CostMeter
from ttscale.hidden_states import hidden_state_backend
from ttscale.models import prepare_model
from ttscale.self_certainty import LMHead, sample_self_certainties
from ttscale.steps import STEP_SEPARATOR
from ttscale.types import Problem
from ttscale.verifiers.base import VerifierBase


class SelfCertaintyVerifier(VerifierBase):
    """The mean KL(U || p) over a solution's tokens, p the policy model's full next-token distribution."""

    name: str = Field(default="self-certainty", exclude=True)
    model: str = Field(description="the policy model, as the run's --model (its own distributions are read)")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="options of the hidden-state engine")
    _head: LMHead = PrivateAttr()
    _backend: Any = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _names_the_model(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("model"):
            raise ValueError("self-certainty reads the policy model's own distributions: pass -V model=<the run's --model>")
        return values

    def model_post_init(self, __context: Any) -> None:
        self._head = LMHead.load(prepare_model(self.model).path)
        self._backend = hidden_state_backend("vllm", self.model, **self.backend_options)

    @property
    def backend(self) -> Any:
        """The hidden-state engine that reads solutions (its prefills are this verifier's cost)."""
        return self._backend

    async def score(self, problem: Problem, solutions: Sequence[str], meter: CostMeter) -> list[float]:
        """Each solution's self-certainty, from its exact text."""
        return await sample_self_certainties(meter, self._backend, self._head, problem.prompt, solutions)

    async def score_steps(self, problem: Problem, steps: Sequence[Sequence[str]], meter: CostMeter) -> list[list[float]]:
        """The self-certainty of each solution's text so far, repeated for every step."""
        scores = await self.score(problem, [STEP_SEPARATOR.join(s) for s in steps], meter)
        return [[score] * len(s) for score, s in zip(scores, steps)]

    async def close(self) -> None:
        """Stop the hidden-state engine."""
        await self._backend.close()
