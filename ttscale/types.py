"""Frozen value types shared by every part of ttscale.

Validation errors name the bad field, because pydantic does; keep types small and public.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Frozen(BaseModel):
    """Base for immutable, validated value types; unknown fields are errors, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ChatMessage(Frozen):
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: str


class Problem(Frozen):
    """One benchmark item. `answer` is the gold answer; strategies only ever get `blind()`."""

    id: str = Field(min_length=1)
    question: str
    prompt: tuple[ChatMessage, ...] = Field(min_length=1)
    answer: str | None = None
    difficulty: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def blind(self) -> "Problem":
        """The same problem without its gold answer: what a strategy is allowed to see."""
        return self.model_copy(update={"answer": None})


class SampleParams(Frozen):
    """Sampling settings for one request (converted to vLLM's SamplingParams at the edge)."""

    n: int = Field(default=1, ge=1)
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, allow_inf_nan=False)  # inf and NaN are no temperatures
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    include_stop_str: bool = False
    seed: int | None = None
    logprobs: int | None = Field(default=None, ge=0)
    # vLLM's extra sampling parameters (as its OpenAI server takes them). None: not asked for.
    # A backend honours those it names in `sampling_extras` (ttscale.protocols.SamplingExtras)
    # and is never sent the others: `ttscale serve` refuses a request that sets one it cannot.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    min_tokens: int | None = Field(default=None, ge=0)
    ignore_eos: bool | None = None

    @field_validator("min_tokens")
    @classmethod
    def _min_tokens_within_max(cls, value: int | None, info: ValidationInfo) -> int | None:
        max_tokens = info.data.get("max_tokens")  # absent when it failed its own validation
        if value is not None and max_tokens is not None and value > max_tokens:
            raise ValueError(f"min_tokens ({value}) cannot exceed max_tokens ({max_tokens})")
        return value

    def extras(self) -> dict[str, Any]:
        """The extra sampling parameters asked for with an effect (a neutral value, such as
        ignore_eos=False or top_k=0, asks for nothing)."""
        return {name: value for name, neutral in SAMPLING_EXTRAS.items()
                if (value := getattr(self, name)) is not None and value not in neutral}


# vLLM's extra sampling parameters, with the values that change nothing (vLLM's defaults).
SAMPLING_EXTRAS: dict[str, tuple[Any, ...]] = {
    "top_k": (0, -1), "min_p": (0.0,), "repetition_penalty": (1.0,), "presence_penalty": (0.0,),
    "frequency_penalty": (0.0,), "min_tokens": (0,), "ignore_eos": (False,),
}


class GenRequest(Frozen):
    """A prompt (chat messages or raw text), an optional assistant prefix to continue, and params."""

    prompt: tuple[ChatMessage, ...] | str
    prefix: str = ""
    params: SampleParams = SampleParams()

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: tuple[ChatMessage, ...] | str):
        if not value:
            raise ValueError("prompt must not be empty")
        return value


FinishReason = Literal["stop", "length", "abort", "error"]


class Completion(Frozen):
    """One generated sample."""

    text: str
    num_tokens: int = Field(ge=0)
    finish_reason: FinishReason
    cumulative_logprob: float | None = None
    # With SampleParams.logprobs = K: for each generated token, its top-K alternatives as
    # {token text: logprob} (judges read P("Yes") from the first token's).
    top_logprobs: tuple[dict[str, float], ...] | None = None


class Generation(Frozen):
    """The answer to one GenRequest: its n completions and the prompt tokens it cost once."""

    completions: tuple[Completion, ...]
    prompt_tokens: int = Field(ge=0)
    cached_prompt_tokens: int = Field(default=0, ge=0)
    # Speculative decoding, summed over the completions: verification steps that had a draft,
    # tokens drafted, and tokens of those the target accepted (0 without speculation).
    drafts: int = Field(default=0, ge=0)
    draft_tokens: int = Field(default=0, ge=0)
    accepted_draft_tokens: int = Field(default=0, ge=0)
    # False when nobody could count the tokens (an HTTP server sent neither token ids nor usage,
    # and the model's tokenizer is unknown): the counts read 0 and the cost is unknown.
    cost_known: bool = True

    @model_validator(mode="after")
    def _cached_within_prompt(self) -> "Generation":
        if self.cached_prompt_tokens > self.prompt_tokens:
            raise ValueError("cached_prompt_tokens cannot exceed prompt_tokens")
        return self


