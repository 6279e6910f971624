"""The replay of adaptive methods from a recorded best-of-N run (ttscale.analysis.adaptive) equals
live runs of the strategies with the same seeds, on the fake backend, in answers and in cost
(tokens, FLOPs and eFLOPs, each request priced as the live strategy sends it); the held-out
protocol keeps its halves apart."""

import json
import math

import numpy as np
import pytest

from ttscale.analysis.adaptive import (
    AdaptiveConsistencyReplay,
    DeepConfOnlineReplay,
    HeldOutResult,
    ScoredVoteReplay,
    bon_cost_at,
    default_families,
    held_out,
    outcome_cost,
    problem_samples,
    replay,
)
from ttscale.analysis.runs import load_run
from ttscale.cli.adaptive import _saving
from ttscale.config import build_config
from ttscale.cost import subsample_costs
from ttscale.runner import run_eval
from ttscale.stopping import StoppingRule

# A model shape on the fake: eFLOPs (Kinetics' KV memory traffic) differ from FLOPs, so a request's
# reading of the prompt's KV is priced and a replay that merged requests would show it.
SHAPE = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}
BENCHMARK = {"benchmark": "arithmetic", "benchmark_options": {"size": 40}, "backend": "fake", "seed": 3,
             "backend_options": {"shape": SHAPE}}


async def _run(tmp_path, strategy: str, options: dict) -> load_run:
    config = build_config({**BENCHMARK, "strategy": strategy, "strategy_options": options, "output": str(tmp_path)})
    result = await run_eval(config)
    return result.run_dir


def _records(run_dir) -> dict[str, dict]:
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    return {record["problem_id"]: record for record in map(json.loads, lines)}


def _assert_priced_as_live(run, problem, outcome, live_cost: dict) -> bool:
    """The replay's cost equals the live run's cache-independent cost (what compare reads) in
    tokens, FLOPs and eFLOPs; returns whether pricing the drawn samples as one request (the old
    replay) would have understated eFLOPs, i.e. whether this problem tests the request shape."""
    priced = outcome_cost(run, problem, outcome)
    assert priced["generated_tokens"] == live_cost["generated_tokens"]
    assert priced["prompt_tokens"] == live_cost["prompt_tokens"]
    assert len(outcome.requests) == live_cost["calls"]
    assert priced["flops"] == pytest.approx(live_cost["structural_flops"], rel=1e-12)
    assert priced["eflops"] == pytest.approx(live_cost["structural_eflops"], rel=1e-12)
    tokens = problem.tokens.copy()
    tokens[outcome.drawn] = outcome.tokens
    one_request = subsample_costs(run.cost_model, problem.record.cost, tokens, outcome.drawn[None, :])
    assert float(one_request["flops"][0]) == pytest.approx(priced["flops"], rel=1e-12)  # FLOPs never saw the split
    return float(one_request["eflops"][0]) < priced["eflops"] * (1 - 1e-9)


@pytest.mark.parametrize("stopping, batch", [
    ({"rule": "beta", "threshold": 0.8}, 1),
    ({"rule": "beta", "threshold": 0.8}, 3),
    ({"rule": "beta", "threshold": 0.9, "give_up": 3}, 1),
    ({"rule": "dirichlet", "threshold": 0.8}, 1),
    ({"rule": "esc", "window": 2}, 2),
    ({"rule": "beta", "threshold": 0.8, "unanswered": "class"}, 1),
])
async def test_adaptive_consistency_replay_equals_a_live_run(tmp_path, stopping, batch):
    best_of_n = load_run(await _run(tmp_path, "best-of-n", {"n": 8}))
    live = _records(await _run(tmp_path, "adaptive-consistency", {"n": 8, "batch": batch, **stopping}))
    method = AdaptiveConsistencyReplay(StoppingRule(**stopping), batch)
    drawn_counts, split_matters = set(), False
    for record in best_of_n.records:
        problem = problem_samples(best_of_n, record)
        outcome = method.replay(problem, np.arange(problem.n))  # the recorded order: the live run's seeds
        ran = live[record.problem_id]
        drawn_counts.add(len(outcome.drawn))
        assert len(outcome.drawn) == len(ran["candidates"])
        assert [record.samples[i].answer for i in outcome.drawn] == [c["answer"] for c in ran["candidates"]]
        assert int(outcome.tokens.sum()) == ran["cost"]["generated_tokens"]
        chosen = record.samples[outcome.chosen].answer if outcome.chosen >= 0 else None
        assert chosen == ran["selections"]["adaptive"]["answer"]
        split_matters |= _assert_priced_as_live(best_of_n, problem, outcome, ran["cost"])
    assert len(drawn_counts) > 1  # the rule stopped at different points on different problems
    assert split_matters  # some problem took several requests, each reading the prompt's KV


