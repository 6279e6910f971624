"""Stopping rules against their closed forms, and stop_index at batch boundaries."""

from fractions import Fraction
from math import comb

import numpy as np
import pytest
import sympy
from pydantic import ValidationError
from scipy import integrate, stats

from ttscale.stopping import (
    StoppingRule,
    batch_boundaries,
    beta_posterior,
    class_counts,
    counted_classes,
    dirichlet_posterior,
    leading_class,
    stop_index,
)


def classes_with_counts(*counts: int) -> list[int]:
    """Answer classes in first-appearance order, class i repeated counts[i] times (class 0 first)."""
    return [i for i, c in enumerate(counts) for _ in range(c)]


def exact_beta_tail(c1: int, c2: int) -> Fraction:
    """P(X > 1/2), X ~ Beta(c1+1, c2+1), exactly: for integer parameters
    I_x(a, b) = P(Binomial(a+b-1, x) >= a), so P(X > 1/2) = P(Binomial(c1+c2+1, 1/2) <= c1)."""
    n = c1 + c2 + 1
    return Fraction(sum(comb(n, j) for j in range(c1 + 1)), 2**n)


@pytest.mark.parametrize("c1,c2", [(1, 0), (2, 0), (4, 0), (2, 1), (3, 2), (5, 3), (7, 1), (10, 10), (12, 4)])
def test_beta_posterior_matches_the_binomial_identity_and_scipy(c1, c2):
    # the two leading classes, plus a third smaller one that the Beta rule ignores
    third = min(c2, 1) if c2 > 1 else 0
    classes = classes_with_counts(c2, c1, third) if c2 else classes_with_counts(c1)
    got = beta_posterior(classes + [-1, -1])  # no-answer samples count for nobody
    assert got == pytest.approx(float(exact_beta_tail(c1, c2)), abs=1e-14)
    assert got == pytest.approx(stats.beta.sf(0.5, c1 + 1, c2 + 1), abs=1e-12)


def test_beta_posterior_of_a_single_answer_is_one_minus_half_to_the_c_plus_one():
    for c in range(1, 8):
        assert beta_posterior([0] * c) == pytest.approx(1 - 0.5 ** (c + 1), abs=1e-15)


def test_beta_and_dirichlet_with_no_answers_are_zero_and_never_settle():
    assert beta_posterior([]) == 0.0 and beta_posterior([-1, -1]) == 0.0
    assert dirichlet_posterior([-1, -1, -1]) == 0.0
    assert not StoppingRule(rule="beta", threshold=0.01).settled([-1] * 10)
    assert not StoppingRule(rule="dirichlet", threshold=0.01).settled([-1] * 10)


@pytest.mark.parametrize("c1,c2", [(1, 1), (3, 1), (5, 2), (9, 4)])
def test_dirichlet_with_two_answers_equals_beta(c1, c2):
    classes = classes_with_counts(c1, c2)
    assert dirichlet_posterior(classes) == pytest.approx(float(exact_beta_tail(c1, c2)), abs=1e-9)


def test_dirichlet_with_one_answer_seen_is_beta_against_an_unseen_one():
    for c in range(1, 6):
        assert dirichlet_posterior([0] * c) == pytest.approx(1 - 0.5 ** (c + 1), abs=1e-9)


def test_dirichlet_symmetric_three_way_tie_is_one_third():
    assert dirichlet_posterior(classes_with_counts(2, 2, 2)) == pytest.approx(1 / 3, abs=1e-9)


def test_dirichlet_three_answers_matches_exact_symbolic_integral():
    # counts (3, 1, 1) -> alphas (4, 2, 2): P(G1 > G2, G1 > G3) = int f_4(x) F_2(x)^2 dx, exactly.
    x = sympy.symbols("x", positive=True)
    f4 = x**3 * sympy.exp(-x) / 6
    F2 = 1 - sympy.exp(-x) * (1 + x)
    exact = sympy.integrate(f4 * F2**2, (x, 0, sympy.oo))
    assert dirichlet_posterior(classes_with_counts(3, 1, 1)) == pytest.approx(float(exact), abs=1e-9)


