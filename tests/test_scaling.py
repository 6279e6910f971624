"""Scaling curves by subsampling: selection rules on subsets, exact small-N values, DVTS by
subtree, and agreement with the meter at the run's own N."""

import itertools
import json
import random

import numpy as np
import pytest

from ttscale.analysis.passk import pass_at_k
from ttscale.analysis.difficulty import compare_bins
from ttscale.analysis.runs import Record, _Arrays, load_run
from ttscale.analysis.scaling import coverage_curve, scaling_curves
from ttscale.config import RunConfig
from ttscale.cost import CostModel
from ttscale.modelshape import ModelShape
from ttscale.runner import run_eval
from ttscale.selection import majority_vote, max_score, weighted_vote
from ttscale.types import Candidate

SHAPE = {"n_layers": 2, "d_model": 8, "n_heads": 2, "n_kv_heads": 1, "head_dim": 4}
P = 1000


def candidate(answer, correct, tokens=3, score=None):
    return {"text": f"\\boxed{{{answer}}}", "answer": answer, "num_tokens": tokens, "finish_reason": "stop",
            "score": score, "step_scores": None, "correct": correct, "grade_reason": ""}


def record(pid, candidates, *, prompt_tokens=4, difficulty=None, subtree=None, cost=None):
    meta = {"subtree": subtree} if subtree is not None else {}
    return {
        "problem_id": pid, "question": pid, "gold": "1", "difficulty": difficulty, "seed": 0, "strategy": "best-of-n",
        "verifier": None, "verifier_uses_gold": False, "chosen_rule": "majority", "candidates": candidates,
        "selections": {"majority": {"answer": None, "correct": False}, "first": {"answer": None, "correct": False},
                       "oracle": {"answer": None, "correct": any(c["correct"] for c in candidates)}},
        "n": len(candidates), "num_correct": sum(c["correct"] for c in candidates), "pass_at_k": {},
        "trace_metadata": meta,
        "cost": cost or {"calls": 1, "prompt_tokens": prompt_tokens, "cached_prompt_tokens": 0,
                         "generated_tokens": sum(c["num_tokens"] for c in candidates), "flops": 0.0, "wall_s": 1.0},
    }


def make_run(root, name, records, *, strategy="best-of-n", num_params=P, shape=SHAPE, **config):
    """A run directory written by hand: config.json (fake backend of this shape) and samples."""
    values = dict(benchmark="arithmetic", backend="fake", model=name, strategy=strategy,
                  backend_options={"num_params": num_params, **({"shape": shape} if shape else {})},
                  output=root, **config)
    cfg = RunConfig(**values)
    run_dir = root / cfg.run_id()
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    # backend.json as the runner writes it (ttscale.build.describe_backend): the model the meters priced with.
    (run_dir / "backend.json").write_text(json.dumps({"backend": "FakeBackend", "model": name, "num_params": num_params,
                                                      "shape": {"num_params": num_params, **shape} if shape else None}))
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def problem_of(answers, correct, scores=None):
    cands = [candidate(a, c, score=None if scores is None else scores[i]) for i, (a, c) in enumerate(zip(answers, correct))]
    return _Arrays.of(Record.from_dict(record("q", cands)), lambda a, b: a == b)


def select_correct(problem, subsets, rule):
    """Whether `rule` (ttscale.selection, as the layer applies it) picks a correct answer per subset."""
    return problem.rule_correct(rule, subsets)


def test_rules_on_subsets_by_hand():
    p = problem_of(["1", "2", "2", "1", "3"], [True, False, False, True, False])
    subsets = np.array([[0, 1, 2], [0, 1, 3], [1, 4, 3], [0, 4, 2]])
    assert list(select_correct(p, subsets, "majority")) == [False, True, False, True]  # ties: first seen
    assert list(select_correct(p, subsets, "first")) == [True, True, False, True]
    assert list(select_correct(p, np.array([[1, 2], [1, 3]]), "oracle")) == [False, True]


