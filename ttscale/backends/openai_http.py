"""OpenAI-compatible HTTP backend: `vllm serve`, SGLang, llama.cpp server and the like.

Chat prompts go to /chat/completions, raw text to /completions. Step continuation sends the
assistant prefix as a final assistant message with `continue_final_message` (a vLLM/SGLang
extension), so the server applies the chat template once and continues the open turn.
The API key comes from $OPENAI_API_KEY, never from the run config, so it is not written into
run directories.

A server may misbehave; a run still holds exactly what it asked for, or stops with one line:
- fewer choices than n (or none): the missing samples are asked for again, a bounded number of
  times (`max_topups`); then the run stops naming the URL and what came back;
- 429/5xx, dropped connections, and a 200 whose body is not a JSON completion are retried
  (`max_retries`, backoff `backoff_s`·2^k); a Retry-After header (seconds or HTTP-date) sets the
  wait instead, capped at `max_retry_after_s` with a warning when the cap applies;
- token counts come from `return_token_ids` (vLLM); where a server gives only a usage total,
  n > 1 is split into n single requests, said once, so counts stay exact; with neither, the
  model's tokenizer counts them (embedded models, local directories, or `tokenizer=DIR`), and
  failing that the Generation says `cost_known=False`, so the record and the table say the
  cost is unknown instead of a silent 0;
- `generate_streaming` (one sample, for `ttscale serve`'s time to first token) streams from the
  server; a server that will not stream gets the plain request instead, with its retries.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import httpx

from ttscale.errors import ConfigError, TtscaleError
from ttscale.models import EMBEDDED_MODELS, prepare_model
from ttscale.modelshape import ModelShape, shape_for_model
from ttscale.types import SAMPLING_EXTRAS, Completion, Generation, GenRequest

log = logging.getLogger(__name__)
RETRY_STATUS = {429, 500, 502, 503, 504}
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}
OPENAI_SAMPLING_EXTRAS = frozenset({"presence_penalty", "frequency_penalty"})
URL_HINT = "pass the server's API URL with scheme and host, e.g. --base-url http://127.0.0.1:8000/v1"


@dataclass
class ServedModel:
    """The served model's name and parameter count (from an option or the model registry)."""

    name: str
    num_params: int
    shape: ModelShape | None = None  # known for embedded models and local directories


@dataclass
class _Reply:
    """One server answer turned into a Generation, plus a short account of what came back."""

    generation: Generation
    account: str
    requests: int = 1  # HTTP requests it took (n single ones where n > 1 was split)