def test_dirichlet_matches_monte_carlo_with_many_answers():
    counts = (5, 3, 2, 1, 1)
    rng = np.random.default_rng(0)
    draws = rng.dirichlet(np.asarray(counts) + 1.0, size=400_000)
    monte_carlo = float(np.mean(draws.argmax(axis=1) == 0))
    assert dirichlet_posterior(classes_with_counts(*counts)) == pytest.approx(monte_carlo, abs=3e-3)


def test_leading_class_ties_go_to_the_class_seen_first():
    assert leading_class([0, 1, 1, 0]) == 0
    assert leading_class([-1, 0, 1, 1, 0, 2]) == 0
    assert leading_class([0, 1, 1]) == 1
    assert leading_class([-1, -1]) == -1


def test_class_counts_skip_no_answer():
    assert class_counts([0, -1, 1, 0, -1]).tolist() == [2, 1]
    assert class_counts([-1]).tolist() == []


def test_esc_stops_only_on_a_whole_window_at_window_boundaries():
    rule = StoppingRule(rule="esc", window=3)
    assert not rule.settled([0, 0])  # no complete window yet
    assert rule.settled([0, 0, 0])
    assert not rule.settled([1, 0, 0, 0, 2])  # 0,0,0 straddles the boundary at 3: not a window
    assert rule.settled([1, 0, 0, 2, 2, 2])  # the second window [3, 6)
    assert not rule.settled([-1, -1, -1])  # agreeing on no answer settles nothing
    # replayed with batches of the window size, as ESC samples
    assert stop_index([1, 0, 0, 0, 2, 1, 2, 2, 2, 0], rule, 3) == 9
    assert stop_index([1, 0, 0, 0, 2, 1, 2, 2, 2, 0], rule, 2) == 10  # window [6, 9) seen at the boundary 10


def test_esc_answers_its_unanimous_window_as_the_reference_does():
    # the example: [b,b,c, b,b,d, a,a,a] with w = 3 (classes b=0, c=1, d=2, a=3)
    b, c, d, a = 0, 1, 2, 3
    classes = [b, b, c, b, b, d, a, a, a]
    rule = StoppingRule(rule="esc", window=3)
    assert stop_index(classes, rule, 3) == 9
    assert rule.answer_position(classes) == 6  # a, the window [6, 9) (Yiwei98/ESC early_stop_gsm8k.py:142-148)
    assert leading_class(classes) == b  # the majority over all samples, which ttscale used to answer
    # a run that never stops answers the majority of everything drawn (early_stop_gsm8k.py:144-146)
    assert rule.answer_position([b, c, b, d, a, c]) == 0
    # the reference's window: 5
    assert StoppingRule(rule="esc").window == 5


def test_unanswered_as_a_class_follows_the_references():
    a, none = 0, -1
    classes = [a, a, none, none, none]
    skip, counted = StoppingRule(rule="beta"), StoppingRule(rule="beta", unanswered="class")
    assert skip.posterior(classes) == pytest.approx(0.875)  # a alone: Beta(3, 1)
    # AdaptiveConsistency stopping_criterias.py:28,44: Counter counts None, a = 3 (None), b = 2 (a)
    reference = quad_beta_reference(3, 2)
    assert counted.posterior(classes) == pytest.approx(reference) == pytest.approx(0.65625)
    assert counted_classes(classes, "class") == [0, 0, 1, 1, 1]
    # the answer is the leading class: no answer here, as the reference's most_common is None
    assert skip.answer_position(classes) == 0 and counted.answer_position(classes) == -1
    # ESC: a window of unanswered samples is unanimous in the reference (-1000 for each)
    esc, esc_counted = StoppingRule(rule="esc", window=3), StoppingRule(rule="esc", window=3, unanswered="class")
    assert not esc.settled([none] * 3)
    assert esc_counted.settled([none] * 3) and esc_counted.answer_position([none] * 3) == -1
    assert esc_counted.answer_position([a, none, a, none, none, none]) == -1  # stopped on the window of none
    # give-up: two unanswered samples agree when they are a class
    assert StoppingRule(rule="beta", threshold=0.99, give_up=3).stop_reason([none, none, a]) == "give-up"
    assert StoppingRule(rule="beta", threshold=0.99, give_up=3, unanswered="class").stop_reason([none, none, a]) is None


