"""Coverage curve fits: c(k) = exp(a·k^b) from pass@k, per group and per problem, with CIs."""

import numpy as np
import pytest

from ttscale.analysis.coverage import (
    bootstrap_fit, coverage_curve, coverage_model, fit_coverage, fit_problem, fit_records,
)
from ttscale.analysis.passk import pass_at_k
from ttscale.analysis.runs import Record, Sample


@pytest.mark.parametrize("a, b", [(-2.0, -0.6), (-0.5, -1.2), (-4.0, -0.3), (-0.1, -2.0)])
def test_fit_recovers_known_parameters_from_exact_curves(a, b):
    ks = np.arange(1, 33)
    fit = fit_coverage(ks, coverage_model(ks, a, b))
    assert fit.a == pytest.approx(a, rel=1e-4)
    assert fit.b == pytest.approx(b, rel=1e-4)
    assert fit.max_k == 32


def test_fit_recovers_parameters_from_noisy_pass_at_k():
    rng = np.random.default_rng(0)
    ks = np.arange(1, 65)
    noisy = coverage_model(ks, -1.5, -0.5) * (1 + rng.normal(0, 0.01, len(ks)))
    fit = fit_coverage(ks, np.clip(noisy, 0, 1))
    assert fit.a == pytest.approx(-1.5, abs=0.05)
    assert fit.b == pytest.approx(-0.5, abs=0.05)


def test_extrapolation_rises_towards_one_beyond_the_data():
    ks = np.arange(1, 17)
    fit = fit_coverage(ks, coverage_model(ks, -2.0, -0.6))
    far = fit.predict([16, 64, 256, 4096])
    assert np.all(np.diff(far) > 0) and far[-1] < 1.0
    assert far[1] == pytest.approx(coverage_model(64, -2.0, -0.6), rel=1e-4)


def test_solved_everywhere_fits_a_zero():
    fit = fit_coverage([1, 2, 4], [1.0, 1.0, 1.0])
    assert (fit.a, fit.b) == (0.0, 0.0)
    assert float(fit.predict(100)) == 1.0


def test_fit_needs_two_points():
    with pytest.raises(ValueError, match="2 or more k"):
        fit_coverage([1], [0.5])


def _record(pid, n, c):
    """A recorded problem with n samples of which the first c are correct."""
    samples = tuple(Sample("1" if i < c else "2", i < c, None, 1) for i in range(n))
    return Record(pid, samples, {"majority": False}, "majority", {})


def test_coverage_curve_is_the_mean_unbiased_pass_at_k():
    records = [_record("a", 8, 2), _record("b", 8, 0), _record("c", 8, 8)]
    curve = coverage_curve(records, [1, 4])
    assert curve[0] == pytest.approx((2 / 8 + 0 + 1) / 3)
    assert curve[1] == pytest.approx((pass_at_k(8, 2, 4) + 0 + 1) / 3)


def test_per_problem_fit_only_where_samples_allow():
    assert fit_problem(_record("none", 16, 0)) is None
    assert fit_problem(_record("all", 16, 16)) is None
    assert fit_problem(_record("one", 1, 1)) is None
    fit = fit_problem(_record("some", 16, 3))
    assert float(fit.predict(1)) == pytest.approx(3 / 16, abs=0.03)  # c(1) is pass@1
    assert fit.b < 0


def test_group_fit_of_many_equal_problems_matches_pass_at_1():
    records = [_record(str(i), 16, 4) for i in range(10)]
    fit = fit_records(records)
    assert float(fit.predict(1)) == pytest.approx(4 / 16, abs=0.03)


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_problems():
    rng = np.random.default_rng(1)
    records = [_record(str(i), 16, int(rng.binomial(16, p))) for i, p in enumerate(rng.uniform(0.05, 0.6, 60))]
    boot = bootstrap_fit(records, resamples=100, seed=0)
    assert boot.a_ci[0] <= boot.fit.a <= boot.a_ci[1]
    assert boot.b_ci[0] <= boot.fit.b <= boot.b_ci[1]
    low, high = boot.predict_ci([1, 16, 64])
    assert np.all(low <= high)
    small = bootstrap_fit(records[:10], resamples=100, seed=0)
    assert (small.a_ci[1] - small.a_ci[0]) > (boot.a_ci[1] - boot.a_ci[0])
