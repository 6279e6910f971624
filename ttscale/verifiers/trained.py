"""`trained`: a verifier trained from one's own runs (`ttscale verifier train`), served from its head.json.

The policy model reads the prompt and the solution once (a prefill on a hidden-state pooling
engine, metered as the verifier's cost), and the head scores the hidden state at each step's end
(ttscale.reward_heads). Scores of a prefix are kept and reused: a step's hidden state depends
only on the text up to it. So a search asks only for the steps it has not scored (a beam's new
step), and the engine's prefix cache serves the text it read before (ttscale.backends.vllm_pooling):
the read costs the new tokens, as the structural cost prices it.

Gold: the head reads no gold answer. But it learned from the graded samples of its training
problems, so a run's records of those problems say `verifier_uses_gold: true` (upper bounds);
measure it on problems it was not trained on (`ttscale eval --split b`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

from pydantic import Field, PrivateAttr

from ttscale.cost import CostMeter
from ttscale.hidden_states import CachedHiddenStates, hidden_state_backend, step_features
from ttscale.protocols import Backend
from ttscale.reward_heads import RewardHead
from ttscale.types import Problem
from ttscale.verifiers.base import VerifierBase

MEMO_LIMIT = 200_000  # step-prefix scores kept (a long-running server forgets the oldest)


class TrainedVerifier(VerifierBase):
    """An ORM or PRM head on the policy model's hidden states, loaded from `path` (a directory or head.json)."""

    name: str = Field(default="trained", exclude=True)
    path: str = Field(description="the directory `ttscale verifier train -o DIR` wrote (or its head.json)")
    alpha: float | None = Field(default=None, description="PAV heads: weight of the advantage (default: the head's own)")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="options of the hidden-state engine")
    features: str | None = Field(default=None, description="an .npz cache of hidden-state reads (`verifier train/eval --features`): "
                                 "a solution read before is not read again, and is metered as the prefill it stands for")
    _head: RewardHead = PrivateAttr()
    _backend: Backend = PrivateAttr()
    _fit_problems: frozenset[str] = PrivateAttr(default=frozenset())
    _memo: "OrderedDict[tuple[str, tuple[str, ...]], float]" = PrivateAttr(default_factory=OrderedDict)

    def model_post_init(self, __context: Any) -> None:
        head = RewardHead.load(self.path)
        self._head = head if self.alpha is None else head.model_copy(update={"alpha": self.alpha})
        self._fit_problems = frozenset(head.provenance.fit_problems)
        engine = hidden_state_backend(head.backend, head.model_path, **self.backend_options)
        self._backend = CachedHiddenStates(engine, self.features) if self.features else engine

    @property
    def head(self) -> RewardHead:
        """The loaded head (kind, label, provenance)."""
        return self._head

    def trained_on(self, problem_id: str) -> bool:
        """Whether the head learned from this problem's graded samples (its scores there are upper bounds)."""
        return problem_id in self._fit_problems

    @property
    def backend(self) -> Backend:
        """The hidden-state engine that reads solutions (its prefills are this verifier's cost)."""
        return self._backend

    async def score_steps(self, problem: Problem, steps: Sequence[Sequence[str]], meter: CostMeter) -> list[list[float]]:
        """Read every solution with a step not scored before (one prefill each, asking for the
        steps from its first unscored one on), then look up."""
        prompt_key = repr(problem.prompt)
        unscored = {}  # solution -> its first step not scored before
        for solution in map(tuple, steps):
            first = next((i for i in range(len(solution)) if (prompt_key, solution[: i + 1]) not in self._memo), None)
            if first is not None:
                unscored.setdefault(solution, first)
        todo = list(unscored)
        firsts = [unscored[s] for s in todo]
        for solution, first, rows in zip(todo, firsts, await step_features(meter, problem.prompt, todo, firsts)):
            scores = self._head.step_scores(rows) or [0.0] * (len(solution) - first)  # no text to read: 0 (nothing vouches for it)
            for i, score in enumerate(scores, start=first):
                self._remember((prompt_key, solution[: i + 1]), score)
        return [[self._memo[(prompt_key, tuple(s[: i + 1]))] for i in range(len(s))] for s in steps]

    def _remember(self, key: tuple[str, tuple[str, ...]], score: float) -> None:
        self._memo[key] = score
        self._memo.move_to_end(key)
        while len(self._memo) > MEMO_LIMIT:
            self._memo.popitem(last=False)

    async def close(self) -> None:
        """Stop the hidden-state engine."""
        await self._backend.close()
