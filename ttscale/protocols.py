"""The whole contract between ttscale's parts. Plugins implement these; nothing else is assumed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

from ttscale.types import Generation, GenRequest, Grade, Problem, Trace

if TYPE_CHECKING:
    from ttscale.context import SolveContext
    from ttscale.cost import CostMeter
    from ttscale.modelshape import ModelShape


class ModelInfo(Protocol):
    """What the cost model needs to know about the model behind a backend."""

    name: str
    num_params: int
    # Layers, d_model, heads (ttscale.modelshape.ModelShape), or None when unknown: then the
    # cost model prices 2·P per token and says so once. Objects without it count as None.
    shape: "ModelShape | None"


@runtime_checkable
class Backend(Protocol):
    """Generates completions. `generate` answers every request, in order, with one Generation."""

    model: ModelInfo

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]: ...

    async def close(self) -> None: ...


@runtime_checkable
class AnswerTools(Protocol):
    """Answer extraction and equivalence for a benchmark's domain; knows nothing of gold answers."""

    def extract_answer(self, text: str) -> str | None: ...

    def equivalent(self, a: str, b: str) -> bool: ...


@runtime_checkable
class Benchmark(AnswerTools, Protocol):
    """A set of problems with its own answer extraction and ground-truth grading."""

    name: str

    def load(self, *, limit: int | None = None) -> list[Problem]: ...

    def grade(self, problem: Problem, answer: str | None) -> Grade: ...


@runtime_checkable
class Verifier(Protocol):
    """Scores solutions: outcome scores (ORMs) or one score per step (PRMs), higher is better.

    Verifiers that run a model get it metered as `meter` (a verifier-role CostMeter), so their
    tokens and FLOPs land in the problem's cost. `backend` is the verifier's own backend, or
    None to run on the generation backend (e.g. the policy model judging its own steps).
    `uses_gold` marks oracle verifiers: they get the gold answer and give upper bounds.
    """

    name: str
    uses_gold: bool
    backend: Backend | None

    async def score(self, problem: Problem, solutions: Sequence[str], meter: "CostMeter") -> list[float]: ...

    async def score_steps(
        self, problem: Problem, steps: Sequence[Sequence[str]], meter: "CostMeter"
    ) -> list[list[float]]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Strategy(Protocol):
    """Turns one blind problem into a Trace, spending compute only through `ctx.backend`."""

    name: str

    async def solve(self, problem: Problem, ctx: "SolveContext") -> Trace: ...
