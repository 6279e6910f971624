"""A seeded fake backend for tests, registered like the real ones so the whole CLI runs on it.

It has four modes:
- responder: a function from the rendered prompt (and sample index) to the completion text,
  so a test can script a multi-step search or a judge whatever order requests arrive in;
- scripted: completions are taken from `script` in turn;
- answer-keyed: for a prompt containing a question in `answer_key`, each sample ends in
  `\\boxed{gold}` with probability `accuracy`, otherwise in a wrong number;
- default: each sample ends in `\\boxed{d}` for a random digit d.

Seeds work as in vLLM's parallel sampling: sample i of a request with seed s is the sample a
request with seed s + i draws first, a pure function of (s + i, prompt). So best-of-N with seed s
and batches [j, j + b) requested as n=b with seed s + j draw the same samples (an adaptive run is
a prefix of best-of-N), and so does a single-sample request with seed s + j.

With `logprobs=k` asked for, each generated token gets k alternatives {token: logprob} (the
sampled token, then k - 1 made-up ones sharing the rest of the mass) and the completion its
cumulative logprob. They are seeded like the text (a function of (s + i, prompt), drawn from
their own stream so asking for them changes no text) and vary: each sample has a certainty
level, higher on average for answers that match `answer_key` (0.85) than for wrong ones (0.6),
and each token's probability scatters around it.

Tokens are words and punctuation marks (regex `\\w+|[^\\w\\s]`), so tests can count them by hand.
A tiny prefix cache in blocks of `block_size` tokens reports cached prompt tokens like vLLM's.
`generate_until` streams one sample and stops it where a caller's rule says (DeepConf online): the
full sample is drawn, then cut after the first token the rule stops at, as a replay would cut it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ttscale.modelshape import ModelShape
from ttscale.errors import ConfigError
from ttscale.types import Completion, Generation, GenRequest, PoolRequest, PoolResult, SampleParams

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")


def fake_tokens(text: str) -> list[re.Match[str]]:
    """The fake tokenizer: one token per word or punctuation mark."""
    # A comprehension, not list(): the interpreter can hand the GIL to the event loop between
    # matches, where list() holds it for the whole text (seconds for a long prompt).
    return [match for match in TOKEN_PATTERN.finditer(text)]


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
        # Tokenizing a long prompt takes seconds: it runs off the event loop, as an engine's does,
        # on one worker, so calls still run one at a time in the order they came (script, cache).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-backend")

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        """Answer each request with n fake completions."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        requests = list(requests)
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, lambda: [self._generate_one(request) for request in requests])

    async def close(self) -> None:
        """Nothing to release."""

    def count_tokens(self, text: str) -> int:
        """Token count under the fake tokenizer."""
        return len(fake_tokens(text))

    def prompt_token_ids(self, request: GenRequest) -> list[str]:
        """The tokens prefilled for a request, as vLLM's backend gives ids (here the token strings)."""
        return [m.group() for m in fake_tokens(render_prompt(request))]

    async def generate_streaming(self, request: GenRequest, on_text: Callable[[str], None]) -> Generation:
        """One sample (n must be 1), its text handed to `on_text` token by token, with a turn of
        the event loop between tokens as an engine step would give (TextStreamingBackend)."""
        if request.params.n != 1:
            raise ValueError(f"generate_streaming streams one sample; got n={request.params.n}")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        generation = self._generate_one(request)
        [completion] = generation.completions
        start = 0
        for token in fake_tokens(completion.text):
            on_text(completion.text[start: token.end()])
            start = token.end()
            await asyncio.sleep(0)
        if start < len(completion.text):
            on_text(completion.text[start:])
        return generation

    async def generate_until(self, request: GenRequest, stop: Callable[[Mapping[str, float]], bool]) -> Generation:
        """One sample (n must be 1), fed token by token to `stop` ({token: logprob} of each
        position); cut after the first token where it says True, with finish_reason "abort"."""
        if request.params.n != 1:
            raise ValueError(f"generate_until streams one sample; got n={request.params.n}")
        if request.params.logprobs is None:
            raise ValueError("generate_until needs logprobs: the stop rule reads each token's top-k")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        generation = self._generate_one(request)
        [completion] = generation.completions
        for position, alternatives in enumerate(completion.top_logprobs or ()):
            if stop(alternatives):
                cut = _cut(completion, position + 1)
                return generation.model_copy(update={"completions": (cut,)})
        return generation

    def _generate_one(self, request: GenRequest) -> Generation:
        if request.params.extras():  # no sampler here to honour them (SamplingExtras: none)
            raise ConfigError(f"the fake backend cannot honour {', '.join(request.params.extras())}; drop it")
        self.requests.append(request)
        prompt = render_prompt(request)
        prompt_tokens = [m.group() for m in fake_tokens(prompt)]
        completions = tuple(self._sample(request, prompt, index) for index in range(request.params.n))
        return Generation(
            completions=completions,
            prompt_tokens=len(prompt_tokens),
            cached_prompt_tokens=self._lookup_and_fill_cache(prompt_tokens),
        )

    def _sample_key(self, params: SampleParams, prompt: str, index: int) -> object:
        # As vLLM's parallel sampling: sample `index` of a request seeded s is seeded s + index,
        # so the sample is a pure function of (s + index, prompt). Unseeded: drawn once per sample.
        if params.seed is None:
            return self._unseeded_rng.random()
        return f"{params.seed + index}|{prompt}"

    def _rng(self, params: SampleParams, prompt: str, index: int) -> random.Random:
        """The random stream of sample `index`'s text."""
        return random.Random(self._sample_key(params, prompt, index))

    def _sample(self, request: GenRequest, prompt: str, index: int) -> Completion:
        params = request.params
        key = self._sample_key(params, prompt, index) if params.seed is not None else None
        raw = self._raw_text(request, prompt, index)
        completion = self._truncate(raw, params)
        if params.logprobs is None:
            return completion
        # Their own stream (asking for logprobs changes no text), keyed like the text's; one
        # draw per position, so a position's logprobs do not depend on where the text ends.
        rng = random.Random(f"{key}|logprobs" if key is not None else self._unseeded_rng.random())
        certainty = self._certainty(prompt, raw) + rng.gauss(0.0, SAMPLE_SPREAD)  # of the whole sample
        tokens = _token_texts(completion.text)
        positions = tuple(_position_logprobs(token, certainty, params.logprobs, rng) for token in tokens)
        return completion.model_copy(update={
            "top_logprobs": positions, "cumulative_logprob": _sampled_logprob_sum(tokens, positions),
        })

    def _certainty(self, prompt: str, text: str) -> float:
        """The level a sample's token probabilities lie around: high when it states the answer
        key's answer, low when it states another, in between when the fake cannot tell."""
        gold = next((answer for question, answer in self.answer_key.items() if question in prompt), None)
        if gold is None:
            return UNKNOWN_CERTAINTY
        return RIGHT_CERTAINTY if f"\\boxed{{{gold}}}" in text else WRONG_CERTAINTY

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
        return Completion(text=text, num_tokens=len(tokens), finish_reason=finish)

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


