"""The policy model's hidden states as features: reading them, caching them, and the linear models on them.

Two readers use them (one prefill each, nothing generated, priced by CostMeter.pool):
- the prefill probe (ttscale.probe) reads a prompt: its last token's final hidden state and the
  mean over its tokens (`PromptFeatures`, feature kind PROMPT_FEATURES);
- a trained verifier (ttscale.reward_heads) reads a solution after its prompt: the final hidden
  state at the last token of each step (`step_features`, feature kind STEP_FEATURES). A decoder
  attends causally, so a step's vector depends only on the prompt and the steps up to it.

Both read from one engine builder (`hidden_state_backend`: vLLM's pooling runner in mode
"hidden", or the fake one in tests), keep what was read in one .npz cache (`HiddenStateCache`,
keyed by `feature_key`, read with allow_pickle=False), and fit the same linear-model schema
(`LinearModel`: standardized features, coefficients, intercept, stored as plain numbers so a
server predicts with numpy and never unpickles anything) with one ridge grid (`RIDGE_ALPHAS`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from ttscale.backends.fake import FakeHiddenBackend
from ttscale.backends.vllm_pooling import VLLMPoolingBackend
from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.protocols import PoolingBackend
from ttscale.steps import STEP_SEPARATOR
from ttscale.types import ChatMessage, Cost, PoolRequest, PoolResult

# What a cached vector is (part of the cache key, and recorded in a policy or head that reads it):
PROMPT_FEATURES = "final-hidden-v1"  # a prompt's final hidden states (after the last norm), unnormalized: last token's and mean
STEP_FEATURES = "final-hidden-at-step-end-v1"  # the final hidden state (after the last norm) at each step's last token
# RidgeCV's grid (the probe's regressor, PAV's advantage head): strong shrinkage for ~100 problems x d_model features.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 6, 37))

Pooling = Literal["last", "mean", "last+mean"]
POOLINGS: tuple[Pooling, ...] = ("last", "mean", "last+mean")


# -- the engine --------------------------------------------------------------------------------


def hidden_state_backend(kind: str, model_path: str, **options: Any) -> PoolingBackend:
    """The backend that reads a model's final hidden states: vLLM's pooling runner, or the fake (tests)."""
    if kind == "fake":
        return FakeHiddenBackend(model_path, **options)
    return VLLMPoolingBackend(model_path, mode="hidden", **options)


# -- a prompt's features (the prefill probe) ---------------------------------------------------


@dataclass(frozen=True)
class PromptFeatures:
    """One prompt as the model read it: its last token's hidden state, the mean over its tokens,
    and how many tokens it had (what the probe's prefill costs)."""

    last: np.ndarray
    mean: np.ndarray
    prompt_tokens: int

    def vector(self, pooling: Pooling) -> np.ndarray:
        """The feature vector for a pooling: "last", "mean", or both side by side."""
        if pooling == "last":
            return self.last
        if pooling == "mean":
            return self.mean
        return np.concatenate([self.last, self.mean])

    def rows(self) -> np.ndarray:
        """As a cache entry stores them: the last token's row, then the mean row."""
        return np.stack([self.last, self.mean])

    @classmethod
    def from_rows(cls, rows: np.ndarray, prompt_tokens: int) -> "PromptFeatures":
        """From a cache entry (see `rows`)."""
        return cls(last=rows[0], mean=rows[1], prompt_tokens=prompt_tokens)


def features_of(result: PoolResult) -> PromptFeatures:
    """A hidden-mode pooling result (one row per prompt token) as PromptFeatures."""
    rows = np.asarray(result.data, dtype=np.float64)
    if rows.ndim != 2 or not len(rows):
        raise ConfigError(f"the pooling backend returned {rows.shape} for a prompt; the prefill probe needs one "
                          "hidden-state row per prompt token (VLLMPoolingBackend(model, mode='hidden'))")
    return PromptFeatures(last=rows[-1], mean=rows.mean(axis=0), prompt_tokens=int(result.prompt_tokens))


async def read_prompt(backend: PoolingBackend, prompt: Any) -> tuple[PromptFeatures, Cost]:
    """One prefill of `prompt` on a hidden-state pooling backend, metered: its features and cost."""
    meter = CostMeter(backend)  # the policy model reading a prompt: generator-side compute
    [result] = await meter.pool([PoolRequest(prompt=prompt)])
    return features_of(result), meter.cost


# -- a solution's step features (trained verifiers) --------------------------------------------


def solution_text(steps: Sequence[str]) -> tuple[str, tuple[int, ...]]:
    """The text a head reads for a solution given as steps, and where each step ends in it."""
    text, ends = "", []
    for i, step in enumerate(steps):
        text += (STEP_SEPARATOR if i else "") + step
        ends.append(len(text))
    return text, tuple(ends)


def step_request(prompt: tuple[ChatMessage, ...] | str, steps: Sequence[str], first: int = 0) -> PoolRequest:
    """One prefill of the prompt and the solution, asking for the rows at the ends of the steps
    from `first` on (the earlier ones were read before: a backend with a prefix cache then computes
    only what follows the cached text)."""
    text, ends = solution_text(steps)
    return PoolRequest(prompt=prompt, prefix=text, positions=ends[first:])


async def step_features(meter: CostMeter, prompt: tuple[ChatMessage, ...] | str,
                        solutions: Sequence[Sequence[str]], first: Sequence[int] | None = None) -> list[np.ndarray]:
    """Each solution's step-end vectors from its step `first[i]` on (all steps without `first`):
    (steps - first) x d, from one metered prefill per solution. A solution with no text (no steps,
    or only empty ones) or no step to read gets an empty array and costs nothing."""
    first = list(first) if first is not None else [0] * len(solutions)
    wanted = [i for i, steps in enumerate(solutions) if solution_text(steps)[0].strip() and first[i] < len(steps)]
    results = await meter.pool([step_request(prompt, solutions[i], first[i]) for i in wanted]) if wanted else []
    features: list[np.ndarray] = [np.zeros((0, 0))] * len(solutions)
    for i, result in zip(wanted, results):
        rows = np.asarray(result.data, dtype=np.float64)
        if rows.ndim != 2 or len(rows) != len(solutions[i]) - first[i]:
            raise ConfigError(f"the hidden-state backend returned {rows.shape} for {len(solutions[i]) - first[i]} steps; a trained "
                              "verifier needs one row per requested position (VLLMPoolingBackend(model, mode='hidden'))")
        features[i] = rows
    return features


# -- the cache ---------------------------------------------------------------------------------


def feature_key(model: str, features: str, request: PoolRequest) -> str:
    """The cache key of a hidden-state read: sha256 over the model, the feature kind and what was
    read (the prompt, and the prefix and positions where the request has them)."""
    prompt = request.prompt if isinstance(request.prompt, str) else [m.model_dump() for m in request.prompt]
    read: dict[str, Any] = {"prompt": prompt}
    if request.prefix or request.positions:  # a prompt alone hashes as the prefill probe's keys always did
        read.update(prefix=request.prefix, positions=list(request.positions))
    blob = json.dumps({"model": model, "features": features, **read}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def prompt_key(model: str, prompt: Any) -> str:
    """The cache key of a prompt's PromptFeatures."""
    return feature_key(model, PROMPT_FEATURES, PoolRequest(prompt=prompt))


class HiddenStateCache:
    """Hidden-state rows on disk (.npz, read with allow_pickle=False), keyed by `feature_key`:
    per key, a (rows x d) array and the prompt tokens its prefill read (what it cost).

    A file written by the prefill probe's old cache (arrays last, mean) is read too: each entry
    becomes the two rows of `PromptFeatures.rows`."""

    def __init__(self, path: Path | str | None):
        self.path = Path(path) if path is not None else None
        self._rows: dict[str, np.ndarray] = {}
        self._tokens: dict[str, int] = {}
        self._added = False
        if self.path is not None and self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    arrays = {name: data[name] for name in data.files}
                keys, tokens = arrays["keys"], arrays["prompt_tokens"]
                if "offsets" in arrays:
                    offsets, rows = arrays["offsets"], arrays["rows"]
                    entries = [rows[offsets[i]:offsets[i + 1]] for i in range(len(keys))]
                else:  # the prefill probe's former layout
                    entries = [np.stack([arrays["last"][i], arrays["mean"][i]]) for i in range(len(keys))]
            except (OSError, ValueError, KeyError) as error:
                raise ConfigError(f"{self.path}: not a hidden-state feature cache ({error}); delete it to re-extract") from None
            for key, entry, count in zip(keys, entries, tokens):
                self._rows[str(key)], self._tokens[str(key)] = entry.astype(np.float64), int(count)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> tuple[np.ndarray, int]:
        """The rows stored under `key` and the prompt tokens their prefill read."""
        return self._rows[key], self._tokens[key]

    def put(self, key: str, rows: np.ndarray, prompt_tokens: int) -> None:
        """Store an entry (call `save` to write it)."""
        self._rows[key], self._tokens[key] = np.asarray(rows, dtype=np.float64), int(prompt_tokens)
        self._added = True

    def save(self) -> None:
        """Write every entry, atomically (a temporary file renamed over the old one), if any was added."""
        if self.path is None or not self._added:
            return
        keys = sorted(self._rows)
        widths = {self._rows[k].shape[1] for k in keys if self._rows[k].size}
        if len(widths) > 1:
            raise ConfigError(f"{self.path}: hidden states of different sizes {sorted(widths)}; use one cache file per model")
        offsets = np.cumsum([0] + [len(self._rows[k]) for k in keys])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.asarray(keys), offsets=offsets, rows=np.concatenate([self._rows[k] for k in keys]).astype(np.float32),
                 prompt_tokens=np.asarray([self._tokens[k] for k in keys], dtype=np.int64))
        os.replace(tmp, self.path)
        self._added = False


class CachedHiddenStates:
    """A hidden-state backend with a HiddenStateCache in front: a request read before is answered
    with the rows and prompt-token count it had (so a meter prices it as the prefill it stands
    for), and the engine behind starts only for requests not read before. The cache is written on
    close.

    Training, `ttscale verifier eval` and a replayed run scored with `-V features=FILE` thus read
    each solution once."""

    def __init__(self, backend: Any, path: Path | str | None, features: str = STEP_FEATURES):
        self._backend = backend
        self.model = backend.model
        self.features = features
        self.cache = HiddenStateCache(path)

    async def pool(self, requests: Sequence[PoolRequest]) -> list[PoolResult]:
        """Rows from the cache, or from the engine (then kept)."""
        keys = [feature_key(self.model.name, self.features, r) for r in requests]
        unread: Mapping[str, PoolRequest] = {k: r for k, r in zip(keys, requests) if k not in self.cache}
        if unread:
            for key, result in zip(unread, await self._backend.pool(list(unread.values()))):
                self.cache.put(key, np.asarray(result.data, dtype=np.float64), result.prompt_tokens)
        return [PoolResult(data=tuple(map(tuple, rows.tolist())), prompt_tokens=tokens)
                for rows, tokens in map(self.cache.get, keys)]

    def save(self) -> None:
        """Write the cache (see HiddenStateCache.save)."""
        self.cache.save()

    async def generate(self, requests):
        return await self._backend.generate(requests)

    async def close(self) -> None:
        """Write the cache, then stop the engine behind."""
        try:
            self.save()
        finally:
            await self._backend.close()


# -- the linear models on them -----------------------------------------------------------------


class LinearModel(BaseModel):
    """(x - feature_mean) / feature_scale · coef + intercept, as plain numbers: the linear part of
    every model on hidden states (the probe's regressor, a reward head)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature_mean: list[float]
    feature_scale: list[float]
    coef: list[float]
    intercept: float

    def linear(self, x: np.ndarray) -> np.ndarray:
        """One output per row of x (rows x d); a width other than the model's is a clear error."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != len(self.coef):
            raise ConfigError(f"{self._reads()} expects {len(self.coef)} features, got {x.shape[1]}; "
                              "read them with the model it was trained on")
        return ((x - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)) @ np.asarray(self.coef) + self.intercept

    def _reads(self) -> str:
        """What the model is, for the error above."""
        return "the head"
