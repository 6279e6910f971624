"""The whole contract between ttscale's parts: what plugins implement, and all the core reads.

Required: Backend (with its ModelInfo), Verifier, Strategy, Benchmark (with AnswerTools).

What plugins are handed (implemented by the core; a plugin only calls them):
    StrategyContext   a Strategy's `ctx` for one problem (ttscale.context.SolveContext)
    Meter             `ctx.backend`, and the `meter` a Verifier is handed (ttscale.cost.CostMeter)
    BoundVerifier     `ctx.verifier`: the run's verifier bound to the problem (context.VerifierView)
A plugin needs nothing else from the core; ttscale.plugins gathers these with the value types,
the public base classes and the entry-point groups that make an installed package's plugins
known by name (docs/plugins.md).

Optional capabilities are small Protocols as well. The core asks `isinstance(x, Capability)`
(through the `*_of` helpers below) and uses the stated default when a plugin lacks one, so a
new plugin implements only what it has:

    capability                      on           default without it   read by
    PoolingBackend.pool             backend      verifiers that pool   CostMeter.pool
                                                 refuse the backend
    PromptTokens.prompt_token_ids   backend      prefixes compared     CostMeter (structural,
                                                 by characters         cache-independent cost)
    EngineInfo.engine_settings      backend      {}                    runner (backend.json)
    WorkloadSized.size_for()        backend      the engine's own      runner, before start
                                                 default sizing
    SpeculativeEngine               backend      no counters           runner (backend.json)
      .speculative_metrics()
    DraftingModel.draft_num_params  backend.model  0 (n-gram, none)    CostMeter (speculation)
    StreamingBackend                backend      strategies that stop  CostMeter.generate_until
      .generate_until                            samples early refuse  (DeepConf online)
    TextStreamingBackend            backend      the answer is sent    serve (tokens to the
      .generate_streaming                        once it is chosen     client as generated)
    SamplingExtras.sampling_extras  backend      none: serve refuses   serve (per request)
                                                 top_k, ignore_eos...
    VerifierNeed.needs_verifier     strategy     False                 runner, before any problem
    TrainedOnProblems.trained_on    verifier     False                 runner (verifier_uses_gold
                                                                       per problem)
    SampleBudget.n                  strategy     1                     runner (engine sizing)
    Startable.start()               backend      the engine starts     serve (at startup, so the
                                                 on first use          first request does not wait)
    PromptTemplated                 benchmark    None                  allocator (bare prompts)
    TraceMetadata keys              Trace.metadata  absent             analysis (subsampling,
                                                                       revision depths)

What a problem costs travels one road: the strategy spends only through `ctx.backend` and
`ctx.verifier` (CostMeters), and `SolveContext.solve` puts their total on `Trace.cost`; the
runner's record and `ttscale.solve` both take it from there.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, TypedDict, runtime_checkable

from ttscale.types import Cost, Generation, GenRequest, Grade, PoolRequest, PoolResult, Problem, SampleParams, Trace

if TYPE_CHECKING:
    from ttscale.modelshape import ModelShape


class ModelInfo(Protocol):
    """What the cost model needs to know about the model behind a backend."""

    name: str
    num_params: int
    # Layers, d_model, heads (ttscale.modelshape.ModelShape), or None when unknown: then the
    # cost model prices 2·P per token and says so once.
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

    async def score(self, problem: Problem, solutions: Sequence[str], meter: "Meter") -> list[float]: ...

    async def score_steps(
        self, problem: Problem, steps: Sequence[Sequence[str]], meter: "Meter"
    ) -> list[list[float]]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Strategy(Protocol):
    """Turns one blind problem into a Trace, spending compute only through `ctx.backend`."""

    name: str

    async def solve(self, problem: Problem, ctx: "StrategyContext") -> Trace: ...


# --- what plugins are handed: implemented by the core, called by plugins -----------------------


@runtime_checkable
class Meter(Protocol):
    """A backend seen through the cost meter (ttscale.cost.CostMeter): every call is priced and
    booked to the problem. A strategy's `ctx.backend` is one (the generator's); a verifier is
    handed one as `meter` (a verifier-role meter, so its tokens count as verifier cost).

    To measure a part of the work (one revision round, say), wrap the meter in another
    `CostMeter(ctx.backend)`: the inner one's `cost` is that part, the problem's meter still
    counts everything.
    """

    model: ModelInfo

    @property
    def cost(self) -> Cost:
        """Everything spent through this meter so far."""
        ...

    @property
    def streams(self) -> bool:
        """Whether `generate_until` works here (the backend is a StreamingBackend)."""
        ...

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """One Generation per request, in order (the Backend's `generate`, priced)."""
        ...

    async def generate_until(self, request: GenRequest, stop: "TokenStop") -> Generation:
        """One streamed sample cut where `stop` says (StreamingBackend); a ConfigError without streaming."""
        ...

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """A pooling model's rows (PoolingBackend), priced as prefill; a TypeError without pooling."""
        ...


@runtime_checkable
class BoundVerifier(Protocol):
    """The run's verifier bound to one problem and its verifier meter: what `ctx.verifier` is.

    A strategy passes only solutions; an oracle verifier (uses_gold) gets the gold answer behind
    the strategy's back, and the strategy still sees only scores.
    """

    name: str
    uses_gold: bool

    @property
    def meter(self) -> Meter:
        """The verifier-role meter that books this verifier's cost for this problem."""
        ...

    async def score(self, solutions: Sequence[str]) -> list[float]:
        """One outcome score per full solution, higher is better."""
        ...

    async def score_steps(self, steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """One score per step, for each (partial or full) solution given as its list of steps."""
        ...


@runtime_checkable
class StrategyContext(Protocol):
    """Everything a strategy may use for one problem (ttscale.context.SolveContext), and nothing
    it may not: no gold answer, no grader, no backend except through the meter.

    `params` are the run's sampling defaults with `seed` already specific to this problem, and
    `rng` is seeded the same way, so a strategy's draws are reproducible whatever order problems
    finish in. `answers` extracts and compares answers (AnswerTools, never `grade`).
    """

    backend: Meter
    answers: AnswerTools
    params: SampleParams
    rng: random.Random
    verifier: BoundVerifier | None

    @property
    def cost(self) -> Cost:
        """Everything spent for this problem so far: generation plus the verifier's meter."""
        ...

    def require_verifier(self, strategy: str) -> BoundVerifier:
        """The verifier, or a ConfigError naming `strategy` and the verifiers to pass."""
        ...


# --- optional capabilities ------------------------------------------------------------------


@runtime_checkable
class PoolingBackend(Protocol):
    """A backend serving a pooling model (e.g. a PRM's step classifier): reads prompts, returns rows."""

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]: ...


TokenStop = Callable[[Mapping[str, float]], bool]
"""Fed each generated token's top-k {token: logprob} in order (a fresh one per request); True
stops the sample after that token (ttscale.confidence.GroupConfidenceStop)."""


@runtime_checkable
class StreamingBackend(Protocol):
    """A backend that streams one sample and aborts it the moment a rule says stop (DeepConf online).

    The request asks for one sample (n=1) with logprobs. The Generation's completion is cut after
    the token where `stop` said True, with finish_reason "abort"; its `num_tokens` counts every
    token the engine generated for it (at least the kept ones: a streamed chunk may carry tokens
    past the stop), so the meter prices what was spent. A sample `stop` never stops is returned
    whole, as `generate` would return it.
    """

    async def generate_until(self, request: GenRequest, stop: TokenStop) -> Generation: ...


TextSink = Callable[[str], None]
"""Fed each piece of new text of a streamed sample, in order, as the engine makes it."""


@runtime_checkable
class TextStreamingBackend(Protocol):
    """A backend that hands a sample's text out as it is generated (`ttscale serve` streams it to
    the client while the sample is still being made: time to first token).

    The request asks for one sample (n=1). `on_text` gets each new piece of its text, in order;
    the pieces joined are the completion's text. Returns the Generation `generate` would return.
    """

    async def generate_streaming(self, request: GenRequest, on_text: TextSink) -> Generation: ...


@runtime_checkable
class SamplingExtras(Protocol):
    """A backend that honours some of vLLM's extra sampling parameters (SampleParams.extras():
    top_k, min_p, repetition_penalty, presence_penalty, frequency_penalty, min_tokens, ignore_eos).
    Default: none, and a request that sets one is refused by name."""

    sampling_extras: frozenset[str]


@runtime_checkable
class TrainedOnProblems(Protocol):
    """A verifier learned from graded samples (`ttscale verifier train`): the problems it was trained
    on reached it with their gold answers (as labels), so its scores there are upper bounds."""

    def trained_on(self, problem_id: str) -> bool: ...


@runtime_checkable
class PromptTokens(Protocol):
    """A backend that can say which token ids it prefills for a request (vLLM; the fake's token
    strings): the CostMeter finds prefixes a problem shares between its requests exactly, in tokens."""

    def prompt_token_ids(self, request: GenRequest) -> Sequence[Any]: ...


@runtime_checkable
class EngineInfo(Protocol):
    """A backend that reports the engine settings it chose (dtype, KV cache, ...), for backend.json."""

    engine_settings: dict[str, Any]


@runtime_checkable
class WorkloadSized(Protocol):
    """A backend whose engine sizes its memory (the KV cache) for the run's workload, before it starts."""

    def size_for(self, *, sequences: int, max_tokens: int) -> None:
        """Plan for `sequences` running at once (problems in flight x samples each), each of up to
        a prompt plus `max_tokens` generated tokens."""
        ...


@runtime_checkable
class Startable(Protocol):
    """A backend whose engine can be started ahead of the first request (vLLM: about a minute on
    CPU). `ttscale serve` starts it at startup; later calls return at once. Default: the backend
    needs no start, or starts on first use."""

    async def start(self) -> None: ...


@runtime_checkable
class SampleBudget(Protocol):
    """A strategy with a budget of N samples (or particles, or beams x width) per problem."""

    n: int


@runtime_checkable
class SpeculativeEngine(Protocol):
    """A backend that reports its engine's speculative-decoding counters over the run."""

    def speculative_metrics(self) -> dict[str, Any] | None:
        """drafts, drafted/accepted/emitted tokens and rates since start; None without speculation."""
        ...


@runtime_checkable
class DraftingModel(Protocol):
    """A model served with speculative decoding: the draft model's parameter count (0: n-gram)."""

    draft_num_params: int


@runtime_checkable
class VerifierNeed(Protocol):
    """A strategy that may need a verifier (with some options): the runner refuses to start without one."""

    needs_verifier: bool


@runtime_checkable
class PromptTemplated(Protocol):
    """A benchmark whose prompt is one user message: its template with {question} filled in.

    `prompt_template` is the user's override (None: none), `default_template` the benchmark's own.
    A fitted allocation policy wraps bare prompts the same way.
    """

    prompt_template: str | None
    default_template: str


class TraceMetadata(TypedDict, total=False):
    """The keys of `Trace.metadata` that the core reads; a strategy sets those that apply.

    Lists are per candidate, in candidate order. Other keys are the strategy's own log: recorded
    in samples.jsonl as `trace_metadata`, read by nobody else.
    """

    subtree: list[int]
    """Which independent search produced each candidate (DVTS); analysis subsamples smaller N
    by whole subtrees, each costing an equal share."""
    chain: list[int]
    """Sequential revision: the chain of each candidate."""
    depth: list[int]
    """Sequential revision: each candidate's attempt number in its chain (1 = first attempt)."""
    depth_cost: list[dict[str, Any]]
    """Sequential revision: the Cost (as a dict) of each depth over all chains, index d-1 for depth d."""
    scorer: str
    """What produced Candidate.score: "verifier" (the run's verifier), or the name of a
    verifier-free scorer read from the sample's own logprobs (ttscale/strategies/best_of_n.py: mean-logprob,
    topk-certainty, deepconf-*). Such scores are no verifier's: no gold, no verifier model."""
    code_exec: list[dict[str, Any]]
    """Code rules: each candidate's run on the problem's visible tests (ttscale.code_exec.CandidateExec
    as a dict: per-test status and output digest, runs, CPU and wall seconds); compare recomputes
    pass-examples and behaviour-vote from it."""
    execution: dict[str, Any]
    """Code rules: the problem's execution cost, beside FLOPs (runs, cpu_s, wall_s)."""
    program_exec: list[dict[str, Any]]
    """Program of thought: each candidate's program run in the sandbox (ttscale.code_exec.ProgramRun
    as a dict: its printed answer, sandbox verdict, CPU and wall seconds)."""
    behaviour_filter: str
    """behaviour-vote: "visible" where only candidates that pass the visible tests join a cluster."""
    thinking: list[dict[str, Any]]
    """Budget forcing (ttscale.thinking): each candidate's thinking budget, its thinking and answer
    tokens, extensions, how its thinking ended, and the Cost (as a dict) of a run at that budget
    alone; compare draws the budgets as one curve."""


PER_CANDIDATE_KEYS = ("subtree", "chain", "depth", "code_exec", "program_exec", "thinking")


def check_trace_metadata(trace: Trace, strategy: str) -> None:
    """Raise ValueError unless every per-candidate list in trace.metadata has one entry per candidate."""
    for key in PER_CANDIDATE_KEYS:
        values = trace.metadata.get(key)
        if values is not None and len(values) != len(trace.candidates):
            raise ValueError(
                f"strategy {strategy!r}: trace.metadata[{key!r}] has {len(values)} entries for "
                f"{len(trace.candidates)} candidates; it must give one per candidate, in order"
            )


def needs_verifier(strategy: object) -> bool:
    """Whether the strategy, with its options, cannot run without a verifier (default: it can)."""
    return bool(strategy.needs_verifier) if isinstance(strategy, VerifierNeed) else False


def verifier_saw_gold(verifier: object, problem_id: str) -> bool:
    """Whether gold answers reached the verifier's scores of this problem: an oracle's, or a trained
    verifier's on a problem it was trained on (default: neither)."""
    if verifier is None:
        return False
    if getattr(verifier, "uses_gold", False):
        return True
    return isinstance(verifier, TrainedOnProblems) and verifier.trained_on(problem_id)


def streams(backend: object) -> bool:
    """Whether a backend can stream a sample and abort it early (StreamingBackend)."""
    return isinstance(backend, StreamingBackend)


def streams_text(backend: object) -> bool:
    """Whether a backend can hand out a sample's text as it is generated (TextStreamingBackend)."""
    return isinstance(backend, TextStreamingBackend)


def sampling_extras_of(backend: object) -> frozenset[str]:
    """The extra sampling parameters a backend honours (none by default)."""
    return frozenset(backend.sampling_extras) if isinstance(backend, SamplingExtras) else frozenset()


def engine_settings_of(backend: object) -> dict[str, Any]:
    """The engine settings a backend chose ({} when it reports none)."""
    return dict(backend.engine_settings) if isinstance(backend, EngineInfo) else {}


def size_for_workload(backend: object, *, sequences: int, max_tokens: int) -> None:
    """Tell a backend that sizes its engine what the run will hold at once (others ignore it)."""
    if isinstance(backend, WorkloadSized):
        backend.size_for(sequences=sequences, max_tokens=max_tokens)


async def start_now(backend: object) -> None:
    """Start a backend's engine now if it can be started ahead of use (Startable); else nothing."""
    if isinstance(backend, Startable):
        await backend.start()


def samples_per_problem(strategy: object) -> int:
    """N, the samples or particles a strategy may have in flight for one problem (default 1)."""
    return max(1, int(strategy.n)) if isinstance(strategy, SampleBudget) else 1


def speculative_metrics_of(backend: object) -> dict[str, Any] | None:
    """A backend's speculative-decoding counters (None when it has none)."""
    return backend.speculative_metrics() if isinstance(backend, SpeculativeEngine) else None


def draft_num_params_of(model: object) -> int:
    """The draft model's parameters (0 without one: no speculation, or n-gram lookup)."""
    return int(model.draft_num_params) if isinstance(model, DraftingModel) else 0


def prompt_template_of(benchmark: object) -> str | None:
    """The template a benchmark wraps questions in ({question} placeholder), or None."""
    if isinstance(benchmark, PromptTemplated):
        return benchmark.prompt_template or benchmark.default_template
    return None