UNKNOWN_CERTAINTY = 0.75  # mean token probability of a sample whose correctness the fake does not know
RIGHT_CERTAINTY = 0.85  # of a sample that states the answer key's answer
WRONG_CERTAINTY = 0.6  # of a sample that states a wrong answer
SAMPLE_SPREAD = 0.05  # how far one sample's level scatters around its kind's
TOKEN_SPREAD = 0.15  # how far one token's probability scatters around the sample's level


def _token_texts(text: str) -> list[str]:
    return [m.group() for m in fake_tokens(text)]


def _position_logprobs(token: str, certainty: float, k: int, rng: random.Random) -> dict[str, float]:
    """One position's top-k: the sampled token at probability p around `certainty`, then k - 1
    made-up alternatives sharing the rest (halving), so a sure token has a peaked top-k."""
    p = min(max(certainty + rng.gauss(0.0, TOKEN_SPREAD), 0.02), 0.995)
    alternatives = {token: math.log(p)}
    for j in range(1, k):
        alternatives[f"<alt{j}>"] = math.log((1.0 - p) / 2.0**j)
    return alternatives


def _sampled_logprob_sum(tokens: Sequence[str], positions: Sequence[Mapping[str, float]]) -> float:
    """The cumulative logprob of a completion: its sampled tokens' logprobs, summed."""
    return sum(position[token] for token, position in zip(tokens, positions))


def _cut(completion: Completion, tokens: int) -> Completion:
    """A completion stopped after its first `tokens` tokens (finish_reason "abort")."""
    matches = fake_tokens(completion.text)
    text = completion.text[: matches[tokens - 1].end()] if tokens else ""
    kept = tuple((completion.top_logprobs or ())[:tokens])
    return Completion(
        text=text, num_tokens=tokens, finish_reason="abort",
        cumulative_logprob=_sampled_logprob_sum(_token_texts(text), kept), top_logprobs=kept,
    )


def _wrong_answer(gold: str, rng: random.Random) -> str:
    try:
        return str(int(float(gold)) + rng.choice([-3, -2, -1, 1, 2, 3]))
    except ValueError:
        return gold + "0"


class FakeHiddenBackend:
    """A pooling backend in the shape of VLLMPoolingBackend(mode="hidden"), for tests: one row of
    `dim` numbers per fake token of the prompt (rendered as `render_prompt` renders it) and prefix.

    Row j reads tokens 0..j only (causal, as a decoder's hidden state): hash noise of the token and
    the one before it, and, with an `answer_key`, whether the text so far states `\\boxed{gold}` of
    the question in the prompt, so a head trained on these rows has something to learn.
    """

    def __init__(self, model: str = "fake", *, answer_key: dict[str, str] | None = None, dim: int = 8,
                 num_params: int = 1_000_000):
        self.model = FakeModel(model, num_params)
        self.answer_key = dict(answer_key or {})
        self.dim = dim
        self.requests: list[PoolRequest] = []

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """Rows for every token, or only at each request's positions."""
        self.requests.extend(requests)
        return [self._pool_one(request) for request in requests]

    def _pool_one(self, request: PoolRequest) -> PoolResult:
        text = render_prompt(GenRequest(prompt=request.prompt, prefix=request.prefix))
        tokens = fake_tokens(text)
        start = len(text) - len(request.prefix)
        ends = [start + p for p in request.positions] or [t.end() for t in tokens]
        gold = next((f"\\boxed{{{answer}}}" for question, answer in self.answer_key.items() if question in text[:start]), None)
        rows = []
        for end in ends:
            j = max(i for i, t in enumerate(tokens) if t.start() < end)
            digest = hashlib.sha256(f"{tokens[j - 1].group() if j else ''}\x00{tokens[j].group()}".encode()).digest()
            noise = [b / 255 - 0.5 for b in digest[: self.dim - 1]]
            rows.append((*noise, float(gold is not None and gold in text[: tokens[j].end()])))
        return PoolResult(data=tuple(rows), prompt_tokens=len(tokens))

    async def generate(self, requests: Sequence[GenRequest]) -> list[Generation]:
        raise ConfigError("the fake hidden-state backend reads prompts; it does not generate")

    async def close(self) -> None:
        """Nothing to release."""