class PoolRequest(Frozen):
    """A prompt for a pooling model (e.g. a PRM's step classifier): read, not continued.

    `prefix` is an assistant text read after the prompt (a solution being scored), as GenRequest's
    prefix is continued. `positions` (character offsets into `prefix`) ask a hidden-state backend
    for the rows at those places only: the row of the last token that starts before each offset
    (the end of a step); empty asks for every row.
    """

    prompt: tuple[ChatMessage, ...] | str
    prefix: str = ""
    positions: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _positions_within_prefix(self) -> "PoolRequest":
        if any(not 0 < p <= len(self.prefix) for p in self.positions):
            raise ValueError(f"positions must lie in 1..len(prefix) ({len(self.prefix)}), got {list(self.positions)}")
        return self


class PoolResult(Frozen):
    """A pooling model's output for one PoolRequest: one vector per pooled position."""

    data: tuple[tuple[float, ...], ...]
    prompt_tokens: int = Field(ge=0)
    cached_prompt_tokens: int = Field(default=0, ge=0)


class Candidate(Frozen):
    """A finished solution a strategy proposes: text, extracted answer, and any verifier scores."""

    text: str
    answer: str | None
    num_tokens: int = Field(ge=0)
    finish_reason: FinishReason
    score: float | None = None  # the verifier's aggregated score, when a verifier scored it
    step_scores: tuple[float, ...] | None = None  # a PRM's score for each step
    # Read from the sample's own logprobs when the strategy asked for them (ttscale.confidence):
    # each generated token's DeepConf confidence, and the mean log-probability per token.
    token_confidences: tuple[float, ...] | None = None
    mean_logprob: float | None = None


ORACLE_RULE = "oracle"  # "any candidate is correct": applied at grading time, from gold answers


class Trace(Frozen):
    """What a strategy returns for one problem.

    `selections` maps each selection rule the strategy applied to the answer it picked, so one
    run reports every rule; `chosen_rule` names the one the user asked for. The oracle rule is
    applied by the runner when grading, so a strategy may name it without applying it.
    `metadata` holds the keys of ttscale.protocols.TraceMetadata that apply, and the strategy's
    own log. `cost` is left None by strategies: SolveContext.solve fills it from the meters.
    """

    candidates: tuple[Candidate, ...]
    selections: dict[str, str | None]
    chosen_rule: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    cost: "Cost | None" = None

    @model_validator(mode="after")
    def _chosen_rule_is_applied(self) -> "Trace":
        if self.chosen_rule not in self.selections and self.chosen_rule != ORACLE_RULE:
            raise ValueError(f"chosen_rule {self.chosen_rule!r} is not among {sorted(self.selections)}")
        return self

    @property
    def answer(self) -> str | None:
        """The answer picked by the chosen rule (None for the oracle rule, which needs gold)."""
        return self.selections.get(self.chosen_rule)


class Grade(Frozen):
    """Ground-truth verdict on one answer; used for scoring only, never shown to strategies."""

    correct: bool
    reason: str = ""


class Cost(Frozen):
    """Compute spent on one problem. Only the CostMeter builds these.

    `flops` is the total (generation, verifier and draft model); `verifier_flops` and
    `draft_flops` say how much of it those parts spent. Verifier tokens are every token a
    verifier model read or wrote (its prompts, cached or not, plus its own generated tokens).
    """

    calls: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    verifier_calls: int = 0
    verifier_tokens: int = 0
    verifier_flops: float = 0.0
    flops: float = 0.0
    eflops: float = 0.0  # Kinetics: compute plus arithmetic intensity x memory traffic
    # Cache-independent ("structural") cost: the prompt tokens that repeat a prefix this problem
    # already sent or generated (ttscale.cost.PrefixLedger), and FLOPs, eFLOPs and verifier
    # FLOPs with those free instead of the engine's actual cache hits. They depend on the
    # requests alone, not on what the cache held (other problems, a restart on resume):
    # compare, scaling curves and the allocator price these (ttscale.cost.cache_independent_cost).
    structural_cached_prompt_tokens: int = 0
    structural_flops: float = 0.0
    structural_eflops: float = 0.0
    structural_verifier_flops: float = 0.0
    drafts: int = 0  # speculative decoding: verification steps that had a draft
    draft_tokens: int = 0  # speculative decoding: tokens the drafter proposed
    accepted_draft_tokens: int = 0
    draft_flops: float = 0.0
    wall_s: float = 0.0
    # Calls whose tokens nobody could count (Generation.cost_known False): their tokens and
    # FLOPs are missing from the totals above, so any total with uncounted_calls > 0 is unknown.
    uncounted_calls: int = 0
    # Calls whose tokens were counted but whose FLOPs nobody could price (the model's parameter
    # count is unknown, e.g. an upstream OpenAI-compatible server's): their FLOPs read 0 above,
    # so any FLOPs or eFLOPs total with unpriced_calls > 0 is unknown (ttscale.cost.flops_known).
    unpriced_calls: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(**{name: getattr(self, name) + getattr(other, name) for name in Cost.model_fields})
