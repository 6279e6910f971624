"""The prefill probe: how hard a prompt is, from the policy model's own reading of it.

"Learning How Hard to Think" (Damani et al. 2024) predicts a prompt's difficulty from the
model's hidden states before it answers. Here the policy model reads the prompt once, as the
generator would send it (ttscale.backends.vllm_pooling, mode "hidden": one prefill, no token
generated), and a ridge regressor on its final hidden states predicts the prompt's pass@1.
The predicted pass@1 is binned with quantile edges learned on the fitting problems, like every
other difficulty signal (ttscale.analysis.difficulty: bin 0 = hardest).

Cost: one prefill of the prompt (CostMeter.pool prices it; nothing is generated), against the
k0 samples of the sampling probe. Gold: the features read the prompt only. The regressor is
trained on the fitting split's graded samples (that is its training data) and saved as plain
numbers in the policy JSON, so a server predicts with numpy and never unpickles anything.

Features of the recorded problems are cached in an .npz file (keyed by model and prompt), so
fitting and evaluating start the engine once, and only for prompts not read before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ttscale.errors import ConfigError
from ttscale.types import ChatMessage, Cost, PoolRequest, PoolResult, Problem

if TYPE_CHECKING:
    from ttscale.analysis.runs import Run
    from ttscale.protocols import PoolingBackend

Pooling = Literal["last", "mean", "last+mean"]
POOLINGS: tuple[Pooling, ...] = ("last", "mean", "last+mean")
FEATURES = "final-hidden-v1"  # what a cached vector is: the final hidden states (after the last norm), unnormalized
ALPHAS = tuple(float(a) for a in np.logspace(-3, 6, 37))  # RidgeCV's grid: strong shrinkage for ~100 problems x d_model features
FOLDS = 5
BASELINE = "prompt length (baseline)"  # reported beside the poolings: what hidden states must beat


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


def features_of(result: PoolResult) -> PromptFeatures:
    """A hidden-mode pooling result (one row per prompt token) as PromptFeatures."""
    rows = np.asarray(result.data, dtype=np.float64)
    if rows.ndim != 2 or not len(rows):
        raise ConfigError(f"the pooling backend returned {rows.shape} for a prompt; the prefill probe needs one "
                          "hidden-state row per prompt token (VLLMPoolingBackend(model, mode='hidden'))")
    return PromptFeatures(last=rows[-1], mean=rows.mean(axis=0), prompt_tokens=int(result.prompt_tokens))


def prompt_key(model: str, prompt: Any) -> str:
    """The cache key of a prompt's features: sha256 over the model, the feature kind and the prompt."""
    if not isinstance(prompt, str):
        prompt = [m.model_dump() if isinstance(m, ChatMessage) else dict(m) for m in prompt]
    blob = json.dumps({"model": model, "features": FEATURES, "prompt": prompt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


async def read_prompt(backend: "PoolingBackend", prompt: Any) -> tuple[PromptFeatures, Cost]:
    """One prefill of `prompt` on a hidden-state pooling backend, metered: its features and cost."""
    from ttscale.cost import CostMeter

    meter = CostMeter(backend)  # the policy model reading a prompt: generator-side compute
    [result] = await meter.pool([PoolRequest(prompt=prompt)])
    return features_of(result), meter.cost


class FeatureCache:
    """Prompt features on disk (.npz, read with allow_pickle=False), keyed by `prompt_key`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._items: dict[str, PromptFeatures] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    keys, last, mean, tokens = data["keys"], data["last"], data["mean"], data["prompt_tokens"]
            except (OSError, ValueError, KeyError) as error:
                raise ConfigError(f"{self.path}: not a prompt-feature cache ({error}); delete it to recompute") from None
            for i, key in enumerate(keys):
                self._items[str(key)] = PromptFeatures(last[i].astype(np.float64), mean[i].astype(np.float64), int(tokens[i]))

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> PromptFeatures:
        """The features stored under `key`."""
        return self._items[key]

    def put(self, key: str, features: PromptFeatures) -> None:
        """Store features (call `save` to write them)."""
        self._items[key] = features

    def save(self) -> None:
        """Write every entry, atomically (a temporary file renamed over the old one)."""
        keys = sorted(self._items)
        if not keys:
            return
        dims = {self._items[k].last.shape for k in keys}
        if len(dims) > 1:
            raise ConfigError(f"{self.path}: features of different sizes {sorted(dims)}; use one cache file per model")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.asarray(keys), last=np.stack([self._items[k].last for k in keys]).astype(np.float32),
                 mean=np.stack([self._items[k].mean for k in keys]).astype(np.float32),
                 prompt_tokens=np.asarray([self._items[k].prompt_tokens for k in keys], dtype=np.int64))
        os.replace(tmp, self.path)


def default_backend_factory(model: str) -> "PoolingBackend":
    """The vLLM pooling engine reading the policy model's hidden states."""
    from ttscale.backends.vllm_pooling import VLLMPoolingBackend

    return VLLMPoolingBackend(model, mode="hidden")


def run_prompts(run: "Run", *, every: bool = False) -> dict[str, Problem]:
    """The recorded problems of a run (every=True: every problem of its benchmark, recorded or
    not) with the prompts its generation read: the benchmark rebuilt from config.json; only ids
    and prompts are used, never gold answers."""
    from ttscale.build import build_benchmark

    problems = {p.id: p for p in build_benchmark(run.config).load()}
    missing = [r.problem_id for r in run.records if r.problem_id not in problems]
    if missing:
        raise ConfigError(f"{run.dir}: problem {missing[0]!r} is not in benchmark {run.config.benchmark!r} as rebuilt from "
                          "its config.json, so its prompt is unknown; the prefill probe needs the benchmark the run used")
    if every:
        return problems
    return {r.problem_id: problems[r.problem_id] for r in run.records}


class PromptReader:
    """Features of recorded problems: from the cache, else read by one engine started once.

    `backend_factory(model_name)` builds the pooling backend (default: vLLM, mode "hidden");
    None means the cache must already hold every prompt (no engine is started).
    """

    def __init__(self, cache: Path | str, backend_factory: Callable[[str], "PoolingBackend"] | None = default_backend_factory,
                 concurrency: int = 16):
        self.cache = FeatureCache(cache)
        self.backend_factory = backend_factory
        self.concurrency = concurrency
        self.computed = 0  # prompts read by the engine in this process (the rest came from the cache)

    def features_for(self, *runs: "Run") -> dict[str, PromptFeatures]:
        """Features of every recorded problem of the runs (of one model), keyed by problem id.

        When some are missing, the engine starts once and reads every prompt of the runs'
        benchmarks not in the cache (recorded or not: a run still recording, or the other split,
        then needs no second start)."""
        if not runs:
            return {}
        model_name = runs[0].model
        if {r.model for r in runs} != {model_name}:
            raise ConfigError(f"runs of several models ({', '.join(sorted({r.model for r in runs}))}); one feature set per model")
        keys: dict[str, str] = {}
        unread: dict[str, Any] = {}
        for run in runs:
            every = run_prompts(run, every=True)
            recorded = {r.problem_id for r in run.records}
            for pid, problem in every.items():
                key = prompt_key(model_name, problem.prompt)
                if key not in self.cache:
                    unread[key] = problem.prompt  # one read per distinct prompt
                if pid in recorded:
                    keys.setdefault(pid, key)  # a problem in several runs keeps its first prompt, as pool_runs keeps its first record
        missing = [pid for pid, key in keys.items() if key not in self.cache]
        if missing:
            if self.backend_factory is None:
                where = ", ".join(str(r.dir) for r in runs)
                raise ConfigError(f"{self.cache.path} lacks the features of {len(missing)} prompts of {where}; "
                                  "pass the feature cache written when the policy was fitted (--features)")
            read = asyncio.run(self._read(runs[0].config.model, model_name, unread))
            for key, features in read.items():
                self.cache.put(key, features)
            self.cache.save()
            self.computed += len(read)
        return {pid: self.cache.get(key) for pid, key in keys.items()}

    async def _read(self, model: str, model_name: str, prompts: Mapping[str, Any]) -> dict[str, PromptFeatures]:
        """Read `prompts` (any keys) on one backend started for them, then closed; features by the same keys."""
        backend = self.backend_factory(model)
        try:
            if backend.model.name != model_name:
                raise ConfigError(f"the probe's pooling backend serves {backend.model.name!r}, the runs were of {model_name!r}")
            limit = asyncio.Semaphore(self.concurrency)

            async def one(prompt):
                async with limit:
                    return (await read_prompt(backend, prompt))[0]

            values = await asyncio.gather(*(one(p) for p in prompts.values()))
            return dict(zip(prompts, values))
        finally:
            await backend.close()


class PrefillRegressor(BaseModel):
    """A ridge regression from a prompt's pooled hidden states to its pass@1, as plain numbers.

    prediction = ((x - feature_mean) / feature_scale) · coef + intercept; higher = easier.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="the model whose hidden states it reads (features differ between models)")
    features: str = Field(FEATURES, description="what a feature vector is")
    pooling: Pooling = Field(description="last token, mean over the prompt's tokens, or both side by side")
    target: Literal["pass@1"] = "pass@1"
    feature_mean: list[float]
    feature_scale: list[float]
    coef: list[float]
    intercept: float
    alpha: float = Field(description="the ridge penalty RidgeCV chose")
    problems: int = Field(description="fitting problems it was trained on")
    cv_spearman: dict[str, float] = Field(default_factory=dict, description="out-of-fold Spearman with pass@1, per pooling tried, "
                                          "and of the prompt's length in tokens (a baseline, never chosen)")

    def predict(self, features: PromptFeatures) -> float:
        """The predicted pass@1 of a prompt (not clipped: only its rank among others matters for bins)."""
        x = np.asarray(features.vector(self.pooling), dtype=np.float64)
        if x.shape != (len(self.coef),):
            raise ConfigError(f"the prefill probe expects {len(self.coef)} features ({self.pooling} pooling of "
                              f"{self.model}), got {x.shape[0]}; read prompts with the model the policy was fitted on")
        z = (x - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)
        return float(z @ np.asarray(self.coef) + self.intercept)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties averaged); nan when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def spearman_interval(a: Sequence[float], b: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval (over items, percentile) of Spearman's rank correlation."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    draws = [spearman(a[i], b[i]) for i in (rng.integers(0, len(a), len(a)) for _ in range(resamples))]
    draws = np.asarray([d for d in draws if np.isfinite(d)])
    if not len(draws):
        return float("nan"), float("nan")
    return float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def fit_regressor(model: str, features: Sequence[PromptFeatures], targets: Sequence[float], *,
                  pooling: Pooling | Literal["auto"] = "auto", seed: int = 0) -> tuple[PrefillRegressor, np.ndarray]:
    """Fit the ridge regressor on the fitting problems only; return it and its out-of-fold predictions.

    "auto" picks the pooling whose out-of-fold predictions rank the problems' pass@1 best
    (Spearman: bins need the order, not the scale). The out-of-fold predictions are what the
    caller bins the fitting problems by: in-sample predictions of a ridge with more features than
    problems nearly reproduce pass@1, which would make the predicted-bin tables look like oracle ones.
    """
    try:
        from sklearn.linear_model import RidgeCV
        from sklearn.model_selection import KFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ConfigError("fitting the prefill probe needs scikit-learn: pip install scikit-learn") from None
    y = np.asarray(targets, dtype=np.float64)
    if len(features) != len(y) or len(y) < 2 * FOLDS:
        raise ConfigError(f"the prefill probe needs at least {2 * FOLDS} fitting problems with features, got {len(y)}")
    candidates = POOLINGS if pooling == "auto" else (pooling,)
    folds = KFold(FOLDS, shuffle=True, random_state=seed)

    def pipeline():
        return make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))

    scores, predictions = {}, {}
    for name in candidates:
        x = np.stack([f.vector(name) for f in features])
        predictions[name] = cross_val_predict(pipeline(), x, y, cv=folds)
        scores[name] = spearman(predictions[name], y)
    best = max(candidates, key=lambda name: (np.nan_to_num(scores[name], nan=-2.0), -candidates.index(name)))
    length = np.asarray([[f.prompt_tokens] for f in features], dtype=np.float64)
    scores[BASELINE] = spearman(cross_val_predict(pipeline(), length, y, cv=folds), y)
    x = np.stack([f.vector(best) for f in features])
    fitted = pipeline().fit(x, y)
    scaler, ridge = fitted[0], fitted[1]
    regressor = PrefillRegressor(
        model=model, pooling=best, feature_mean=[float(v) for v in scaler.mean_], feature_scale=[float(v) for v in scaler.scale_],
        coef=[float(v) for v in ridge.coef_], intercept=float(ridge.intercept_), alpha=float(ridge.alpha_), problems=len(y),
        cv_spearman={k: round(float(v), 4) for k, v in scores.items()},
    )
    return regressor, predictions[best]
