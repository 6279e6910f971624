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

Features of the recorded problems are cached in an .npz file (ttscale.hidden_states.HiddenStateCache,
keyed by model and prompt), so fitting and evaluating start the engine once, and only for prompts
not read before.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field

from ttscale.analysis.runs import Run, run_prompts
from ttscale.errors import ConfigError
from ttscale.hidden_states import (
    POOLINGS, PROMPT_FEATURES, RIDGE_ALPHAS, HiddenStateCache, LinearModel, Pooling, PromptFeatures, hidden_state_backend,
    prompt_key, read_prompt,
)
from ttscale.types import Problem

if TYPE_CHECKING:
    from ttscale.protocols import PoolingBackend

FOLDS = 5
BASELINE = "prompt length (baseline)"  # reported beside the poolings: what hidden states must beat


class PromptReader:
    """Features of recorded problems: from the cache, else read by one engine started once.

    `backend_factory(model_name)` builds the pooling backend (default: vLLM, mode "hidden");
    None means the cache must already hold every prompt (no engine is started).
    """

    def __init__(self, cache: Path | str,
                 backend_factory: Callable[[str], "PoolingBackend"] | None = partial(hidden_state_backend, "vllm"),
                 concurrency: int = 16):
        self.cache = HiddenStateCache(cache)
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
                self.cache.put(key, features.rows(), features.prompt_tokens)
            self.cache.save()
            self.computed += len(read)
        return {pid: PromptFeatures.from_rows(*self.cache.get(key)) for pid, key in keys.items()}

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


class PrefillRegressor(LinearModel):
    """A ridge regression from a prompt's pooled hidden states to its pass@1, as plain numbers.

    prediction = ((x - feature_mean) / feature_scale) · coef + intercept; higher = easier.
    """

    model: str = Field(description="the model whose hidden states it reads (features differ between models)")
    features: str = Field(PROMPT_FEATURES, description="what a feature vector is")
    pooling: Pooling = Field(description="last token, mean over the prompt's tokens, or both side by side")
    target: Literal["pass@1"] = "pass@1"
    alpha: float = Field(description="the ridge penalty RidgeCV chose")
    problems: int = Field(description="fitting problems it was trained on")
    cv_spearman: dict[str, float] = Field(default_factory=dict, description="out-of-fold Spearman with pass@1, per pooling tried, "
                                          "and of the prompt's length in tokens (a baseline, never chosen)")

    def predict(self, features: PromptFeatures) -> float:
        """The predicted pass@1 of a prompt (not clipped: only its rank among others matters for bins)."""
        return float(self.linear(features.vector(self.pooling))[0])

    def _reads(self) -> str:
        return f"the prefill probe ({self.pooling} pooling of {self.model})"


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
        return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))

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