def quad_beta_reference(a: float, b: float) -> float:
    """The reference's Beta rule as written (stopping_criterias.py:44): a ratio of two integrals."""
    return integrate.quad(lambda x: x**a * (1 - x) ** b, 0.5, 1)[0] / integrate.quad(lambda x: x**a * (1 - x) ** b, 0, 1)[0]


def test_beta_stop_index_is_the_first_boundary_where_settled():
    rule = StoppingRule(rule="beta", threshold=0.8)
    # posterior after each sample: [0]: .75, [0,0]: .875 -> stops at 2 with batch 1
    assert stop_index([0, 0, 1, 1], rule, 1) == 2
    # batch 3: boundaries 3 ([0,0,1]: P = .6875), then 4 ([0,0,1,1]: .5): never settled
    assert stop_index([0, 0, 1, 1], rule, 3) == 4
    assert stop_index([0, 1, 0, 0, 0, 1], rule, 2) == 4  # [0,1,0,0]: P(Beta(4,2) > .5) = .8125
    assert beta_posterior([0, 1, 0, 0]) == pytest.approx(13 / 16)


def test_min_samples_holds_the_rule_off():
    rule = StoppingRule(rule="beta", threshold=0.8, min_samples=4)
    assert stop_index([0, 0, 0, 0, 0, 0], rule, 1) == 4
    assert stop_index([0, 0, 0, 0, 0, 0], rule, 3) == 6  # 3 < min_samples; 6 is the next boundary


def test_give_up_when_the_first_m_all_disagree():
    rule = StoppingRule(rule="beta", threshold=0.99, give_up=4)
    assert rule.stop_reason([0, 1, 2, 3]) == "give-up"
    assert rule.stop_reason([0, 1, -1, 2]) == "give-up"  # no answer disagrees with everything
    assert rule.stop_reason([0, 1, 2]) is None  # fewer than m drawn
    assert rule.stop_reason([0, 1, 0, 2]) is None
    assert stop_index([0, 1, 2, 3, 0, 0, 0, 0, 0], rule, 3) == 6  # first boundary at or after m
    # no give-up when two agree: the rule itself stops, at 9 zeros against 1 (P = 1 - 12/2^11)
    assert stop_index([0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0], rule, 1) == 11
    assert exact_beta_tail(8, 1) < Fraction(99, 100) <= exact_beta_tail(9, 1)


def test_stop_index_edges():
    rule = StoppingRule()
    assert stop_index([], rule, 4) == 0
    assert stop_index([0, 1], rule, 8) == 2  # the budget is the last boundary
    assert batch_boundaries(10, 4) == [4, 8, 10]
    with pytest.raises(ValueError):
        batch_boundaries(10, 0)


def test_stopping_rule_validates_its_fields():
    with pytest.raises(ValidationError, match="threshold"):
        StoppingRule(threshold=1.0)
    with pytest.raises(ValidationError, match="rule"):
        StoppingRule(rule="wald")
    with pytest.raises(ValidationError):
        StoppingRule(give_up=1)


def test_dirichlet_ignores_class_ids_with_no_sample():
    """A replay in another sample order sees class ids numbered on the full sequence: class 2
    may be present while class 1 is not. An id with no sample is no answer seen."""
    from ttscale.stopping import dirichlet_posterior

    assert dirichlet_posterior([0, 2, 0]) == dirichlet_posterior([0, 1, 0])
    assert dirichlet_posterior([3, 3, 0]) == dirichlet_posterior([0, 0, 1])
