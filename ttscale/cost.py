"""CostMeter and the cost model: the ONLY place that counts tokens, FLOPs and eFLOPs.

FLOPs (Large Language Monkeys, Brown et al. 2024, §2.3). A token at context length L costs

    2·(P + 2·n_layers·d_model·L)

with P the parameters (embeddings included). A token's context length is its 1-based position
in the sequence: prompt tokens sit at 1..L_in, a completion's i-th generated token (i = 1..ℓ)
at L_in + i. Prompt tokens are counted once per request however many samples it asks for (the
engine prefills once), and cached prompt tokens (positions 1..cached) are not recomputed.
Decode tokens are counted at their positions for every completion. Summed in closed form:

    prefill = 2·P·(L_in − c) + 4·n_layers·d_model·Σ_{p=c+1..L_in} p
    decode  = 2·P·ℓ + 4·n_layers·d_model·(ℓ·L_in + ℓ(ℓ+1)/2)        per completion

eFLOPs (Kinetics, Sadhukhan et al. 2025; repo Infini-AI-Lab/Kinetics, cost_model/utils.py
`dense_cost`): decode compute plus I × memory traffic. For N samples of lengths ℓ_j from a prompt
of L_in tokens, with D = 2·n_layers·n_kv_heads·head_dim (KV elements per token) and r the GQA
ratio n_heads/n_kv_heads:

    Σ_j [2·P·ℓ_j + r·(2·L_in·D·ℓ_j + D·ℓ_j²)] + I·(2·L_in·D·max_j ℓ_j + D·Σ_j ℓ_j²)

The prompt's KV is read once per decode step for all samples together, for as long as any
of them runs (max ℓ_j steps); with equal lengths this is Kinetics' formula exactly. Kinetics
leaves prefill out (negligible for long chains of thought); here prefill is compute-bound and
adds its FLOPs to eFLOPs, so short answers to long prompts are not free. I, the arithmetic
intensity, defaults to Kinetics' 562.5 (B200: FLOPs per byte of memory bandwidth).

Cache-independent cost. `cached_prompt_tokens` is what the engine's prefix cache served, which
depends on history (other problems, a restart on resume). Beside it every Cost holds a
structural count, `structural_cached_prompt_tokens`: the prompt tokens that repeat a prefix the
same problem already sent or generated (found by PromptStructure from the requests themselves),
and `structural_flops`, `structural_eflops` and `structural_verifier_flops`, priced with those
free instead. Comparisons (compare, scaling curves, the allocator) read recorded costs through
`cache_independent_cost`, so they never depend on the cache's state.

When a model's shape is unknown (an HTTP server of a model not on disk), every computed token
costs 2·P, eFLOPs equal FLOPs, and a warning says so once per model. When its parameter count
is unknown too, its FLOPs are unknown, never 0: each call counts in `unpriced_calls`, and every
total that includes one reads "unknown" (`flops_known`), as totals with uncounted tokens do.

A meter has a role. The "generator" meter wraps the policy model's backend; a "verifier" meter
wraps whatever a verifier runs on (a judge model, a PRM served for pooling), prices it with
that model's own shape, and books its tokens and FLOPs as verifier cost (a verifier's FLOPs are
the prefill of everything it reads plus whatever it generates), so every strategy's total
includes its verifier.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from ttscale.modelshape import ModelShape
from ttscale.errors import ConfigError
from ttscale.protocols import Backend, ModelInfo, PoolingBackend, PromptTokens, StreamingBackend, TokenStop, draft_num_params_of
from ttscale.types import Cost, Generation, GenRequest, PoolRequest, PoolResult

log = logging.getLogger(__name__)

MeterRole = Literal["generator", "verifier"]
KINETICS_INTENSITY = 562.5  # Kinetics' default E_flops (cost_model/best_of_N/cost_model_ntrial.py)
_warned_unknown_shape: set[str] = set()


def forward_flops(num_params: int, tokens: int) -> float:
    """2·P FLOPs per token: the fallback when the model's shape is unknown."""
    return 2.0 * num_params * tokens


def token_flops(shape: ModelShape, context_length: float) -> float:
    """FLOPs of one token at context length L: 2·(P + 2·n_layers·d_model·L)."""
    return 2.0 * (shape.num_params + 2.0 * shape.n_layers * shape.d_model * context_length)


