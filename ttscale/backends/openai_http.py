"""OpenAI-compatible HTTP backend: `vllm serve`, SGLang, llama.cpp server and the like.

Chat prompts go to /chat/completions, raw text to /completions. Step continuation sends the
assistant prefix as a final assistant message with `continue_final_message` (a vLLM/SGLang
extension), so the server applies the chat template once and continues the open turn.
Per-sample token counts come from `return_token_ids` (vLLM); where a server gives only a total,
n > 1 is split into n single requests, said once, so counts stay exact. The API key comes from
$OPENAI_API_KEY, never from the run config, so it is not written into run directories.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import httpx

from ttscale.errors import ConfigError, TtscaleError
from ttscale.modelshape import ModelShape, shape_for_model
from ttscale.types import Completion, Generation, GenRequest

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 500, 502, 503, 504}
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass
class ServedModel:
    """The served model's name and parameter count (from an option or the model registry)."""

    name: str
    num_params: int
    shape: ModelShape | None = None  # known for embedded models and local directories


class OpenAIBackend:
    """Async client for an OpenAI-compatible server, with bounded concurrency and retries."""

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        num_params: int | None = None,
        max_concurrency: int = 32,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        vllm_extensions: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject failures here
        speculative: object = None,
    ):
        if speculative is not None:
            raise ConfigError(
                "speculative decoding of an OpenAI-compatible server is set where the server starts "
                "(vllm: --speculative-config '{\"method\": \"ngram\", \"num_speculative_tokens\": 4}'); "
                "drop --speculative here"
            )
        self.base_url = base_url.rstrip("/")
        self.model = ServedModel(model, num_params if num_params is not None else _known_num_params(model), shape_for_model(model))
        api_key = os.environ.get("OPENAI_API_KEY", "EMPTY")
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s), headers={"Authorization": f"Bearer {api_key}"},
            transport=transport,
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._vllm_extensions = vllm_extensions
        self._split_n = False  # set once the server is found unable to serve n > 1 exactly

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Send all requests concurrently (bounded); answer each with one Generation."""
        return list(await asyncio.gather(*(self._generate_one(request) for request in requests)))

    async def _generate_one(self, request: GenRequest) -> Generation:
        if self._split_n and request.params.n > 1:
            return await self._generate_split(request)
        generation = await self._post_generation(request)
        if generation is None:  # the server could not give exact per-sample counts for n > 1
            return await self._generate_split(request)
        return generation

    async def _generate_split(self, request: GenRequest) -> Generation:
        """n > 1 as n single requests with consecutive seeds; the prompt is counted once per request sent."""
        seed = request.params.seed
        singles = [
            request.model_copy(update={"params": request.params.model_copy(update={"n": 1, "seed": None if seed is None else seed + i})})
            for i in range(request.params.n)
        ]
        parts = await asyncio.gather(*(self._post_generation(single) for single in singles))
        return Generation(
            completions=tuple(c for part in parts for c in part.completions),
            prompt_tokens=sum(part.prompt_tokens for part in parts),
            cached_prompt_tokens=sum(part.cached_prompt_tokens for part in parts),
        )

    async def _post_generation(self, request: GenRequest) -> Generation | None:
        chat = not isinstance(request.prompt, str)
        body = self._body(request, chat)
        try:
            data = await self._post("/chat/completions" if chat else "/completions", body)
        except _UnsupportedN:
            self._switch_to_split("does not accept n > 1")
            return None
        choices = sorted(data.get("choices") or [], key=lambda choice: choice.get("index", 0))
        usage = data.get("usage") or {}
        counts = [len(c["token_ids"]) if c.get("token_ids") is not None else None for c in choices]
        if None in counts:
            if len(choices) > 1:
                self._switch_to_split("reports no per-sample token ids (return_token_ids)")
                return None
            counts = [usage.get("completion_tokens", 0)]
        return Generation(
            completions=tuple(
                Completion(
                    text=(c.get("message") or {}).get("content") or "" if chat else c.get("text") or "",
                    num_tokens=count,
                    finish_reason=FINISH_REASONS.get(c.get("finish_reason") or "", "error"),
                    cumulative_logprob=_cumulative_logprob(c, chat),
                    top_logprobs=_top_logprobs(c, chat),
                )
                for c, count in zip(choices, counts)
            ),
            prompt_tokens=usage.get("prompt_tokens", 0),
            cached_prompt_tokens=((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        )

    def _switch_to_split(self, why: str) -> None:
        if not self._split_n:
            log.warning("%s %s; sending n > 1 as n separate requests from now on", self.base_url, why)
            self._split_n = True

    def _body(self, request: GenRequest, chat: bool) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {
            "model": self.model.name,
            "n": params.n,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:
            body.update({"logprobs": True, "top_logprobs": params.logprobs} if chat else {"logprobs": params.logprobs})
        if self._vllm_extensions:
            body["return_token_ids"] = True
            body["include_stop_str_in_output"] = params.include_stop_str
        if chat:
            body["messages"] = [m.model_dump() for m in request.prompt]
            if request.prefix:
                body["messages"].append({"role": "assistant", "content": request.prefix})
                body.update({"continue_final_message": True, "add_generation_prompt": False})
        else:
            body["prompt"] = request.prompt + request.prefix
        return body

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries and backoff on 429/5xx, timeouts and dropped connections."""
        url = self.base_url + path
        last_problem = ""
        for attempt in range(self._max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                async with self._slots:
                    response = await self._client.post(path, json=body)
            except httpx.TransportError as error:  # refused, reset, timed out
                last_problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                continue
            if response.status_code in RETRY_STATUS:
                last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                message = response.text[:300]
                if body.get("n", 1) > 1 and response.status_code == 400 and "'n'" in message.replace('"', "'"):
                    raise _UnsupportedN()
                raise TtscaleError(f"{url} rejected the request (HTTP {response.status_code}): {message}")
            return response.json()
        raise TtscaleError(
            f"{url} did not answer after {self._max_retries + 1} tries ({last_problem}). "
            "Check that the server is running; rerun the same command to resume once it is back."
        )

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()


class _UnsupportedN(Exception):
    """The server refused n > 1."""


def _cumulative_logprob(choice: dict[str, Any], chat: bool) -> float | None:
    logprobs = choice.get("logprobs")
    if not logprobs:
        return None
    if chat:
        return sum(item["logprob"] for item in logprobs.get("content") or [])
    return sum(value for value in logprobs.get("token_logprobs") or [] if value is not None)


def _top_logprobs(choice: dict[str, Any], chat: bool) -> tuple[dict[str, float], ...] | None:
    """Each generated token's top alternatives as {token: logprob}, from either API's shape."""
    logprobs = choice.get("logprobs")
    if not logprobs:
        return None
    if chat:
        return tuple(
            {alt["token"]: alt["logprob"] for alt in item.get("top_logprobs") or []} or {item["token"]: item["logprob"]}
            for item in logprobs.get("content") or []
        )
    return tuple(dict(alternatives or {}) for alternatives in logprobs.get("top_logprobs") or [])


def _known_num_params(model: str) -> int:
    """Parameters of an embedded model or a local directory; 0 (no FLOPs) for anything else."""
    from ttscale.models import EMBEDDED_MODELS, prepare_model
    from pathlib import Path

    if model in EMBEDDED_MODELS or (Path(model) / "config.json").is_file():
        return prepare_model(model).num_params or 0
    log.warning("parameter count of %r unknown: FLOPs will read 0; pass --backend-option num_params=N", model)
    return 0