async def test_deepconf_online_replay_equals_a_live_run(tmp_path):
    recorded = load_run(await _run(tmp_path, "best-of-n", {"n": 8, "logprobs": 5}))
    options = {"n": 8, "mode": "online", "warmup": 2, "eta": 90.0, "window": 4, "consensus": 0.8, "logprobs": 5}
    live = _records(await _run(tmp_path, "deepconf", options))
    method = DeepConfOnlineReplay(8, 2, 90.0, 0.8, window=4)
    stopped_any = split_matters = False
    for record in recorded.records:
        problem = problem_samples(recorded, record)
        outcome = method.replay(problem, np.arange(problem.n))
        ran = live[record.problem_id]
        assert len(outcome.drawn) == len(ran["candidates"])
        assert outcome.tokens.tolist() == [c["num_tokens"] for c in ran["candidates"]]
        assert int(outcome.tokens.sum()) == ran["cost"]["generated_tokens"]
        stopped_any |= bool((outcome.tokens < problem.tokens[outcome.drawn]).any())
        chosen = record.samples[outcome.chosen].answer if outcome.chosen >= 0 else None
        assert chosen == ran["selections"]["deepconf"]["answer"]
        split_matters |= _assert_priced_as_live(recorded, problem, outcome, ran["cost"])
    assert stopped_any  # some trace was cut short, and its tokens still counted
    assert split_matters  # the warm-up, then a request per streamed trace


@pytest.mark.parametrize("eta", [10.0, 90.0])
async def test_deepconf_offline_replay_equals_a_live_run_at_k(tmp_path, eta):
    recorded = load_run(await _run(tmp_path, "best-of-n", {"n": 8, "logprobs": 5}))
    live = _records(await _run(tmp_path, "deepconf", {"n": 5, "mode": "offline", "eta": eta, "logprobs": 5}))
    method = ScoredVoteReplay(5, "lowest-group", eta)
    for record in recorded.records:
        problem = problem_samples(recorded, record)
        outcome = method.replay(problem, np.arange(problem.n))
        ran = live[record.problem_id]
        assert outcome.requests == (5,)  # the k traces in one request
        chosen = record.samples[outcome.chosen].answer if outcome.chosen >= 0 else None
        assert chosen == ran["selections"]["filtered-vote"]["answer"]
        assert not _assert_priced_as_live(recorded, problem, outcome, ran["cost"])


@pytest.mark.parametrize("score", ["topk-certainty", "mean-logprob"])
async def test_weighted_vote_replay_at_k_costs_what_best_of_k_costs(tmp_path, score):
    recorded = load_run(await _run(tmp_path, "best-of-n", {"n": 8, "logprobs": 5}))
    live = _records(await _run(tmp_path, "best-of-n", {"n": 3, "logprobs": 5}))
    for record in recorded.records:
        problem = problem_samples(recorded, record)
        outcome = ScoredVoteReplay(3, score).replay(problem, np.arange(problem.n))
        assert not _assert_priced_as_live(recorded, problem, outcome, live[record.problem_id]["cost"])


async def test_replay_prices_only_the_drawn_samples(tmp_path):
    run = load_run(await _run(tmp_path, "best-of-n", {"n": 8, "logprobs": 5}))
    problems = [problem_samples(run, r) for r in run.records]
    everything = replay(run, problems, ScoredVoteReplay(8, "topk-certainty"), orders=3)
    one = replay(run, problems, ScoredVoteReplay(1, "topk-certainty"), orders=1)
    assert everything.samples.tolist() == [8.0] * len(problems)
    assert one.cost["generated_tokens"].tolist() == [float(p.tokens[0]) for p in problems]
    assert (everything.cost["flops"] > one.cost["flops"]).all()