def test_no_answer_never_wins_and_scores_drive_verifier_rules():
    p = problem_of([None, "2", "1", "1"], [False, False, True, True], scores=[0.99, 0.9, 0.3, 0.4])
    for subset, max_score_ok, weighted_ok, majority_ok in [
        ([0, 1, 2, 3], False, False, True),  # None's 0.99 is skipped; 0.9 > 0.3 + 0.4; "1" twice
        ([0, 2, 3], True, True, True),
        ([0, 1], False, False, False),
    ]:
        rows = np.array([subset])
        assert select_correct(p, rows, "max-score")[0] == max_score_ok
        assert select_correct(p, rows, "weighted-vote")[0] == weighted_ok
        assert select_correct(p, rows, "majority")[0] == majority_ok
    assert list(select_correct(problem_of([None, None], [False, False]), np.array([[0, 1]]), "majority")) == [False]


def test_subset_rules_agree_with_the_strategies_selection_functions():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        scores = [rng.choice([0.1, 0.5, 0.9]) for _ in range(n)]
        correct = [a == "1" for a in answers]
        p = problem_of(answers, correct, scores)
        k = rng.randint(1, n)
        subset = sorted(rng.sample(range(n), k))
        cands = [Candidate(text="", answer=answers[i], num_tokens=1, finish_reason="stop", score=scores[i]) for i in subset]
        eq = lambda a, b: a == b  # noqa: E731
        for rule, pick in [("majority", majority_vote(cands, eq)), ("weighted-vote", weighted_vote(cands, eq)),
                           ("max-score", max_score(cands))]:
            assert bool(select_correct(p, np.array([subset]), rule)[0]) == (pick == "1"), (rule, answers, subset)


def test_best_of_n_curve_is_exact_for_small_n(tmp_path):
    # Answers 1, 2, 1, 3 (gold 1). Every ordered draw is enumerated (4, 12, 24, 24 of them);
    # vote ties go to the answer drawn first.
    tokens = [3, 2, 5, 4]
    cands = [candidate(a, a == "1", t) for a, t in zip(["1", "2", "1", "3"], tokens)]
    run = load_run(make_run(tmp_path, "m", [record("q", cands)]))
    curves = {c.rule: c for c in scaling_curves(run, bootstrap=0)}
    assert [p.n for p in curves["majority"].points] == [1, 2, 3, 4]
    # N=2: both 1s (2 orders) or a 1 drawn first with another (4 orders): 6 of 12.
    # N=3: {0,1,2} and {0,2,3} hold both 1s (12 orders); {0,1,3}, {1,2,3} tie three ways (1 in 3).
    assert [p.accuracy for p in curves["majority"].points] == pytest.approx([2 / 4, 6 / 12, 16 / 24, 1])
    assert [p.accuracy for p in curves["first"].points] == pytest.approx([1 / 2] * 4)
    assert [p.accuracy for p in curves["oracle"].points] == pytest.approx([pass_at_k(4, 2, k) for k in (1, 2, 3, 4)])
    assert [p.measured for p in curves["majority"].points] == [False, False, False, True]
    # Cost at N = 2: the mean over all six pairs of prompt-once + the pair's decoding.
    model = CostModel(ModelShape(num_params=P, **SHAPE), P)
    pairs = [model.generation(4, 0, [tokens[i], tokens[j]]) for i, j in itertools.combinations(range(4), 2)]
    assert curves["majority"].points[1].flops == pytest.approx(np.mean([f for f, _ in pairs]))
    assert curves["majority"].points[1].eflops == pytest.approx(np.mean([e for _, e in pairs]))
    assert curves["majority"].points[1].generated_tokens == pytest.approx(np.mean([tokens[i] + tokens[j] for i, j in itertools.combinations(range(4), 2)]))


