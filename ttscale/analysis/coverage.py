"""Coverage curves: fit c(k) = exp(a·k^b) to pass@k (Brown et al., Large Language Monkeys).

With a < 0 and b < 0, log c(k) = a·k^b rises towards 0 as k grows: c(1) = exp(a) is pass@1 and
b sets how fast more samples help. Fits are per problem (where its samples allow), per group of
problems (a difficulty bin, or all), with bootstrap confidence intervals over problems.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from ttscale.analysis.passk import pass_at_k

# pass@k of exactly 0 or 1 has no finite log; clip so hopeless and solved problems still fit.
_EPS = 1e-6


def coverage_model(k: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """c(k) = exp(a·k^b)."""
    return np.exp(a * np.power(k, b))


@dataclass(frozen=True)
class CoverageFit:
    """Fitted (a, b) of c(k) = exp(a·k^b), and the k range of the data it was fitted on."""

    a: float
    b: float
    max_k: int

    def predict(self, k: np.ndarray | float) -> np.ndarray:
        """Coverage at k (beyond max_k this is extrapolation)."""
        return coverage_model(np.asarray(k, dtype=float), self.a, self.b)


def fit_coverage(ks: Sequence[float], coverage: Sequence[float]) -> CoverageFit:
    """Least-squares fit of log c(k) = a·k^b, with a, b <= 0 (coverage never falls with k)."""
    ks_arr = np.asarray(ks, dtype=float)
    log_c = np.log(np.clip(np.asarray(coverage, dtype=float), _EPS, 1.0))
    if len(ks_arr) < 2:
        raise ValueError(f"need coverage at 2 or more k to fit a and b, got {len(ks_arr)}")
    if np.all(log_c >= -_EPS):  # solved at every k: c = 1, so a = 0 and b is irrelevant
        return CoverageFit(0.0, 0.0, int(ks_arr.max()))
    # Fitting in log space weights low-coverage points as much as high ones (they matter most).
    start = (min(log_c[0], -_EPS), -0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        (a, b), _ = curve_fit(
            lambda k, a, b: a * np.power(k, b), ks_arr, log_c, p0=start,
            bounds=([-np.inf, -5.0], [0.0, 0.0]), maxfev=10_000,
        )
    return CoverageFit(float(a), float(b), int(ks_arr.max()))


def coverage_curve(records: Iterable[dict[str, Any]], ks: Sequence[int]) -> np.ndarray:
    """Mean pass@k over records (each with .n and .num_correct, e.g. analysis.runs.Record), for every k (k <= each record's n)."""
    records = list(records)
    if not records:
        raise ValueError("no problems to compute coverage over")
    return np.array([np.mean([pass_at_k(r.n, r.num_correct, k) for r in records]) for k in ks])


def fit_records(records: Sequence[dict[str, Any]], ks: Sequence[int] | None = None) -> CoverageFit:
    """Fit c(k) to the mean pass@k of a group of problems, at k = 1..min n by default."""
    ks = list(ks or range(1, min(r.n for r in records) + 1))
    return fit_coverage(ks, coverage_curve(records, ks))


def fit_problem(record: dict[str, Any]) -> CoverageFit | None:
    """A single problem's fit, or None where its samples do not allow one (n < 2, none or all
    correct: then pass@k is flat at 0 or 1 and there is no curve to fit)."""
    n, c = record.n, record.num_correct
    if n < 2 or c in (0, n):
        return None
    return fit_records([record])


@dataclass(frozen=True)
class BootstrapFit:
    """A fit with percentile confidence intervals from resampling problems with replacement."""

    fit: CoverageFit
    a_ci: tuple[float, float]
    b_ci: tuple[float, float]
    samples: np.ndarray  # (resamples, 2): the (a, b) of every resample

    def predict_ci(self, k: np.ndarray | float, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise confidence band of c(k) over the resampled fits."""
        curves = np.array([coverage_model(np.asarray(k, dtype=float), a, b) for a, b in self.samples])
        tail = (1 - level) / 2 * 100
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


def bootstrap_fit(
    records: Sequence[dict[str, Any]], *, resamples: int = 200, level: float = 0.95, seed: int = 0
) -> BootstrapFit:
    """fit_records on the problems, with CIs from `resamples` bootstrap resamples of problems."""
    records = list(records)
    ks = list(range(1, min(r.n for r in records) + 1))
    rng = np.random.default_rng(seed)
    params = []
    for _ in range(resamples):
        picked = [records[i] for i in rng.integers(0, len(records), len(records))]
        fit = fit_records(picked, ks)
        params.append((fit.a, fit.b))
    params_arr = np.array(params)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(params_arr, [tail, 100 - tail], axis=0)
    return BootstrapFit(
        fit=fit_records(records, ks),
        a_ci=(float(low[0]), float(high[0])),
        b_ci=(float(low[1]), float(high[1])),
        samples=params_arr,
    )