def test_best_of_n_cost_at_an_accuracy_interpolates_in_log_cost():
    costs, accuracy = [1.0, 4.0, 16.0], [0.2, 0.4, 0.5]
    assert bon_cost_at(costs, accuracy, accuracy[0]) == 1.0  # best-of-1 reaches it exactly
    # Below best-of-1: no cost of best-of-N to compare with. Priced at best-of-1's cost, a method
    # at half that cost would have been credited 2x (the issue's case): it is "below best-of-1".
    assert math.isnan(bon_cost_at(costs, accuracy, accuracy[0] - 0.05))
    assert bon_cost_at(costs, accuracy, 0.3) == pytest.approx(2.0)  # halfway in log between 1 and 4
    assert bon_cost_at(costs, accuracy, 0.5) == pytest.approx(16.0)
    assert math.isinf(bon_cost_at(costs, accuracy, 0.6))


async def test_held_out_chooses_on_one_half_and_measures_on_the_other(tmp_path):
    from ttscale.problems import split_of

    run = load_run(await _run(tmp_path, "best-of-n", {"n": 8, "logprobs": 5}))
    base, results = held_out(run, default_families(run), orders=2, bootstrap=50)
    eval_ids = [r.problem_id for r in run.records if split_of(r.problem_id) == "b"]
    assert base.correct.shape == (8, len(eval_ids))
    families = {r.family for r in results}
    assert {"adaptive-consistency (beta)", "ESC", "DeepConf online (low, eta=10)"} <= families
    for result in results:
        assert result.curve and all(point.problem_ids == eval_ids for point in result.curve)
        assert 1.0 <= result.samples <= 8.0
        assert result.accuracy_ci[0] <= result.accuracy <= result.accuracy_ci[1]


async def test_compare_adaptive_adds_a_curve_per_method_whose_points_are_its_settings(tmp_path):
    from ttscale.analysis.report import build_comparison

    run_dir = await _run(tmp_path, "best-of-n", {"n": 4, "logprobs": 5})
    plain = build_comparison([run_dir], bootstrap=0)
    comparison = build_comparison([run_dir], bootstrap=0, adaptive=True)
    added = [c for c in comparison.curves if c.rule == "replayed"]
    assert len(comparison.curves) == len(plain.curves) + len(added)
    assert {"ESC", "adaptive-consistency (beta)", "DeepConf online (high, eta=90)"} <= {c.strategy for c in added}
    for curve in added:
        assert all(1.0 <= p.n <= 4.0 for p in curve.points)
        assert [p.flops for p in curve.points] == sorted(p.flops for p in curve.points)
        assert not curve.uses_gold  # no gold at inference: these compete, and may win


async def test_adaptive_refuses_a_run_that_is_not_best_of_n_and_says_what_to_record(tmp_path):
    from typer.testing import CliRunner

    from ttscale.cli import app

    search = await _run(tmp_path, "adaptive-consistency", {"n": 4})
    result = CliRunner().invoke(app, ["adaptive", str(search)])
    assert result.exit_code != 0 and "-S logprobs=10" in str(result.exception)
    plain = await _run(tmp_path, "best-of-n", {"n": 4})  # no logprobs: the answer-only methods still run
    result = CliRunner().invoke(app, ["adaptive", str(plain), "--orders", "2", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # rich wraps lines at the terminal's width
    assert "DeepConf and the verifier-free votes are left out" in printed and "ESC" in printed


def test_a_method_below_best_of_1_is_shown_as_such_not_credited():
    axes = ("flops", "eflops", "generated_tokens")
    below = HeldOutResult("m", "s", 0.1, (0.0, 0.2), 0.5, 1.0, dict.fromkeys(axes, 0.5), dict.fromkeys(axes, math.nan),
                          dict.fromkeys(axes, 16.0), dict.fromkeys(axes, math.nan), dict.fromkeys(axes, (0.0, 0.0)))
    assert _saving(below, "flops") == "below best-of-1 [0.00, 0.00]"
