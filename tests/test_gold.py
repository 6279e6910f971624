"""Gold taint is data: whatever gold answers guided is an upper bound in compare, report and the
allocator, never a winner and never a setting a deployable policy chooses (fake backend runs)."""

import asyncio

import pytest

from ttscale.allocation.evaluate import evaluate_policy
from ttscale.allocation.fit import fit_policy
from ttscale.analysis.report import build_comparison, render_html
from ttscale.analysis.scaling import UPPER_BOUND
from ttscale.config import RunConfig
from ttscale.runner import run_eval
from ttscale.testing import write_jsonl

PROBLEMS = 20
ANSWER_KEY = {f"{i} + 3": str(i + 3) for i in range(PROBLEMS)}


def config(tmp_path, strategy, options, verifier=None):
    """A weak fake policy model (15% of samples right), so that gold-guided search looks strong."""
    path = tmp_path / "p.jsonl"
    if not path.exists():
        write_jsonl(path, ({"id": f"q{i}", "question": f"What is {i} + 3?", "answer": str(i + 3)} for i in range(PROBLEMS)))
    return RunConfig(benchmark=str(path), backend="fake", model="fake", output=tmp_path / "runs", strategy=strategy,
                     strategy_options=options, verifier=verifier,
                     backend_options={"answer_key": ANSWER_KEY, "accuracy": 0.15, "num_params": 1000, "block_size": 100_000})


@pytest.fixture(scope="module")
def gold_runs(tmp_path_factory):
    """Best-of-16 (no verifier), beam search guided by oracle-orm reporting majority, and
    revision with oracle-orm reporting hierarchical selection: the issue's two compare cases."""
    tmp_path = tmp_path_factory.mktemp("gold")
    configs = [
        config(tmp_path, "best-of-n", {"n": 16}),
        config(tmp_path, "beam-search", {"n": 8, "beam_width": 2, "max_steps": 2, "selection": "majority"}, "oracle-orm"),
        config(tmp_path, "revision", {"n": 4, "ratio": "2:2", "selection": "hierarchical"}, "oracle-orm"),
    ]
    return [asyncio.run(run_eval(c)).run_dir for c in configs]


def test_gold_guided_search_is_an_upper_bound_under_every_rule_and_never_wins(gold_runs):
    bon, beam, revision = gold_runs
    # Budgets at the gold runs' own FLOPs: the only budgets where their one point is defined.
    own = [c.points[-1].flops for c in build_comparison([beam, revision], bootstrap=0).curves]
    comparison = build_comparison(gold_runs, bootstrap=0, budgets=sorted(set(own)))
    labels = comparison.labels
    gold = {labels[id(c)] for c in comparison.curves if c.uses_gold}
    for curve in comparison.curves:
        guided = curve.strategy.endswith("+oracle-orm")
        assert curve.uses_gold == (guided or curve.rule == "oracle"), (curve.strategy, curve.rule)
    for case in ("beam-search+oracle-orm · majority", "revision+oracle-orm · hierarchical"):
        assert case in gold
        assert any(row.upper_bound.get(case) is not None for row in comparison.budgets)  # shown at its budget
    for row in comparison.budgets:
        assert not gold & set(row.winners) and not gold & set(row.accuracy)
    # Would it have won? At its own budget the guided search beats every deployable curve there.
    beam_budget = next(row for row in comparison.budgets if row.upper_bound.get("beam-search+oracle-orm · max-score") is not None)
    deployable = [a for a in beam_budget.accuracy.values() if a is not None]
    assert beam_budget.upper_bound["beam-search+oracle-orm · max-score"] > max(deployable)
    assert "beam-search+oracle-orm · max-score" not in beam_budget.winners
    page = render_html(comparison)
    for case in ("beam-search+oracle-orm · majority", "revision+oracle-orm · hierarchical"):
        assert f"{case} {UPPER_BOUND}" in page


@pytest.fixture(scope="module")
def oracle_best_of_n(tmp_path_factory):
    """Best-of-8 whose samples oracle-orm scored (max-score reads the gold answers)."""
    tmp_path = tmp_path_factory.mktemp("oracle-bon")
    c = config(tmp_path, "best-of-n", {"n": 8, "selection": "max-score"}, "oracle-orm")
    return asyncio.run(run_eval(c)).run_dir


def test_an_oracle_scored_best_of_n_run_never_becomes_a_deployable_setting(oracle_best_of_n):
    policy = fit_policy([oracle_best_of_n], k0=2)
    tables = policy.oracle_tables + policy.predicted_tables + [policy.unprobed]
    gold = [e for t in tables for e in t.entries if e.setting.uses_gold]
    # Measured and kept, labelled: max-score and weighted-vote at n = 2, 4, 8, per table.
    assert {e.setting.options["selection"] for e in gold} == {"max-score", "weighted-vote"}
    assert all(e.setting.verifier == "oracle-orm" and UPPER_BOUND in e.setting.label() for e in gold)
    # They are the most accurate settings measured, and still never chosen.
    assert max(e.accuracy for e in gold) > max(e.accuracy for t in tables for e in t.entries if not e.setting.uses_gold)
    for t in tables:
        assert not any(e.setting.uses_gold for e in t.frontier_flops + t.frontier_samples)
    assert policy.verifier is None  # no deployable setting needs the oracle
    for b in range(policy.num_bins):
        for source in ("oracle", "predicted"):
            for budget in (1e3, 1e5, 1e7, 1e12):
                assert not policy.choose(b, budget_flops=budget, source=source, strict=False).setting.uses_gold
    assert not policy.allocate_batch(list(range(policy.num_bins)), total_flops=1e12)[0].setting.uses_gold


def test_the_oracle_run_in_compare_and_in_held_out_evaluation(oracle_best_of_n, tmp_path):
    curves = {c.rule: c for c in build_comparison([oracle_best_of_n], bootstrap=0).curves}
    assert {rule for rule, c in curves.items() if c.uses_gold} == {"max-score", "weighted-vote", "oracle"}
    policy = fit_policy([oracle_best_of_n], split="a", k0=2)
    report = evaluate_policy(policy, [oracle_best_of_n], split="b", budgets=[1e12])
    for row in report["rows"]:
        assert not any(UPPER_BOUND in label for label in row["settings"])