class OpenAIBackend:
    """Async client for an OpenAI-compatible server, with bounded concurrency, retries and top-ups."""

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
        max_retry_after_s: float = 60.0,
        max_topups: int = 4,
        tokenizer: str | None = None,
        vllm_extensions: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject failures here
        sleep: Callable[[float], Awaitable[Any]] | None = None,  # tests record the waits here
        speculative: object = None,
    ):
        if speculative is not None:
            raise ConfigError(
                "speculative decoding of an OpenAI-compatible server is set where the server starts "
                "(vllm: --speculative-config '{\"method\": \"ngram\", \"num_speculative_tokens\": 4}'); "
                "drop --speculative here"
            )
        _check_options(max_concurrency=max_concurrency, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s,
                       max_retry_after_s=max_retry_after_s, max_topups=max_topups)
        self.base_url = _checked_base_url(base_url)  # before anything slow: a bad URL fails at once
        if tokenizer is not None and not Path(tokenizer).expanduser().is_dir():
            raise ConfigError(f"backend option tokenizer={tokenizer!r} is not a directory; pass a local Hugging Face model or tokenizer directory")
        self.model = ServedModel(model, num_params if num_params is not None else _known_num_params(model), shape_for_model(model))
        api_key = os.environ.get("OPENAI_API_KEY", "EMPTY")
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s), headers={"Authorization": f"Bearer {api_key}"},
            transport=transport,
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_retry_after_s = max_retry_after_s
        self._max_topups = max_topups
        self._sleep = sleep or asyncio.sleep
        self._vllm_extensions = vllm_extensions
        # OpenAI's API has the two penalties; vLLM's server (vllm_extensions) takes the rest too.
        self.sampling_extras = frozenset(SAMPLING_EXTRAS) if vllm_extensions else OPENAI_SAMPLING_EXTRAS
        self._split_n = False  # set once the server is found unable to serve n > 1 exactly
        self._tokenizer_source = tokenizer or model
        self._tokenizer: Any = None
        self._tokenizer_resolved = False
        self._tokenizer_lock = asyncio.Lock()
        self._said: set[str] = set()  # warnings already given (each is said once)

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Send all requests concurrently (bounded); answer each with one Generation of exactly n."""
        return list(await asyncio.gather(*(self._generate_one(request) for request in requests)))

    async def _generate_one(self, request: GenRequest) -> Generation:
        """Exactly n completions: ask again for whatever a reply lacked, at most max_topups times."""
        n, seed = request.params.n, request.params.seed
        replies: list[_Reply] = []
        got = 0
        while True:
            ask = request
            if replies:  # a top-up: only the missing samples, seeds continuing where the first stopped
                ask = request.model_copy(update={"params": request.params.model_copy(
                    update={"n": n - got, "seed": None if seed is None else seed + got})})
            reply = await self._generate_exact(ask)
            replies.append(reply)
            got += len(reply.generation.completions)
            if got >= n:
                break
            if len(replies) > self._max_topups:
                raise TtscaleError(
                    f"{self._url(request)} returned {got} of the {n} samples asked for in {sum(r.requests for r in replies)} requests "
                    f"(the last asked for {ask.params.n} and got {reply.account}). Check the server's log and its "
                    "limits on n; rerun the same command to resume."
                )
        if len(replies) > 1:
            self._say_once("topup", "%s answered a request for n=%d with %s; asked again for the missing samples "
                           "(said once; every request keeps exactly n)", self._url(request), n, replies[0].account)
        generations = [r.generation for r in replies]
        return Generation(
            completions=tuple(c for g in generations for c in g.completions)[:n],
            prompt_tokens=sum(g.prompt_tokens for g in generations),
            cached_prompt_tokens=sum(g.cached_prompt_tokens for g in generations),
            cost_known=all(g.cost_known for g in generations),
        )

    async def _generate_exact(self, request: GenRequest) -> _Reply:
        """One request, or n single ones where the server cannot give per-sample counts for n > 1."""
        if self._split_n and request.params.n > 1:
            return await self._generate_split(request)
        reply = await self._post_generation(request)
        if reply is None:  # the server could not give exact per-sample counts for n > 1
            return await self._generate_split(request)
        return reply

    async def _generate_split(self, request: GenRequest) -> _Reply:
        """n > 1 as n single requests with consecutive seeds; the prompt is counted once per request sent."""
        seed = request.params.seed
        singles = [
            request.model_copy(update={"params": request.params.model_copy(update={"n": 1, "seed": None if seed is None else seed + i})})
            for i in range(request.params.n)
        ]
        parts = await asyncio.gather(*(self._post_generation(single) for single in singles))
        generations = [part.generation for part in parts if part is not None]  # n=1 is never split again
        got = sum(len(g.completions) for g in generations)
        return _Reply(
            Generation(
                completions=tuple(c for g in generations for c in g.completions),
                prompt_tokens=sum(g.prompt_tokens for g in generations),
                cached_prompt_tokens=sum(g.cached_prompt_tokens for g in generations),
                cost_known=all(g.cost_known for g in generations),
            ),
            f"{got} choices from {len(singles)} single requests",
            len(singles),
        )

    async def _post_generation(self, request: GenRequest) -> _Reply | None:
        chat = not isinstance(request.prompt, str)
        body = self._body(request, chat)
        try:
            data = await self._post("/chat/completions" if chat else "/completions", body)
        except _UnsupportedN:
            self._switch_to_split("does not accept n > 1")
            return None
        choices = sorted(data["choices"], key=_choice_index)
        if len(choices) > request.params.n:  # more than asked for: the rest were never requested
            self._say_once("extra", "%s returned %d choices for n=%d; keeping the first %d",
                           self._url(request), len(choices), request.params.n, request.params.n)
            choices = choices[: request.params.n]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        texts = [_choice_text(c, chat) for c in choices]
        cost_known = True
        ids = [c.get("token_ids") for c in choices]
        if all(isinstance(i, list) for i in ids):
            counts = [len(i) for i in ids]
        elif _count(usage, "completion_tokens") is not None:
            if len(choices) > 1:
                self._switch_to_split("reports no per-sample token ids (return_token_ids)")
                return None
            counts = [_count(usage, "completion_tokens")] * len(choices)
        elif (tokenizer := await self._get_tokenizer()) is not None:
            counts = [len(tokenizer.encode(text, add_special_tokens=False)) for text in texts]
        else:
            counts, cost_known = [0] * len(choices), False
        prompt_tokens = _count(usage, "prompt_tokens")
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) and prompt_tokens is not None else 0
        if prompt_tokens is None:
            tokenizer = await self._get_tokenizer()
            if tokenizer is not None:  # no cache information: every prompt token counts as computed
                prompt_tokens = await asyncio.to_thread(_prompt_tokens, tokenizer, request)  # a long prompt: off the loop
            else:
                prompt_tokens, cost_known = 0, False
        if not cost_known:
            self._say_once(
                "uncounted", "%s reports neither token ids nor usage, and the tokenizer of %r is unknown: the tokens "
                "and FLOPs of such requests are unknown (the record's cost.uncounted_calls counts them, the table says "
                "unknown); pass --backend-option tokenizer=DIR (a local model directory) to count them",
                self.base_url, self._tokenizer_source,
            )
        generation = Generation(
            completions=tuple(
                Completion(
                    text=text,
                    num_tokens=count,
                    finish_reason=FINISH_REASONS.get(c.get("finish_reason") or "", "error"),
                    cumulative_logprob=_cumulative_logprob(c, chat),
                    top_logprobs=_top_logprobs(c, chat),
                )
                for c, text, count in zip(choices, texts, counts)
            ),
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=min(cached if isinstance(cached, int) and cached >= 0 else 0, prompt_tokens),
            cost_known=cost_known,
        )
        return _Reply(generation, f"{len(choices)} choices" + ("" if choices else f": {_snippet(json.dumps(data))}"))

    def _switch_to_split(self, why: str) -> None:
        if not self._split_n:
            log.warning("%s %s; sending n > 1 as n separate requests from now on", self.base_url, why)
            self._split_n = True

    def _say_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    def _url(self, request: GenRequest) -> str:
        return self.base_url + ("/completions" if isinstance(request.prompt, str) else "/chat/completions")

    async def _get_tokenizer(self) -> Any:
        """The model's tokenizer where it is on disk (embedded model, local dir, `tokenizer=`); else None."""
        async with self._tokenizer_lock:
            if not self._tokenizer_resolved:
                self._tokenizer = await asyncio.to_thread(_load_tokenizer, self._tokenizer_source)
                self._tokenizer_resolved = True
        return self._tokenizer

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
        unhonoured = sorted(set(params.extras()) - self.sampling_extras)
        if unhonoured:
            raise ConfigError(f"{', '.join(unhonoured)} cannot be sent to {self.base_url}: OpenAI's API has no such "
                              "parameter (vLLM's server does: --backend-option vllm_extensions=true); drop it")
        body.update(params.extras())
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
        """POST with retries on 429/5xx, timeouts, dropped connections and bodies that are not a completion."""
        url = self.base_url + path
        last_problem = ""
        wait = 0.0
        bad_bodies = 0
        for attempt in range(self._max_retries + 1):
            if attempt:
                await self._sleep(wait)
            wait = self._backoff_s * 2**attempt  # unless the server says how long (Retry-After)
            try:
                async with self._slots:
                    response = await self._client.post(path, json=body)
            except httpx.TransportError as error:  # refused, reset, timed out, closed mid-body
                last_problem = _snippet(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
                continue
            if response.status_code in RETRY_STATUS:
                last_problem = f"HTTP {response.status_code}: {_snippet(response.text)}"
                asked = retry_after_s(response.headers.get("retry-after"))
                if asked is not None:
                    wait = self._capped_wait(url, asked)
                    last_problem += f"; Retry-After {asked:.0f} s" + (" (capped)" if wait < asked else "")
                continue
            if response.status_code >= 400:
                message = _snippet(response.text, 300)
                if body.get("n", 1) > 1 and response.status_code == 400 and "'n'" in message.replace('"', "'"):
                    raise _UnsupportedN()
                raise TtscaleError(f"{url} rejected the request (HTTP {response.status_code}): {message}")
            data, problem = _completion_body(response)
            if data is not None:
                return data
            bad_bodies += 1
            last_problem = f"HTTP {response.status_code} with {problem}"
        hint = (
            "Check that --base-url points at an OpenAI-compatible API (it usually ends in /v1) and the server's log"
            if bad_bodies and last_problem.startswith("HTTP 2")
            else "Check that the server is running"
        )
        raise TtscaleError(
            f"{url} did not answer after {self._max_retries + 1} tries ({last_problem}). "
            f"{hint}; rerun the same command to resume once it is back."
        )

    def _capped_wait(self, url: str, asked: float) -> float:
        """The server's Retry-After, capped at max_retry_after_s (and said, once, when capped)."""
        if asked <= self._max_retry_after_s:
            return asked
        self._say_once(
            "retry-after-cap", "%s asked to retry after %.0f s; waiting %.0f s instead, the cap "
            "(--backend-option max_retry_after_s=SECONDS raises it)", url, asked, self._max_retry_after_s,
        )
        return self._max_retry_after_s

    async def generate_streaming(self, request: GenRequest, on_text: Callable[[str], None]) -> Generation:
        """One sample (n=1) streamed from the server, each new piece of text handed to `on_text`
        as it arrives (TextStreamingBackend). Until the first piece, anything amiss (a refusal, a
        dropped connection, a server that cannot stream) falls back to `generate`'s request with
        its retries; after it, a broken stream fails the request (part of the text is out)."""
        if request.params.n != 1:
            raise ValueError(f"generate_streaming streams one sample; got n={request.params.n}")
        chat = not isinstance(request.prompt, str)
        body = {**self._body(request, chat), "stream": True, "stream_options": {"include_usage": True}}
        texts: list[str] = []
        token_ids: list[Any] = []
        usage: dict[str, Any] = {}
        finish = None
        try:
            if request.params.logprobs is not None:  # per-token logprobs come whole from generate's request
                raise _NotStreamed()
            async with self._slots, self._client.stream("POST", "/chat/completions" if chat else "/completions", json=body) as response:
                if response.status_code != 200:
                    raise _NotStreamed()
                async for line in response.aiter_lines():
                    data = line[5:].strip() if line.startswith("data:") else ""
                    if not data:
                        continue  # blank lines, SSE comments
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict) or "error" in chunk:
                        raise ValueError(_snippet(data))
                    usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else usage
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if isinstance(piece, str) and piece:
                            texts.append(piece)
                            on_text(piece)
                        token_ids += choice.get("token_ids") or []
                        finish = choice.get("finish_reason") or finish
        except (_NotStreamed, httpx.TransportError, ValueError) as error:
            if texts:
                raise TtscaleError(f"{self._url(request)} did not answer after its stream broke mid-answer "
                                   f"({_snippet(str(error)) or type(error).__name__}); check the server's log") from None
            generation = await self._generate_one(request)
            on_text(generation.completions[0].text)
            return generation
        text = "".join(texts)
        tokens = len(token_ids) if token_ids else _count(usage, "completion_tokens")
        prompt_tokens = _count(usage, "prompt_tokens")
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) and prompt_tokens is not None else 0
        if tokens is None or prompt_tokens is None:  # counted as generate counts them: the tokenizer, else unknown
            tokenizer = await self._get_tokenizer()
            if tokenizer is not None and tokens is None:
                tokens = len(tokenizer.encode(text, add_special_tokens=False))
            if tokenizer is not None and prompt_tokens is None:  # no cache information: every prompt token computed
                prompt_tokens = await asyncio.to_thread(_prompt_tokens, tokenizer, request)  # a long prompt: off the loop
        cost_known = tokens is not None and prompt_tokens is not None
        if not cost_known:
            self._say_once("uncounted", "%s reports neither token ids nor usage, and the tokenizer of %r is unknown: the "
                           "tokens and FLOPs of such requests are unknown; pass --backend-option tokenizer=DIR",
                           self.base_url, self._tokenizer_source)
        completion = Completion(text=text, num_tokens=tokens or 0, finish_reason=FINISH_REASONS.get(finish or "", "error"))
        return Generation(completions=(completion,), prompt_tokens=prompt_tokens or 0,
                          cached_prompt_tokens=min(cached if isinstance(cached, int) and cached >= 0 else 0, prompt_tokens or 0),
                          cost_known=cost_known)

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()


