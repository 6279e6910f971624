"""Adaptive compute with a guarantee (ttscale.analysis.guarantee): the Hoeffding-Bentkus p-value
and fixed-sequence testing against hand computations; Learn then Test's guarantee on synthetic
problems whose answer distributions are known, so each threshold's risk is exact; the calibrated
protocol on a recorded fake run; clear errors for bad levels."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from ttscale.analysis.adaptive import AdaptiveConsistencyReplay, ProblemSamples, full_best_of_n_loss
from ttscale.analysis.guarantee import (
    POSTERIOR_THRESHOLDS,
    calibrate,
    check_levels,
    fixed_sequence,
    guaranteed,
    hb_p_value,
    required_n,
    threshold_paths,
)
from ttscale.errors import ConfigError
from ttscale.stopping import StoppingRule

# -- hand computations ----------------------------------------------------------------------------


def test_hoeffding_bentkus_p_value_equals_a_hand_computation():
    # n = 10, empirical risk 0.1 (one loss), epsilon 0.2:
    #   Hoeffding: h = 0.1 ln(0.1/0.2) + 0.9 ln(0.9/0.8) = 0.0366921; exp(-10 h) = 0.692879
    #   Bentkus:   e P(Bin(10, 0.2) <= 1) = e (0.8^10 + 10 * 0.2 * 0.8^9) = e * 0.375810 = 1.021572
    assert hb_p_value(0.1, 10, 0.2) == pytest.approx(math.exp(-10 * (0.1 * math.log(0.5) + 0.9 * math.log(0.9 / 0.8))))
    assert hb_p_value(0.1, 10, 0.2) == pytest.approx(0.692879, abs=1e-6)
    # n = 20, risk 0.05 (one loss), epsilon 0.3:
    #   Hoeffding: h = 0.05 ln(0.05/0.3) + 0.95 ln(0.95/0.7) = 0.2005246; exp(-20 h) = 0.018124
    #   Bentkus:   e (0.7^20 + 20 * 0.3 * 0.7^19) = e * 0.0076373 = 0.020760: Hoeffding is the smaller;
    #   with 0/1 losses the binomial tail is exact (factor 1): 0.0076373, now the smaller.
    tail = 0.7**20 + 20 * 0.3 * 0.7**19
    assert tail == pytest.approx(0.0076373, abs=1e-7)
    assert hb_p_value(0.05, 20, 0.3) == pytest.approx(0.018124, abs=1e-6)
    assert hb_p_value(0.05, 20, 0.3, binary=True) == pytest.approx(tail)
    # Zero losses: (1 - epsilon)^n, and an empirical risk above epsilon tests nothing (p = 1).
    assert hb_p_value(0.0, 122, 0.02) == pytest.approx(0.98**122)
    assert hb_p_value(0.5, 100, 0.2) == 1.0


def test_fixed_sequence_stops_at_the_first_p_value_above_delta():
    assert fixed_sequence([0.01, 0.03, 0.2, 0.04], 0.05) == 2  # 0.04 comes after 0.2: never tested
    assert fixed_sequence([0.2, 0.01], 0.05) == 0
    assert fixed_sequence([0.01, 0.05], 0.05) == 2  # p <= delta rejects


def test_calibrate_certifies_a_prefix_and_picks_its_cheapest_setting():
    # Four settings (most conservative first) on 20 problems, epsilon 0.3, delta 0.05, 0/1 losses.
    losses = np.zeros((4, 20))
    losses[1, :1] = 1  # risk 0.05: p = P(Bin(20, 0.3) <= 1) = 0.0076373 (0/1 losses: the exact tail)
    losses[2, :8] = 1  # risk 0.40, above epsilon: p = P(Bin(20, 0.3) <= 8) = 0.88667
    # setting 3 has no loss (p = 0.7^20), but comes after setting 2 and is never tested
    result = calibrate(losses, [10.0, 7.0, 5.0, 1.0], epsilon=0.3, delta=0.05)
    assert result.binary
    assert result.p_values[0] == pytest.approx(0.7**20)
    assert result.p_values[1] == pytest.approx(0.7**20 + 20 * 0.3 * 0.7**19)
    assert result.p_values[2] == pytest.approx(stats.binom.cdf(8, 20, 0.3)) and result.p_values[2] == pytest.approx(0.88667, abs=1e-5)
    assert result.certified == 2 and result.chosen == 1
    # Nothing certified: no choice (the caller falls back to full best-of-N).
    assert calibrate(losses[2:3], [1.0], epsilon=0.3, delta=0.05).chosen is None


def test_required_n_is_the_first_n_whose_p_value_passes():
    # Zero losses: (1 - epsilon)^n <= delta from n = ceil(ln delta / ln(1 - epsilon)).
    assert required_n(0.0, 0.02, 0.1) == math.ceil(math.log(0.1) / math.log(0.98)) == 114
    assert required_n(0.0, 0.01, 0.1) == 230
    needed = required_n(0.01, 0.02, 0.1)
    assert hb_p_value(0.01, needed, 0.02) <= 0.1 < hb_p_value(0.01, needed - 1, 0.02)
    assert required_n(0.02, 0.02, 0.1) is None


def test_the_calibration_size_that_would_certify_a_saving():
    # 50 problems, epsilon 0.05, delta 0.1; settings 0 and 1 cost as much as full best-of-N (10).
    # Zero losses need 45 problems (0.95^45 = 0.0994); setting 2's one loss in 50 (risk 0.02, 0/1
    # losses) needs required_n(0.02, ..., binary) = 132, and setting 3 comes after it: 132 certifies
    # both, and 3 is cheaper.
    losses = np.zeros((4, 50))
    losses[2, :1] = 1
    costs = [10.0, 10.0, 6.0, 4.0]
    result = calibrate(losses, costs, 0.05, 0.1)
    assert result.certified == 2  # at 50 problems setting 2's p-value is P(Bin(50, 0.05) <= 1) = 0.279
    assert result.p_values[2] == pytest.approx(0.279432, abs=1e-6)
    assert result.needed(0.05, 0.1) == [45, 45, 132, 132] and required_n(0.02, 0.05, 0.1, binary=True) == 132
    assert result.needed_for_saving(0.05, 0.1, costs, full_cost=10.0) == (132, 3)
    losses[1, :3] = 1  # setting 1 now loses 0.06 > epsilon: nothing after it can ever be certified
    assert calibrate(losses, costs, 0.05, 0.1).needed_for_saving(0.05, 0.1, costs, full_cost=10.0) is None


@pytest.mark.parametrize("epsilon, delta", [(0.0, 0.1), (1.0, 0.1), (-0.1, 0.1), (0.05, 0.0), (0.05, 1.2)])
def test_levels_outside_zero_one_are_refused(epsilon, delta):
    with pytest.raises(ConfigError, match="--epsilon|--delta"):
        check_levels([epsilon], delta)


# -- the guarantee on synthetic problems ------------------------------------------------------------

# Each problem draws N = 6 i.i.d. answers from one of three classes (class 0 is right) with a known
# distribution; a problem type is drawn with WEIGHTS. Every answer sequence (3^6) is replayed once
# by the Beta rule at each threshold of the path the CLI uses, so a threshold's risk (full
# best-of-6 right, the rule wrong) is an exact sum over sequences, not an estimate.
N, CLASSES = 6, 3
TYPES = np.array([[0.5, 0.45, 0.05], [0.55, 0.4, 0.05], [0.95, 0.03, 0.02]])
WEIGHTS = np.array([0.4, 0.4, 0.2])
EPSILON, DELTA = 0.024, 0.1
SEEDS = 500  # repeated calibrations per calibration set size


@pytest.fixture(scope="module")
def synthetic():
    sequences = np.array(list(itertools.product(range(CLASSES), repeat=N)))[:, ::-1]  # row i: i in base 3, digit j at j
    powers = CLASSES ** np.arange(N)
    methods = [AdaptiveConsistencyReplay(StoppingRule(rule="beta", threshold=t), 1) for t in POSTERIOR_THRESHOLDS]
    order = np.arange(N)
    lost = np.zeros((len(methods), len(sequences)))
    disagree = np.zeros_like(lost)
    drawn = np.zeros_like(lost)
    for i, sequence in enumerate(sequences):
        problem = ProblemSamples(None, sequence, np.ones(N, dtype=np.int64), None, sequence == 0)
        for m, method in enumerate(methods):
            outcome = method.replay(problem, order)
            lost[m, i], disagree[m, i] = full_best_of_n_loss(problem, order, outcome.chosen)
            drawn[m, i] = len(outcome.drawn)
    probability = WEIGHTS @ np.prod(TYPES[:, sequences], axis=2)  # P(sequence)
    return {"sequences": sequences, "powers": powers, "lost": lost, "disagree": disagree,
            "risk": lost @ probability, "samples": drawn @ probability}


def _calibration_losses(synthetic, n: int, orders: int, rng: np.random.Generator) -> np.ndarray:
    """n fresh problems, each problem's loss averaged over `orders` random orders of its answers
    (as the replay averages over permutations of the recorded samples): settings x problems."""
    types = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    below = np.cumsum(TYPES, axis=1)[types][:, None, :-1]  # each problem's class boundaries in [0, 1)
    answers = (rng.random((n, N))[:, :, None] >= below).sum(axis=2)  # class c with probability TYPES[t, c]
    losses = np.zeros((len(POSTERIOR_THRESHOLDS), n))
    for _ in range(orders):
        shuffled = rng.permuted(answers, axis=1)
        losses += synthetic["lost"][:, shuffled @ synthetic["powers"]]
    return losses / orders


def test_the_synthetic_path_has_a_setting_just_above_epsilon(synthetic):
    """The case that tests the guarantee: a setting whose risk is a little above epsilon (a
    calibration may see it below), after settings below epsilon that save samples."""
    risk = synthetic["risk"]
    assert (np.diff(risk) >= -1e-12).all()  # risk grows along the path (less conservative)
    assert risk[6] < EPSILON < risk[7] < 1.05 * EPSILON  # threshold 0.85: 0.0160; 0.8: 0.0248
    assert synthetic["samples"][5] < N - 0.9  # threshold 0.9 (risk 0) saves samples
    assert (synthetic["disagree"] >= synthetic["lost"]).all()  # disagreement bounds the gold loss


@pytest.mark.parametrize("n, orders", [(122, 4), (500, 4), (2000, 1)])
def test_risk_stays_within_epsilon_in_at_least_one_minus_delta_of_calibrations(synthetic, n, orders):
    """SEEDS calibrations at each size the docs state (122: the recorded run's half a; 500; 2000);
    orders 4: losses in [0, 1] (Bentkus' factor e), orders 1: 0/1 losses (the exact tail).

    Violations are Binomial(SEEDS, p) with p <= DELTA if the guarantee holds; the test allows the
    count up to its 99.9% quantile at p = DELTA (72 of 500), so a correct procedure fails it with
    probability below 0.001. The naive rule (cheapest setting whose empirical risk is <= epsilon),
    which has no guarantee, exceeds that bound on the same draws: the test can see a violation."""
    rng = np.random.default_rng(n)
    risk, samples = synthetic["risk"], synthetic["samples"]
    violations = naive_violations = saving = 0
    for _ in range(SEEDS):
        losses = _calibration_losses(synthetic, n, orders, rng)
        result = calibrate(losses, samples, EPSILON, DELTA)
        chosen_risk = 0.0 if result.chosen is None else risk[result.chosen]  # none certified: full best-of-N
        violations += chosen_risk > EPSILON
        saving += result.chosen is not None and samples[result.chosen] < N - 0.9
        naive = [j for j, r in enumerate(losses.mean(axis=1)) if r <= EPSILON]
        naive_violations += risk[min(naive, key=lambda j: samples[j])] > EPSILON
    bound = stats.binom.ppf(0.999, SEEDS, DELTA)
    assert violations <= bound
    assert naive_violations > bound
    assert saving >= 0.9 * SEEDS  # not vacuous: it certifies a setting that saves samples


# -- the protocol on a recorded run ----------------------------------------------------------------


async def test_guaranteed_calibrates_on_half_a_and_measures_on_half_b(tmp_path):
    from test_adaptive_replay import _run
    from typer.testing import CliRunner

    from ttscale.analysis.runs import load_run
    from ttscale.cli import app

    run_dir = await _run(tmp_path, "best-of-n", {"n": 6, "logprobs": 5})
    run = load_run(run_dir)
    paths = threshold_paths(run)
    assert {"adaptive-consistency (beta)", "ESC", "DeepConf online (high, eta=90)", "DeepConf online (tau=0.95)"} <= {
        p.family for p in paths}
    results = guaranteed(run, [0.1, 0.3], 0.2, orders=2, paths=paths[:1] + paths[3:4])
    assert len(results) == 4
    for result in results:
        certified = result.calibration.certified
        assert certified == fixed_sequence(result.calibration.p_values, 0.2)
        if result.needed_for_saving is not None:
            assert result.needed_for_saving[1] in result.settings
        if result.setting == "full best-of-N":
            assert certified == 0 and result.saving["flops"] == 1.0 and result.realised_loss == 0.0
        else:
            assert result.p_value <= 0.2 and result.setting in result.settings[:certified]
            assert 0.0 <= result.realised_loss <= result.realised_disagreement <= 1.0
    cli = CliRunner().invoke(app, ["adaptive", str(run_dir), "--epsilon", "0", "--delta", "0.1"])
    assert cli.exit_code != 0 and "--epsilon 0.0" in str(cli.exception)
    cli = CliRunner().invoke(app, ["adaptive", str(run_dir), "--delta", "0.1"])
    assert cli.exit_code != 0 and "--epsilon" in str(cli.exception)