def _attention_flops(shape: ModelShape, position_sum):
    return 4.0 * shape.n_layers * shape.d_model * position_sum


def prefill_flops(shape: ModelShape | None, num_params: int, prompt_tokens, cached_tokens=0):
    """FLOPs to prefill positions cached+1..prompt_tokens (works on numpy arrays too)."""
    computed = np.subtract(prompt_tokens, cached_tokens, dtype=np.float64)
    if shape is None:
        return 2.0 * num_params * computed
    prompt = np.asarray(prompt_tokens, dtype=np.float64)
    cached = np.asarray(cached_tokens, dtype=np.float64)
    positions = (prompt * (prompt + 1) - cached * (cached + 1)) / 2.0
    return 2.0 * shape.num_params * computed + _attention_flops(shape, positions)


def decode_flops(shape: ModelShape | None, num_params: int, prompt_tokens, num_tokens):
    """FLOPs to generate ℓ tokens at positions L_in+1..L_in+ℓ; elementwise on arrays of ℓ."""
    tokens = np.asarray(num_tokens, dtype=np.float64)
    if shape is None:
        return 2.0 * num_params * tokens
    positions = tokens * float(prompt_tokens) + tokens * (tokens + 1) / 2.0
    return 2.0 * shape.num_params * tokens + _attention_flops(shape, positions)


def kinetics_decode_eflops(shape: ModelShape, prompt_tokens, lengths, intensity: float = KINETICS_INTENSITY):
    """Kinetics eFLOPs of decoding samples of `lengths` (last axis) from one shared prompt."""
    ell = np.asarray(lengths, dtype=np.float64)
    L_in, D, r, P = float(prompt_tokens), float(shape.kv_per_token), shape.gqa_ratio, float(shape.num_params)
    compute = np.sum(2.0 * P * ell + r * (2.0 * L_in * D * ell + D * ell**2), axis=-1)
    longest = np.max(ell, axis=-1) if ell.shape[-1] else np.zeros(ell.shape[:-1])
    memory = 2.0 * L_in * D * longest + D * np.sum(ell**2, axis=-1)
    return compute + intensity * memory


@dataclass(frozen=True)
class CostModel:
    """Prices tokens for one model: its shape (None = unknown) and parameter count."""

    shape: ModelShape | None
    num_params: int
    intensity: float = KINETICS_INTENSITY
    name: str = "model"

    @classmethod
    def for_model(cls, model: ModelInfo, intensity: float = KINETICS_INTENSITY) -> "CostModel":
        """The cost model of a backend's model, warning once per model if its shape is unknown."""
        shape = model.shape
        num_params = shape.num_params if shape is not None else model.num_params
        if shape is None and model.name not in _warned_unknown_shape:
            _warned_unknown_shape.add(model.name)
            log.warning(
                "model shape of %r unknown (no config.json): FLOPs count 2·P per token without the "
                "attention term, and eFLOPs equal FLOPs", model.name,
            )
        return cls(shape, num_params, intensity, model.name)

    @property
    def priced(self) -> bool:
        """Whether tokens have a price: a shape or a parameter count (0 = unknown)."""
        return self.shape is not None or self.num_params > 0

    def prefill(self, prompt_tokens, cached_tokens=0):
        """FLOPs (= eFLOPs) of prefilling the uncached part of a prompt."""
        return prefill_flops(self.shape, self.num_params, prompt_tokens, cached_tokens)

    def generation(self, prompt_tokens: int, cached_tokens: int, lengths) -> tuple[Any, Any]:
        """(FLOPs, eFLOPs) of one request: prefill once, then samples of `lengths` (last axis).

        `lengths` may be a matrix (subsets × samples) to price many subsets at once.
        """
        ell = np.asarray(lengths, dtype=np.float64)
        prefill = self.prefill(prompt_tokens, cached_tokens)
        decode = np.sum(decode_flops(self.shape, self.num_params, prompt_tokens, ell), axis=-1)
        if self.shape is None:
            return prefill + decode, prefill + decode
        return prefill + decode, prefill + kinetics_decode_eflops(self.shape, prompt_tokens, ell, self.intensity)