class _UnsupportedN(Exception):
    """The server refused n > 1."""


class _NotStreamed(Exception):
    """The server did not stream this request (a refusal, or no stream at all)."""


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110); None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _checked_base_url(base_url: Any) -> str:
    """The base URL without a trailing slash, if it is an http(s) URL with a host; else one line."""
    try:
        url = httpx.URL(str(base_url).strip())
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise ConfigError(f"--base-url {base_url!r} is not a URL ({error}); {URL_HINT}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"--base-url {base_url!r} is not an http(s) URL with a host; {URL_HINT}")
    return str(base_url).strip().rstrip("/")


def _check_options(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"backend option {name}={value!r}: expected a finite number >= 0")
    if values["max_concurrency"] < 1 or values["timeout_s"] <= 0:
        raise ConfigError("backend options max_concurrency and timeout_s must be > 0")


def _completion_body(response: httpx.Response) -> tuple[dict[str, Any] | None, str]:
    """The JSON object of a completion (a list of choice objects), or None and what came instead."""
    kind = response.headers.get("content-type", "no content type")
    try:
        data = response.json()
    except ValueError:  # not JSON at all, cut off, or not UTF-8
        return None, f"a body that is not JSON ({kind}, {len(response.content)} bytes): {_snippet(response.text)!r}"
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        return None, f"JSON that is not a completion (no list of choices): {_snippet(response.text)!r}"
    return data, ""


def _snippet(text: str, limit: int = 200) -> str:
    """Text on one line (HTML and tracebacks have newlines), cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _count(usage: dict[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _choice_index(choice: dict[str, Any]) -> int:
    index = choice.get("index", 0)
    return index if isinstance(index, int) else 0


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def _load_tokenizer(source: str) -> Any:
    """The tokenizer in a local directory or of an embedded model (prepared once); None if unknown."""
    local = Path(source).expanduser()
    if source in EMBEDDED_MODELS or (local / "config.json").is_file():
        path = prepare_model(source).path
    elif local.is_dir():
        path = str(local)  # a tokenizer-only directory
    else:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as error:  # noqa: BLE001  (any loading failure means: no tokenizer here)
        raise ConfigError(f"could not load a tokenizer from {path} ({type(error).__name__}: {_snippet(str(error))})") from None


def _prompt_tokens(tokenizer: Any, request: GenRequest) -> int:
    """Prompt tokens as vLLM would count them: the chat template once, then the assistant prefix."""
    if isinstance(request.prompt, str):
        return len(tokenizer.encode(request.prompt + request.prefix))
    rendered = tokenizer.apply_chat_template([m.model_dump() for m in request.prompt], tokenize=False, add_generation_prompt=True)
    # The template already holds the special tokens: adding them again would give a second BOS.
    return len(tokenizer.encode(rendered + request.prefix, add_special_tokens=False))


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
    if model in EMBEDDED_MODELS or (Path(model) / "config.json").is_file():
        return prepare_model(model).num_params or 0
    log.warning("parameter count of %r unknown: FLOPs will read 0; pass --backend-option num_params=N", model)
    return 0
