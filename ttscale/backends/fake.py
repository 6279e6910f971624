"""A seeded fake backend for tests, registered like the real ones so the whole CLI runs on it.

It has four modes:
- responder: a function from the rendered prompt (and sample index) to the completion text,
  so a test can script a multi-step search or a judge whatever order requests arrive in;
- scripted: completions are taken from `script` in turn;
- answer-keyed: for a prompt containing a question in `answer_key`, each sample ends in
  `\\boxed{gold}` with probability `accuracy`, otherwise in a wrong number;
- default: each sample ends in `\\boxed{d}` for a random digit d.

Tokens are words and punctuation marks (regex `\\w+|[^\\w\\s]`), so tests can count them by hand.
With `logprobs` asked for, each generated token is reported as certain ({token: 0.0}).
A tiny prefix cache in blocks of `block_size` tokens reports cached prompt tokens like vLLM's.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ttscale.modelshape import ModelShape
from ttscale.errors import ConfigError
from ttscale.types import Completion, Generation, GenRequest, SampleParams

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")


def fake_tokens(text: str) -> list[re.Match[str]]:
    """The fake tokenizer: one token per word or punctuation mark."""
    return list(TOKEN_PATTERN.finditer(text))


def render_prompt(request: GenRequest) -> str:
    """Chat messages as 'role: content' lines, then the assistant prefix to continue."""
    if isinstance(request.prompt, str):
        return request.prompt + request.prefix
    lines = "".join(f"{m.role}: {m.content}\n" for m in request.prompt)
    return lines + "assistant: " + request.prefix


@dataclass(frozen=True)
class FakeModel:
    """Model facts the cost model reads."""

    name: str
    num_params: int
    shape: ModelShape | None = None  # None: priced at 2·P per token


class FakeBackend:
    """Deterministic stand-in for an LLM backend."""

    def __init__(
        self,
        model: str = "fake",
        *,
        script: Sequence[str] | None = None,
        responder: Callable[[str, int], str] | None = None,
        answer_key: dict[str, str] | None = None,
        accuracy: float = 0.5,
        seed: int = 0,
        num_params: int = 1_000_000,
        shape: dict[str, int] | None = None,  # n_layers, d_model, n_heads, n_kv_heads, head_dim
        block_size: int = 4,
        delay_s: float = 0.0,
        speculative: object = None,
    ):
        if speculative is not None:
            raise ConfigError("the fake backend does not do speculative decoding; drop --speculative "
                              "(or the config's speculative section), or use --backend vllm")
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
        self.model = FakeModel(model, num_params, ModelShape(num_params=num_params, **shape) if shape else None)
        self.script = list(script) if script else None
        self.responder = responder
        self.answer_key = dict(answer_key or {})
        self.accuracy = accuracy
        self.block_size = block_size
        self.delay_s = delay_s  # simulated latency per generate call, for crash/resume tests
        self.requests: list[GenRequest] = []  # every request seen, for tests to inspect
        self._unseeded_rng = random.Random(seed)
        self._script_position = 0
        self._cached_blocks: set[str] = set()

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Answer each request with n fake completions."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return [self._generate_one(request) for request in requests]

    async def close(self) -> None:
        """Nothing to release."""

    def count_tokens(self, text: str) -> int:
        """Token count under the fake tokenizer."""
        return len(fake_tokens(text))

    def prompt_token_ids(self, request: GenRequest) -> list[str]:
        """The tokens prefilled for a request, as vLLM's backend gives ids (here the token strings)."""
        return [m.group() for m in fake_tokens(render_prompt(request))]

    def _generate_one(self, request: GenRequest) -> Generation:
        self.requests.append(request)
        prompt = render_prompt(request)
        prompt_tokens = [m.group() for m in fake_tokens(prompt)]
        completions = tuple(
            self._truncate(self._raw_text(request, prompt, index), request.params)
            for index in range(request.params.n)
        )
        return Generation(
            completions=completions,
            prompt_tokens=len(prompt_tokens),
            cached_prompt_tokens=self._lookup_and_fill_cache(prompt_tokens),
        )

    def _rng(self, params: SampleParams, prompt: str, index: int) -> random.Random:
        # A per-request seed makes the sample a pure function of (seed, prompt, index), as in vLLM.
        if params.seed is None:
            return random.Random(self._unseeded_rng.random())
        return random.Random(f"{params.seed}|{prompt}|{index}")

    def _raw_text(self, request: GenRequest, prompt: str, index: int) -> str:
        if self.responder is not None:
            return self.responder(prompt, index)
        if self.script:
            text = self.script[self._script_position % len(self.script)]
            self._script_position += 1
            return text
        rng = self._rng(request.params, prompt, index)
        gold = next((answer for question, answer in self.answer_key.items() if question in prompt), None)
        if gold is None:
            return f"Let me think step by step.\n\nThe answer is \\boxed{{{rng.randrange(10)}}}."
        if rng.random() < self.accuracy:
            return f"Let me think step by step.\n\nThe answer is \\boxed{{{gold}}}."
        return f"Let me think step by step.\n\nThe answer is \\boxed{{{_wrong_answer(gold, rng)}}}."

    def _truncate(self, text: str, params: SampleParams) -> Completion:
        finish = "stop"
        for stop in params.stop:
            position = text.find(stop)
            if position >= 0:
                text = text[: position + (len(stop) if params.include_stop_str else 0)]
        tokens = fake_tokens(text)
        if len(tokens) > params.max_tokens:
            text = text[: tokens[params.max_tokens - 1].end()]
            tokens = tokens[: params.max_tokens]
            finish = "length"
        top_logprobs = tuple({t.group(): 0.0} for t in tokens) if params.logprobs is not None else None
        return Completion(text=text, num_tokens=len(tokens), finish_reason=finish, top_logprobs=top_logprobs)

    def _lookup_and_fill_cache(self, prompt_tokens: list[str]) -> int:
        """Cached tokens = leading full blocks whose whole prefix was seen before (vLLM-style)."""
        cached, digest = 0, hashlib.sha256()
        hit_so_far = True
        for start in range(0, len(prompt_tokens) - self.block_size + 1, self.block_size):
            digest.update("\x00".join(prompt_tokens[start : start + self.block_size]).encode() + b"\x01")
            key = digest.hexdigest()
            if hit_so_far and key in self._cached_blocks:
                cached += self.block_size
            else:
                hit_so_far = False
                self._cached_blocks.add(key)
        return cached


def _wrong_answer(gold: str, rng: random.Random) -> str:
    try:
        return str(int(float(gold)) + rng.choice([-3, -2, -1, 1, 2, 3]))
    except ValueError:
        return gold + "0"