def generation_cost(model: CostModel, generations: Sequence[Generation], wall_s: float,
                    structural_cached: Sequence[int] | None = None) -> Cost:
    """The cost of answering requests: prompt once per request, every completion's tokens.

    Priced twice: with the engine's cached prompt tokens free (`flops`, `eflops`), and with each
    request's `structural_cached` tokens free instead (`structural_*`; None: nothing free).
    """
    structural = _structural_counts(structural_cached, [g.prompt_tokens for g in generations])
    flops = eflops = structural_flops = structural_eflops = 0.0
    for g, free in zip(generations, structural):
        lengths = [c.num_tokens for c in g.completions]
        f, e = model.generation(g.prompt_tokens, g.cached_prompt_tokens, lengths)
        sf, se = model.generation(g.prompt_tokens, free, lengths)
        flops, eflops = flops + float(f), eflops + float(e)
        structural_flops, structural_eflops = structural_flops + float(sf), structural_eflops + float(se)
    return Cost(
        calls=len(generations),
        prompt_tokens=sum(g.prompt_tokens for g in generations),
        cached_prompt_tokens=sum(g.cached_prompt_tokens for g in generations),
        generated_tokens=sum(c.num_tokens for g in generations for c in g.completions),
        flops=flops,
        eflops=eflops,
        structural_cached_prompt_tokens=sum(structural),
        structural_flops=structural_flops,
        structural_eflops=structural_eflops,
        wall_s=wall_s,
        uncounted_calls=sum(not g.cost_known for g in generations),
        unpriced_calls=0 if model.priced else sum(g.cost_known for g in generations),
    )


def pool_cost(model: CostModel, results: Sequence[PoolResult], wall_s: float,
              structural_cached: Sequence[int] | None = None) -> Cost:
    """The cost of a pooling model reading prompts: the prefill of their uncached tokens
    (engine-cached for `flops`, `structural_cached` for `structural_flops`, as in generation_cost)."""
    structural = _structural_counts(structural_cached, [r.prompt_tokens for r in results])
    flops = sum(float(model.prefill(r.prompt_tokens, r.cached_prompt_tokens)) for r in results)
    structural_flops = sum(float(model.prefill(r.prompt_tokens, free)) for r, free in zip(results, structural))
    return Cost(
        calls=len(results),
        prompt_tokens=sum(r.prompt_tokens for r in results),
        cached_prompt_tokens=sum(r.cached_prompt_tokens for r in results),
        flops=flops,
        eflops=flops,
        structural_cached_prompt_tokens=sum(structural),
        structural_flops=structural_flops,
        structural_eflops=structural_flops,
        wall_s=wall_s,
        unpriced_calls=0 if model.priced else len(results),
    )


def _structural_counts(structural_cached: Sequence[int] | None, prompt_tokens: Sequence[int]) -> list[int]:
    """Each request's structurally cached tokens, within its prompt (none when not given)."""
    if structural_cached is None:
        return [0] * len(prompt_tokens)
    return [max(0, min(int(free), prompt)) for free, prompt in zip(structural_cached, prompt_tokens, strict=True)]


def subsample_costs(model: CostModel, record_cost: Mapping[str, Any], candidate_tokens: Sequence[int],
                    subsets: np.ndarray) -> dict[str, np.ndarray]:
    """What a one-request best-of-N problem would have cost with only some of its samples.

    `subsets` is a (subsets × k) matrix of candidate indices. The record is priced cache-
    independently (`cache_independent_cost`): each subset pays the prompt once (its structurally
    cached tokens free) plus its own samples' decoding. Parts that the record
    holds only as totals (verifier, speculative decoding, wall time) are pro-rated: verifier by
    the share of candidates kept (each candidate is scored once; its eFLOPs taken as its FLOPs),
    wall time and speculation (the drafter plus the target's rejected checks, as
    `speculative_cost` prices them) by the share of generated tokens. Returns per-subset
    arrays: flops, eflops, generated_tokens, prompt_tokens, wall_s.
    """
    record_cost = cache_independent_cost(record_cost)
    tokens = np.asarray(candidate_tokens, dtype=np.float64)
    subsets = np.asarray(subsets, dtype=np.int64)
    lengths = tokens[subsets]
    prompt, cached = int(record_cost.get("prompt_tokens", 0)), int(record_cost.get("cached_prompt_tokens", 0))
    flops, eflops = model.generation(prompt, cached, lengths)
    kept = subsets.shape[-1] / max(len(tokens), 1)
    token_share = lengths.sum(axis=-1) / tokens.sum() if tokens.sum() else np.full(subsets.shape[:-1], kept)
    verifier, draft, wall_s = _pro_rated(model, record_cost, kept, token_share)
    return {
        "flops": flops + verifier + draft,
        "eflops": eflops + verifier + draft,
        "generated_tokens": lengths.sum(axis=-1),
        "prompt_tokens": np.full(subsets.shape[:-1], float(prompt)),
        "wall_s": wall_s,
    }


