"""Difficulty bins: oracle quantile bins of pass@1, the probe's predicted bins, agreement."""

from collections import Counter

import numpy as np
import pytest

from ttscale.analysis.difficulty import (
    agreement, assign_bins, bin_agreement, oracle_bins, probe_of_record, probe_statistic, quantile_edges,
)
from ttscale.analysis.runs import Record, Sample
from ttscale.benchmarks.arithmetic import ArithmeticBenchmark


def test_bins_are_quantiles():
    values = np.random.default_rng(0).permutation(np.arange(100) / 100)
    edges = quantile_edges(values)
    bins = assign_bins(values, edges)
    assert len(edges) == 4
    assert Counter(bins) == {b: 20 for b in range(5)}
    # Bin 0 holds the lowest values (hardest), bin 4 the highest.
    for b in range(5):
        members = sorted(v for v, x in zip(values, bins) if x == b)
        assert members == [v / 100 for v in range(20 * b, 20 * b + 20)]


def test_ties_go_to_the_lower_bin_and_new_values_use_the_edges():
    # Half the problems never solved: the lower quantiles tie at 0, and bin 1 stays empty.
    edges = quantile_edges([0, 0, 0, 0, 0, 0.5, 1, 1, 1, 1])
    assert edges == pytest.approx([0, 0, 0.7, 1])
    assert assign_bins([0, 0.01, 0.5, 0.7, 0.9, 1], edges) == [0, 2, 2, 2, 3, 3]


def _record(pid, answers, correct, scores=None):
    samples = tuple(Sample(a, c, None if scores is None else scores[i], 1) for i, (a, c) in enumerate(zip(answers, correct)))
    return Record(pid, samples, {"majority": False}, "majority", {})


def test_oracle_bins_from_pass_at_1():
    records = [_record(f"p{i}", ["1"] * 10, [j < i for j in range(10)]) for i in range(10)]
    edges, bins = oracle_bins(records)
    assert [bins[f"p{i}"] for i in range(10)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert edges == pytest.approx([0.18, 0.36, 0.54, 0.72])


def test_agreement_is_the_largest_answer_group_share():
    assert agreement(["3", "3", "4", "3"]) == 0.75
    assert agreement(["3", None, None, None]) == 0.25
    assert agreement([None, None]) == 0.0
    assert agreement(["1/2", "0.5"], equivalent=lambda a, b: float(eval(a)) == float(eval(b))) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        agreement([])


def test_probe_reads_only_the_first_k0_samples_and_no_grades():
    record = _record("p", ["7", "7", "2", "5", "5", "5"], [False] * 6)
    assert probe_of_record(record, 2, "agreement") == 1.0
    assert probe_of_record(record, 4, "agreement") == 0.5
    with pytest.raises(ValueError, match="k0=8"):
        probe_of_record(record, 8, "agreement")


def test_verifier_probe_needs_scores():
    assert probe_statistic(["1", "2"], [0.2, 0.6], "verifier") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="verifier scores"):
        probe_statistic(["1"], [None], "verifier")
    scored = _record("p", ["1", "2", "3"], [True, False, False], scores=[0.2, 0.6, 1.0])
    assert probe_of_record(scored, 2, "verifier") == pytest.approx(0.4)  # the first k0 samples only


def test_bin_agreement_over_shared_problems():
    assert bin_agreement({"a": 0, "b": 1, "c": 4}, {"a": 0, "b": 2, "c": 4, "d": 3}) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no problems"):
        bin_agreement({"a": 0}, {"b": 0})


def test_mixed_difficulty_arithmetic_takes_each_problem_difficulty_from_its_item():
    problems = ArithmeticBenchmark(terms="2-4", digits="1-2", size=60).load()
    difficulties = {p.difficulty for p in problems}
    assert len(difficulties) >= 4 and difficulties <= {2.0, 3.0, 4.0, 6.0, 8.0}
    for p in problems:  # operand count agrees with the recorded difficulty's terms
        terms = p.difficulty / (2 if any(len(t.strip("-() ")) == 2 for t in p.metadata["expression"].split()) else 1)
        assert 2 <= terms <= 4
    assert problems[0].id == "arithmetic-t2-4d1-2-s0-0"


def test_single_value_arithmetic_keeps_its_ids_and_difficulty():
    [problem] = ArithmeticBenchmark(terms=3, digits=2).load(limit=1)
    assert problem.id == "arithmetic-t3d2-s0-0" and problem.difficulty == 6.0


@pytest.mark.parametrize("bad", ["5-2", "x", "1-3"])
def test_bad_arithmetic_ranges_name_the_field(bad):
    with pytest.raises(ValueError, match="terms"):
        ArithmeticBenchmark(terms=bad)