def test_dvts_subsamples_whole_subtrees(tmp_path):
    cost = {"calls": 6, "prompt_tokens": 40, "generated_tokens": 20, "flops": 8000.0, "eflops": 9000.0, "wall_s": 2.0}
    a = [candidate("1", True), candidate("1", True), candidate("5", False), candidate("5", False)]
    b = [candidate("7", False), candidate("1", True), candidate("1", True), candidate("1", True)]
    records = [record("a", a, subtree=[0, 0, 1, 1], cost=cost), record("b", b, subtree=[0, 0, 1, 1], cost=cost)]
    run = load_run(make_run(tmp_path, "m", records, strategy="dvts"))
    assert run.kind == "dvts"
    curves = {c.rule: c for c in scaling_curves(run, bootstrap=0)}
    majority = curves["majority"]
    assert [p.n for p in majority.points] == [2, 4]
    # a: subtree 0 right, subtree 1 wrong -> 1/2; all four tie 2-2: the subtree drawn first wins -> 1/2.
    # b: subtree 0 ("7", "1") ties -> "7" wrong; subtree 1 right -> 1/2; all four: "1" x3 -> right.
    assert list(majority.per_problem[:, 0]) == [0.5, 0.5] and list(majority.per_problem[:, 1]) == [0.5, 1.0]
    assert majority.points[0].flops == 4000.0 and majority.points[0].eflops == 4500.0  # half the searches
    assert majority.points[1].flops == 8000.0 and majority.points[1].wall_s == 2.0
    assert [p.accuracy for p in curves["first"].points] == [pytest.approx(0.5), pytest.approx(0.5)]


def test_other_strategies_give_one_recorded_point(tmp_path):
    rec = record("a", [candidate("1", True)], cost={"calls": 3, "prompt_tokens": 9, "flops": 123.0, "eflops": 150.0})
    rec["selections"]["majority"]["correct"] = True
    run = load_run(make_run(tmp_path, "m", [rec], strategy="beam-search"))
    curves = {c.rule: c for c in scaling_curves(run, bootstrap=0)}
    assert run.kind == "fixed" and len(curves["majority"].points) == 1
    assert curves["majority"].points[0].accuracy == 1.0 and curves["majority"].points[0].flops == 123.0


def test_bootstrap_band_brackets_the_mean(tmp_path):
    records = [record(f"p{i}", [candidate("1", i % 2 == 0), candidate("2", False)]) for i in range(10)]
    run = load_run(make_run(tmp_path, "m", records))
    point = {c.rule: c for c in scaling_curves(run, bootstrap=500)}["oracle"].points[-1]
    assert point.accuracy == 0.5
    assert 0.1 < point.ci_low < 0.5 < point.ci_high < 0.9


def test_coverage_curve_and_difficulty_bins(tmp_path):
    records = [record("easy", [candidate("1", True), candidate("1", True)], difficulty=1.0),
               record("hard", [candidate("1", True), candidate("2", False)], difficulty=2.0)]
    run = load_run(make_run(tmp_path, "m", records))
    assert coverage_curve(run) == ([1, 2], [pytest.approx(0.75), pytest.approx(1.0)])
    bins, _, source = compare_bins(run.records)
    assert (bins, source) == ({"hard": 0, "easy": 1}, "the benchmark's difficulty")  # bin 0 = hardest
    same = load_run(make_run(tmp_path, "n", [record(f"p{i}", [candidate("1", j < i) for j in range(6)], difficulty=1.0)
                                             for i in range(7)]))
    bins, _, source = compare_bins(same.records)  # one benchmark difficulty: oracle bins of pass@1
    assert source.startswith("quantiles of pass@1")
    assert bins["p0"] == 0 and bins["p6"] == 4 and sorted(set(bins.values())) == [0, 1, 2, 3, 4]