def _pro_rated(model: CostModel, record_cost: Mapping[str, Any], kept, token_share):
    """The parts of a (cache-independent) record held only as totals, for a share of it:
    (verifier FLOPs by the share of candidates `kept`; speculation FLOPs and wall time by
    the share of generated tokens `token_share`)."""
    verifier = float(record_cost.get("verifier_flops", 0.0)) * kept
    rejected = float(record_cost.get("draft_tokens", 0)) - float(record_cost.get("accepted_draft_tokens", 0))
    speculation = float(record_cost.get("draft_flops", 0.0)) + forward_flops(model.num_params, rejected)
    return verifier, speculation * token_share, float(record_cost.get("wall_s", 0.0)) * token_share


def request_costs(model: CostModel, record_cost: Mapping[str, Any], candidate_tokens: Sequence[int],
                  requests: Sequence[Sequence[int]]) -> dict[str, float]:
    """What a one-request best-of-N problem would have cost had some of its samples been drawn
    in several requests of the same prompt, as adaptive strategies draw them (adaptive-
    consistency: a request per batch; DeepConf online: the warm-up, then a request per trace).

    `requests` holds, in the order sent, each request's samples' generated lengths (a sample
    stopped early: up to its stop); `candidate_tokens` are the record's full lengths. Priced
    as the meter prices those requests, cache-independently (`cache_independent_cost`): the
    first pays the prompt as the record did; each later one re-sends a prompt the problem
    already sent, which PromptStructure counts as cached in full (no prefill), but decodes
    on its own, so its decoding reads the prompt's KV again (the eFLOPs memory term, once per
    request, for as long as its longest sample runs). FLOPs and tokens are those of one
    request holding every sample; only eFLOPs see the split. Verifier, speculation and wall
    time are pro-rated as in `subsample_costs`. Returns floats: flops, eflops,
    generated_tokens, prompt_tokens, wall_s.
    """
    record_cost = cache_independent_cost(record_cost)
    recorded = np.asarray(candidate_tokens, dtype=np.float64)
    prompt, cached = int(record_cost.get("prompt_tokens", 0)), int(record_cost.get("cached_prompt_tokens", 0))
    first, later = (list(requests[0]), list(requests[1:])) if len(requests) else ([], [])
    flops, eflops = model.generation(prompt, cached, first)
    if later:  # one row per request, padded with samples of no tokens (which cost nothing)
        rows = np.zeros((len(later), max(len(r) for r in later)))
        for row, lengths in zip(rows, later):
            row[: len(lengths)] = lengths
        more_flops, more_eflops = model.generation(prompt, prompt, rows)
        flops, eflops = flops + np.sum(more_flops), eflops + np.sum(more_eflops)
    generated = float(sum(sum(r) for r in requests))
    samples = sum(len(r) for r in requests)
    kept = samples / max(len(recorded), 1)
    token_share = generated / recorded.sum() if recorded.sum() else kept
    verifier, draft, wall_s = _pro_rated(model, record_cost, kept, token_share)
    return {
        "flops": float(flops) + verifier + draft,
        "eflops": float(eflops) + verifier + draft,
        "generated_tokens": generated,
        "prompt_tokens": float(prompt * len(requests)),
        "wall_s": wall_s,
    }


def scaled_cost(record_cost: Mapping[str, Any], fraction: float) -> dict[str, float]:
    """A recorded cost, cache-independent (`cache_independent_cost`), scaled by `fraction`: the
    cost of running a share of independent searches (e.g. some of DVTS's subtrees, each an
    equal, independent search)."""
    record_cost = cache_independent_cost(record_cost)
    return {name: float(record_cost.get(name, 0.0)) * fraction for name in Cost.model_fields}


