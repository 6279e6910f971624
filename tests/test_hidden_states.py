"""One feature cache for the prefill probe and trained verifiers: its key scheme, its file, and the
files the two former caches wrote."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
import pytest

from ttscale.backends.fake import FakeHiddenBackend
from ttscale.errors import ConfigError
from ttscale.hidden_states import (
    PROMPT_FEATURES, STEP_FEATURES, CachedHiddenStates, HiddenStateCache, PromptFeatures, feature_key, prompt_key,
    step_request,
)
from ttscale.probe import PrefillRegressor
from ttscale.reward_heads import LinearHead
from ttscale.types import ChatMessage

PROMPT = (ChatMessage(role="user", content="What is 1 + 1?"),)


def sha(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def test_keys_are_those_the_former_caches_wrote():
    # The probe hashed model, feature kind and prompt; the reward heads added prefix and positions.
    messages = [m.model_dump() for m in PROMPT]
    assert prompt_key("m", PROMPT) == sha({"model": "m", "features": PROMPT_FEATURES, "prompt": messages})
    request = step_request(PROMPT, ["Add.", "\\boxed{2}"])
    assert feature_key("m", STEP_FEATURES, request) == sha({"model": "m", "features": STEP_FEATURES, "prompt": messages,
                                                            "prefix": request.prefix, "positions": list(request.positions)})
    assert feature_key("m", STEP_FEATURES, request) != feature_key("m", PROMPT_FEATURES, request)


def test_a_file_of_the_former_prompt_cache_is_read(tmp_path):
    path = tmp_path / "features.npz"
    last, mean = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.5, 0.5], [1.5, 2.5]])
    np.savez(path, keys=np.asarray(["k0", "k1"]), last=last.astype(np.float32), mean=mean.astype(np.float32),
             prompt_tokens=np.asarray([7, 9]))
    cache = HiddenStateCache(path)
    features = PromptFeatures.from_rows(*cache.get("k1"))
    assert len(cache) == 2 and features.prompt_tokens == 9
    assert features.last.tolist() == [3.0, 4.0] and features.mean.tolist() == [1.5, 2.5]
    cache.put("k2", PromptFeatures(np.array([5.0, 6.0]), np.array([7.0, 8.0]), 3).rows(), 3)
    cache.save()  # written in the one layout, and read back the same
    again = HiddenStateCache(path)
    assert len(again) == 3 and PromptFeatures.from_rows(*again.get("k0")).mean.tolist() == [0.5, 0.5]


def test_a_step_cache_answers_without_the_engine_and_prices_the_prefill(tmp_path):
    path = tmp_path / "steps.npz"
    request = step_request(PROMPT, ["Add.", "\\boxed{2}"])
    first = CachedHiddenStates(FakeHiddenBackend(), path)
    [read] = asyncio.run(first.pool([request]))
    asyncio.run(first.close())
    engine = FakeHiddenBackend()
    second = CachedHiddenStates(engine, path)
    [cached] = asyncio.run(second.pool([request]))
    assert engine.requests == [] and cached.prompt_tokens == read.prompt_tokens
    assert np.allclose(cached.data, read.data, atol=1e-6)  # stored as float32


def test_a_file_that_is_not_a_cache_says_to_re_extract(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(ConfigError, match="not a hidden-state feature cache.*re-extract"):
        HiddenStateCache(path)


def test_one_cache_file_holds_one_model(tmp_path):
    cache = HiddenStateCache(tmp_path / "mixed.npz")
    cache.put("a", np.zeros((2, 4)), 1)
    cache.put("b", np.zeros((2, 8)), 1)
    with pytest.raises(ConfigError, match="one cache file per model"):
        cache.save()


def test_both_linear_models_check_the_width_they_read():
    numbers = dict(feature_mean=[0.0, 0.0], feature_scale=[1.0, 2.0], coef=[1.0, 1.0], intercept=0.5)
    regressor = PrefillRegressor(model="m", pooling="last", alpha=1.0, problems=10, **numbers)
    head = LinearHead(link="identity", penalty=1.0, **numbers)
    assert regressor.predict(PromptFeatures(np.array([1.0, 2.0]), np.array([0.0, 0.0]), 3)) == 2.5
    assert head.predict(np.array([[1.0, 2.0]])).tolist() == [2.5]
    with pytest.raises(ConfigError, match="prefill probe .last pooling of m. expects 2 features, got 3"):
        regressor.predict(PromptFeatures(np.zeros(3), np.zeros(3), 3))
    with pytest.raises(ConfigError, match="the head expects 2 features, got 1"):
        head.predict(np.zeros((1, 1)))