async def test_full_n_point_matches_the_meter(tmp_path, write_problems):
    problems = write_problems(*({"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 4)),
                              name="p.jsonl")
    config = RunConfig(benchmark=str(problems), backend="fake", model="fake", output=tmp_path / "runs",
                       strategy_options={"n": 4},
                       backend_options={"num_params": P, "shape": SHAPE, "block_size": 1000,
                                        "answer_key": {"1 + 1": "2", "2 + 2": "4"}, "accuracy": 0.5})
    result = await run_eval(config)
    run = load_run(result.run_dir)
    recorded = np.mean([r.cost["flops"] for r in run.records])
    recorded_e = np.mean([r.cost["eflops"] for r in run.records])
    for curve in scaling_curves(run, bootstrap=0):
        assert curve.points[-1].measured
        assert curve.points[-1].flops == pytest.approx(recorded)
        assert curve.points[-1].eflops == pytest.approx(recorded_e)
    oracle = {c.rule: c for c in scaling_curves(run, bootstrap=0)}["oracle"]
    assert oracle.points[-1].accuracy == pytest.approx(result.summary["accuracy"]["oracle"])


def test_scored_candidates_add_verifier_rules_marked_gold_when_the_verifier_read_gold(tmp_path):
    cands = [candidate("1", True, score=0.9), candidate("2", False, score=0.1), candidate("2", False, score=0.2)]
    rec = record("a", cands)
    run = load_run(make_run(tmp_path, "m", [rec]))
    curves = {c.rule: c for c in scaling_curves(run, bootstrap=0)}
    assert list(curves) == ["majority", "weighted-vote", "max-score", "first", "oracle"]
    assert curves["max-score"].points[-1].accuracy == 1.0  # 0.9 beats 0.1 and 0.2
    assert curves["weighted-vote"].points[-1].accuracy == 1.0  # 0.9 > 0.1 + 0.2
    assert curves["majority"].points[-1].accuracy == 0.0
    assert not curves["max-score"].uses_gold
    gold = load_run(make_run(tmp_path, "g", [{**rec, "verifier_uses_gold": True}]))
    flags = {c.rule: c.uses_gold for c in scaling_curves(gold, bootstrap=0)}
    assert flags == {"majority": False, "weighted-vote": True, "max-score": True, "first": False, "oracle": True}


async def test_a_real_dvts_run_subsamples_by_subtree(tmp_path, write_problems):
    """DVTS from the runner (fake policy, scripted PRM): fewer subtrees cost their share."""
    problems = write_problems({"id": "p1", "question": "What is 1 + 1?", "answer": "2"}, name="p.jsonl")

    def respond(prompt: str, index: int) -> str:  # step 0 then an answer; subtree samples differ
        depth = prompt.split("assistant: ", 1)[1].count("\n\n")
        return f"S{depth}c{index} work.\n\nmore" if depth == 0 else f"S1c{index} so \\boxed{{{2 if index else 3}}}"

    from ttscale.backends.fake import FakeBackend

    config = RunConfig(benchmark=str(problems), backend="fake", model="fake", output=tmp_path / "runs", strategy="dvts",
                       strategy_options={"n": 8, "beam_width": 2, "max_steps": 3}, verifier="scripted-prm",
                       verifier_options={"rules": {"S0c1": 0.9}}, backend_options={"num_params": P, "shape": SHAPE})
    result = await run_eval(config, backend=FakeBackend(responder=respond, num_params=P, shape=SHAPE))
    run = load_run(result.run_dir)
    assert run.kind == "dvts" and run.records[0].subtree == (0, 0, 1, 1, 2, 2, 3, 3)
    curves = {c.rule: c for c in scaling_curves(run, bootstrap=0)}
    recorded = run.records[0].cost
    assert [p.n for p in curves["oracle"].points] == [2, 4, 6, 8]
    # curves are priced cache-independently (ttscale.cost.cache_independent_cost)
    assert [p.flops for p in curves["oracle"].points] == pytest.approx([recorded["structural_flops"] * s / 4 for s in (1, 2, 3, 4)])
    assert curves["oracle"].points[-1].accuracy == 1.0  # every subtree's second child answers 2
    assert curves["first"].points[0].accuracy == 0.0  # each subtree's first child answers 3