# --- Cache-independent ("structural") cost --------------------------------------------------------
#
# The engine reports which prompt tokens its prefix cache served, and that depends on history:
# which problems ran before, and whether the engine restarted (a resumed run starts cold). Both
# are true costs of what ran, but a comparison must not depend on them. A prompt token is
# *structurally* cached when the prompt up to and including it was already sent, or generated
# (prompt + completion), earlier for the same problem through the same meter: the shared prompt
# of step-wise search and its earlier steps, a revision's earlier attempt, a judge's fixed
# instructions. Nothing from other problems counts and every first occurrence is computed: the
# cost of the problem alone on an ideal prefix cache (token-exact, never evicted) that starts
# empty. It is a function of the problem's requests and completions, so a resumed run and a clean
# run agree on it exactly. The n samples of one request share their prompt either way (the
# prompt is counted once per request).

STRUCTURAL_FIELDS = {  # actual field -> its cache-independent counterpart in Cost
    "cached_prompt_tokens": "structural_cached_prompt_tokens",
    "flops": "structural_flops",
    "eflops": "structural_eflops",
    "verifier_flops": "structural_verifier_flops",
}
_warned_no_structure = False


def cache_independent_cost(record_cost: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded cost as compare, scaling curves and the allocator price it: the engine's cache
    hits replaced by the structural ones (flops, eflops, verifier_flops, cached_prompt_tokens
    take their `structural_*` values). Records written before structural costs existed keep
    their actual cost, and a warning says so once."""
    global _warned_no_structure
    cost = dict(record_cost)
    if "structural_flops" not in cost:
        if not _warned_no_structure:
            _warned_no_structure = True
            log.warning("a run was recorded without cache-independent (structural) costs; its actual costs are "
                        "used, which depend on the prefix cache's state (rerun it to compare it exactly)")
        return cost
    for actual, structural in STRUCTURAL_FIELDS.items():
        cost[actual] = cost.get(structural, 0)
    return cost


class PrefixLedger:
    """The sequences (token ids or characters) one problem has sent and received, as a trie of
    fixed-size blocks: `match` says how long a prefix of a new sequence was seen before.

    A block-aligned prefix is keyed by a chained hash of its blocks (as vLLM's prefix cache
    keys its blocks); each key holds the blocks, full or partial, seen right after it.
    """

    def __init__(self, block_size: int = 16):
        self._block_size = block_size
        self._next: dict[int, set[Any]] = {}

    def _block(self, sequence: Sequence[Any], start: int) -> Any:
        block = sequence[start : start + self._block_size]
        return block if isinstance(block, str) else tuple(block)

    def match(self, sequence: Sequence[Any]) -> int:
        """The length of the longest prefix of `sequence` that a sequence added before shares."""
        key, start = 0, 0
        while start < len(sequence):
            seen = self._next.get(key)
            if not seen:
                return start
            block = self._block(sequence, start)
            if len(block) == self._block_size and block in seen:
                key, start = hash((key, block)), start + self._block_size
                continue
            return start + max(common_length(block, other) for other in seen)
        return start

    def add(self, sequence: Sequence[Any]) -> None:
        """Remember `sequence` and so every prefix of it."""
        key = 0
        for start in range(0, len(sequence), self._block_size):
            block = self._block(sequence, start)
            self._next.setdefault(key, set()).add(block)
            key = hash((key, block))


def common_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items two sequences share."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


class PromptStructure:
    """Finds each request's structurally cached prompt tokens, for one meter (one problem).

    Backends that give their prompts' token ids (`PromptTokens`: vLLM, fake) are compared in
    tokens, exactly. Others (an HTTP server) are compared by characters of the prompt as plain
    text, and a shared prefix counts the prompt's tokens in the same proportion.
    """

    def __init__(self, backend: Any):
        self._backend = backend
        self._ledgers = {"tokens": PrefixLedger(16), "chars": PrefixLedger(64)}
        self._turn = asyncio.Lock()  # calls update the ledgers one at a time, in the order they arrive

    async def cached_off_loop(self, requests: Sequence[GenRequest | PoolRequest],
                              outputs: Sequence[Generation | PoolResult]) -> list[int]:
        """`cached` in a worker thread: tokenizing a long prompt takes seconds, which on the event
        loop would stall everything else it runs (a server's other requests, its /health)."""
        async with self._turn:
            return await asyncio.to_thread(self.cached, requests, outputs)

    def cached(self, requests: Sequence[GenRequest | PoolRequest], outputs: Sequence[Generation | PoolResult]) -> list[int]:
        """Each request's prompt tokens that repeat a prefix seen before; then remember the
        prompts, and after them every completion (its prompt + text), for later requests.

        Requests of one call count in order; a completion counts only for later calls, which
        are the only ones that can hold its text."""
        sequences = [self._sequence(r) for r in requests]
        cached = []
        for (unit, sequence), output in zip(sequences, outputs, strict=True):
            ledger = self._ledgers[unit]
            matched = ledger.match(sequence)
            ledger.add(sequence)
            if unit == "tokens":
                cached.append(min(matched, output.prompt_tokens))
            else:  # characters: the prompt tokens in the same proportion (the tokenizer is not here)
                cached.append(output.prompt_tokens * matched // max(len(sequence), 1))
        for request, output in zip(requests, outputs):
            for completion in output.completions if isinstance(output, Generation) else ():
                unit, sequence = self._sequence(request, completion.text)
                self._ledgers[unit].add(sequence)
        return cached

    def _sequence(self, request: GenRequest | PoolRequest, completion: str = "") -> tuple[str, Sequence[Any]]:
        """("tokens", the ids the backend sends) or ("chars", the prompt as text); + `completion`."""
        if isinstance(request, GenRequest) and isinstance(self._backend, PromptTokens):
            if completion:  # what a continuation from this completion would send
                request = request.model_copy(update={"prefix": request.prefix + completion})
            return "tokens", self._backend.prompt_token_ids(request)
        return "chars", _canonical_text(request) + completion


def _canonical_text(request: GenRequest | PoolRequest) -> str:
    """A request's prompt as plain text (roles marked), for backends that give no token ids."""
    prompt = request.prompt
    if not isinstance(prompt, str):
        prompt = "".join(f"<|{m.role}|>{m.content}\n" for m in prompt) + "<|assistant|>"
    return prompt + request.prefix


class CostMeter:
    """Wraps a backend and adds up the cost of every call made through it."""

    def __init__(self, backend: Backend, *, role: MeterRole = "generator", intensity: float = KINETICS_INTENSITY):
        self._backend = backend
        self.model: ModelInfo = backend.model
        self.role = role
        self.cost_model = CostModel.for_model(backend.model, intensity)
        self._parts: list[Cost] = []  # one per call: summed in any order to the same total
        self._structure = PromptStructure(backend)  # this meter's requests: one problem's

    @property
    def cost(self) -> Cost:
        """Everything spent through this meter so far."""
        return sum_costs(self._parts)

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Generate through the wrapped backend and record what it cost."""
        generations, _ = await self._generate_priced(requests)
        return generations

    async def _generate_priced(self, requests: Sequence[GenRequest]) -> tuple[list[Generation], list[Cost]]:
        if isinstance(self._backend, CostMeter):
            # A meter around a meter (revision's per-depth meters inside the problem's): book
            # what the outer one priced, so structural sharing is found in the problem's ledger.
            generations, costs = await self._backend._generate_priced(requests)
        else:
            started = time.perf_counter()
            generations = await self._backend.generate(requests)
            wall_s = time.perf_counter() - started
            structural = await self._structure.cached_off_loop(requests, generations)
            costs = [
                generation_cost(self.cost_model, generations, wall_s, structural),
                speculative_cost(self.model, generations),  # zero without speculation
            ]
        for cost in costs:
            self._record(cost)
        return generations, costs

    @property
    def streams(self) -> bool:
        """Whether the wrapped backend can stream a sample and abort it early (`generate_until`)."""
        inner = self._backend
        return inner.streams if isinstance(inner, CostMeter) else isinstance(inner, StreamingBackend)

    async def generate_until(self, request: GenRequest, stop: TokenStop) -> Generation:
        """Stream one sample through the wrapped backend, stopped where `stop` says
        (StreamingBackend), and record what it cost: every token generated, a stopped sample's too."""
        generation, _ = await self._generate_until_priced(request, stop)
        return generation

    async def _generate_until_priced(self, request: GenRequest, stop: TokenStop) -> tuple[Generation, list[Cost]]:
        if isinstance(self._backend, CostMeter):
            generation, costs = await self._backend._generate_until_priced(request, stop)
        elif isinstance(self._backend, StreamingBackend):
            started = time.perf_counter()
            generation = await self._backend.generate_until(request, stop)
            wall_s = time.perf_counter() - started
            structural = await self._structure.cached_off_loop([request], [generation])
            costs = [
                generation_cost(self.cost_model, [generation], wall_s, structural),
                speculative_cost(self.model, [generation]),
            ]
        else:
            raise ConfigError(
                f"the {type(self._backend).__name__} backend cannot stream a sample and stop it early; "
                "use --backend vllm (or fake in tests)"
            )
        for cost in costs:
            self._record(cost)
        return generation, costs

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """Run a pooling model (e.g. a PRM's step classifier) and record its prefill cost."""
        if not isinstance(self._backend, PoolingBackend):
            raise TypeError(f"{type(self._backend).__name__} has no pooling API; serve the model with a pooling backend")
        started = time.perf_counter()
        results = await self._backend.pool(requests)
        wall_s = time.perf_counter() - started
        self._record(pool_cost(self.cost_model, results, wall_s, await self._structure.cached_off_loop(requests, results)))
        return results

    def _record(self, cost: Cost) -> None:
        if self.role == "verifier":
            cost = as_verifier_cost(cost)
        self._parts.append(cost)

    async def close(self) -> None:
        """Closing a meter leaves the shared backend open; the runner owns it."""


def exact_total(values: Iterable[float]) -> float:
    """A sum that does not depend on the order of its terms: ints exactly, floats by math.fsum.

    Calls that run concurrently within a problem finish in any order, and a resumed run lists
    its problems in another order than a clean run; their totals must still agree exactly."""
    values = list(values)
    return sum(values) if all(isinstance(v, int) for v in values) else math.fsum(values)


def sum_costs(costs: Iterable[Cost]) -> Cost:
    """Costs added field by field with `exact_total`."""
    costs = list(costs)
    return Cost(**{name: exact_total(getattr(c, name) for c in costs) for name in Cost.model_fields})


def as_verifier_cost(cost: Cost) -> Cost:
    """Re-book a call's cost as verifier cost: the tokens it read and wrote, and its FLOPs."""
    return Cost(
        verifier_calls=cost.calls,
        verifier_tokens=cost.prompt_tokens + cost.generated_tokens,
        verifier_flops=cost.flops,
        flops=cost.flops,
        eflops=cost.eflops,
        structural_verifier_flops=cost.structural_flops,
        structural_flops=cost.structural_flops,
        structural_eflops=cost.structural_eflops,
        wall_s=cost.wall_s,
        uncounted_calls=cost.uncounted_calls,
        unpriced_calls=cost.unpriced_calls,
    )


def flops_known(cost: Mapping[str, Any]) -> bool:
    """Whether a cost's (or a total's) FLOPs and eFLOPs are known: every call in it had its
    tokens counted and a model of known size to price them."""
    return not cost.get("uncounted_calls", 0) and not cost.get("unpriced_calls", 0)


# --- Speculative decoding: kept apart from the FLOPs formula above --------------------------------


def speculative_cost(model: ModelInfo, generations: Sequence[Generation]) -> Cost:
    """What speculative decoding adds to a call: the drafter's work and the target's wasted checks.

    The drafted, accepted and draft-step counts come from the backend. Accepted tokens are
    already priced as generated tokens; the target also computes every rejected draft token
    while verifying, priced here at 2·P each (no attention term: drafts are a few tokens). The
    draft model costs 2·P_draft per drafted token (`model.draft_num_params`; 0 for n-gram
    lookup, which runs no model). Both count in `flops` and `eflops`; `draft_flops` says how
    much of that the draft model spent.
    """
    drafts = sum(g.drafts for g in generations)
    drafted = sum(g.draft_tokens for g in generations)
    accepted = sum(g.accepted_draft_tokens for g in generations)
    if not drafted:
        return Cost()
    draft_flops = forward_flops(draft_num_params_of(model), drafted)
    rejected_flops = forward_flops(model.num_params, drafted - accepted)
    return Cost(
        drafts=drafts,
        draft_tokens=drafted,
        accepted_draft_tokens=accepted,
        draft_flops=draft_flops,
        flops=draft_flops + rejected_flops,
        eflops=draft_flops + rejected_flops,
        structural_flops=draft_flops + rejected_flops,  # no prompt in it: nothing the cache changes
        structural_eflops=draft_flops + rejected_flops,
    )
