"""A vLLM engine in pooling mode, for process reward models (the vllm-prm verifier).

vLLM 0.32 (checked against the installed package): the engine runs with `runner="pooling"`,
and step rewards come from `AsyncLLM.encode(..., PoolingParams(task="token_classify"))`; for
Qwen2ForProcessRewardModel vLLM sets step pooling on the `<extra_0>` token itself (step_tag_id
151651), so each request returns one [negative, positive] row per step. Older vLLMs called the
task "encode"/"reward"; vLLM 0.32 rejects those names with a message naming the new one.
Like ttscale/backends/vllm.py, vllm is imported only when the engine starts.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Sequence

from ttscale.backends.vllm import EngineModel
from ttscale.errors import TtscaleError
from ttscale.machine import choose_cpu_dtype, engine_memory_settings, plan_kv_cache
from ttscale.models import prepare_model
from ttscale.modelshape import load_shape
from ttscale.types import PoolRequest, PoolResult

POOLING_TASK = "token_classify"


class VLLMPoolingBackend:
    """In-process AsyncLLM with the pooling runner; `pool` returns each request's pooled rows."""

    def __init__(self, model: str, *, gpu_memory_utilization: float | None = None, max_model_len: int = 4096, dtype: str = "auto"):
        self._resolved = prepare_model(model)
        self.model = EngineModel(self._resolved.name, self._resolved.num_params or 0)
        self._settings: dict[str, Any] = {
            "model": self._resolved.path,
            "runner": "pooling",
            "max_model_len": max_model_len,
            "enable_prefix_caching": True,
            "dtype": dtype,
        }
        if gpu_memory_utilization is not None:
            self._settings["gpu_memory_utilization"] = gpu_memory_utilization
        self._engine = None
        self._tokenizer = None
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the pooling engine once."""
        async with self._start_lock:
            if self._engine is None:
                from vllm.engine.arg_utils import AsyncEngineArgs
                from vllm.platforms import current_platform
                from vllm.v1.engine.async_llm import AsyncLLM

                if current_platform.is_cpu():
                    self._settings.update(self._cpu_settings())
                try:
                    self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self._settings))
                except Exception as error:
                    reason = " ".join(str(error).split())[:300]
                    raise TtscaleError(
                        f"the vLLM pooling engine for the PRM {self._resolved.path} failed to start "
                        f"({type(error).__name__}: {reason}). A 7B PRM needs a GPU; on CPU use "
                        "--verifier llm-judge-prm."
                    ) from error
                self._tokenizer = self._engine.get_tokenizer()

    def _cpu_settings(self) -> dict[str, Any]:
        """On CPU, the dtype and the KV cache from ttscale.machine, as the generation engine gets
        them (a PRM reads prompts only: the cache holds a few full-length sequences)."""
        choice = choose_cpu_dtype(override=self._settings["dtype"])
        settings: dict[str, Any] = {"dtype": choice.dtype, "enforce_eager": True}
        shape = load_shape(self._resolved.path)
        if "gpu_memory_utilization" not in self._settings and shape is not None:
            plan = plan_kv_cache(shape, dtype=choice.dtype, max_model_len=self._settings["max_model_len"], sequences=4, max_tokens=0)
            settings.update(engine_memory_settings(plan))
        return settings

    def render(self, request: PoolRequest) -> str:
        """The chat as the PRM reads it: the template applied to the finished conversation."""
        if isinstance(request.prompt, str):
            return request.prompt
        return self._tokenizer.apply_chat_template(
            [m.model_dump() for m in request.prompt], tokenize=False, add_generation_prompt=False
        )

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """Pool every request concurrently; rows come back as plain floats."""
        await self.start()
        return list(await asyncio.gather(*(self._pool_one(r) for r in requests)))

    async def _pool_one(self, request: PoolRequest) -> PoolResult:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        ids = self._tokenizer.encode(self.render(request), add_special_tokens=False)
        final = None
        async for output in self._engine.encode(
            TokensPrompt(prompt_token_ids=ids), PoolingParams(task=POOLING_TASK), request_id=uuid.uuid4().hex
        ):
            final = output
        data = final.outputs.data
        rows = data.tolist() if hasattr(data, "tolist") else data
        return PoolResult(
            data=tuple(tuple(float(x) for x in row) for row in rows),
            prompt_tokens=len(ids),
            cached_prompt_tokens=min(getattr(final, "num_cached_tokens", 0) or 0, len(ids)),
        )

    async def generate(self, requests):
        """A pooling engine does not generate."""
        raise TtscaleError("the PRM's pooling engine cannot generate text; it only scores steps")

    async def close(self) -> None:
        """Shut the engine down."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            engine.shutdown = lambda *args, **kwargs: None
