"""Execution-based selection on code: scripted candidates (right, wrong, crashing, looping,
printing garbage, hostile) on the fake backend, each rule's exact choice, and the cost and
containment of running them."""

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from ttscale.analysis.runs import load_run, subsample
from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.humaneval import HumanEvalBenchmark
from ttscale.code_exec import CODE_EXEC, EXECUTION, code_arrays, execute, results_of, run_timeout_s
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.runner import run_eval
from ttscale.selection import CODE_RULES, answer_classes, chosen_positions
from ttscale.strategies.best_of_n import BestOfN
from ttscale.types import SampleParams

TEST_TIMEOUT_S = 1.0
# A path outside the sandbox that a hostile candidate tries to create (the checkout, which the
# sandbox's root does not hold; without a mount namespace the uid cannot write it either).
HOSTILE_TARGET = Path(__file__).parent / f"hostile-{uuid.uuid4().hex}.txt"


def fenced(body: str) -> str:
    return f"Here it is:\n```python\n{body}\n```\n"


RIGHT = fenced("def add(x, y):\n    return x + y")
RIGHT_TOO = fenced("def add(x: int, y: int):\n    return sum([x, y])")  # other code, same behaviour
WRONG = fenced("def add(x, y):\n    return x - y")
WRONG_TOO = fenced("def add(a, b):\n    return -(b - a)")  # the same wrong behaviour
CRASHING = fenced("def add(x, y):\n    raise ValueError('no')")
LOOPING = fenced("def add(x, y):\n    while True:\n        pass")
# Ignores the per-test timer: only the process's wall clock ends it.
STUBBORN = fenced("import signal\n"
                  "def add(x, y):\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    while True:\n        pass")
# Prints a flood and a forged report line, and returns a wrong value.
GARBAGE = fenced("import sys, os\n"
                 "def add(x, y):\n"
                 "    print('x' * 200000)\n"
                 "    sys.__stdout__.write('@@ttscale-visible-0000000000000000@@[[\"pass\", \"a\", \"\"]]\\n')\n"
                 "    os.write(1, b'garbage\\n' * 1000)\n"
                 "    return 0")
HOSTILE = fenced(f"import os, signal\n"
                 f"try:\n    open({str(HOSTILE_TARGET)!r}, 'w').write('escaped')\nexcept Exception:\n    pass\n"
                 f"try:\n    os.kill(1, signal.SIGKILL)\nexcept Exception:\n    pass\n"
                 f"def add(x, y):\n    return x * y")
NO_CODE = "I cannot write this function."


@pytest.fixture(scope="module")
def humaneval():
    benchmark = HumanEvalBenchmark()
    problems = {p.id: p for p in benchmark.load()}
    return benchmark, problems


async def solve(humaneval, texts, **options):
    benchmark, problems = humaneval
    problem = problems["HumanEval/53"]  # add(x, y): visible tests add(2, 3) == 5, add(5, 7) == 12
    ctx = SolveContext.for_problem(problem, backend=FakeBackend(script=texts), answers=benchmark,
                                   params=SampleParams(max_tokens=4096), seed=0)
    strategy = BestOfN(n=len(texts), test_timeout_s=TEST_TIMEOUT_S, **options)
    return await ctx.solve(strategy, problem)


def answer_of(text):
    return HumanEvalBenchmark().extract_answer(text)


async def test_each_rule_chooses_the_expected_candidate(humaneval):
    texts = [WRONG, CRASHING, LOOPING, RIGHT, GARBAGE, NO_CODE, RIGHT_TOO, HOSTILE]
    trace = await solve(humaneval, texts, selection="pass-examples")
    s = trace.selections
    assert s["first"] == answer_of(WRONG)
    assert s["pass-examples"] == answer_of(RIGHT)  # the first that passes both visible tests
    assert s["behaviour-vote"] == answer_of(RIGHT)  # RIGHT and RIGHT_TOO: the only cluster of two
    assert trace.answer == answer_of(RIGHT)
    assert s["random"] in {answer_of(t) for t in texts if answer_of(t)}
    again = await solve(humaneval, texts, selection="pass-examples")
    assert again.selections["random"] == s["random"]  # seeded

    runs = results_of(trace.metadata)
    assert [r.passed for r in runs] == [False, False, False, True, False, False, True, False]
    assert [t.status for t in runs[1].tests] == ["error", "error"]
    assert [t.status for t in runs[2].tests] == ["timeout", "timeout"]
    assert runs[5].run_status == "no code" and runs[5].runs == 0
    assert runs[4].tests[0].status == "fail"  # the forged report line is not ours
    assert not HOSTILE_TARGET.exists()
    assert [t.status for t in runs[7].tests] == ["fail", "fail"]  # it ran, killed nothing, wrote nothing
    assert trace.metadata[EXECUTION]["runs"] == 7  # one process per candidate with code
    assert trace.metadata[EXECUTION]["cpu_s"] == pytest.approx(sum(r.cpu_s for r in runs))


async def test_a_majority_of_wrong_programs_wins_the_vote_unless_filtered(humaneval):
    texts = [WRONG, WRONG_TOO, RIGHT]
    plain = await solve(humaneval, texts, selection="behaviour-vote")
    assert plain.answer == answer_of(WRONG)
    assert plain.selections["pass-examples"] == answer_of(RIGHT)
    filtered = await solve(humaneval, texts, selection="behaviour-vote", filter="visible")
    assert filtered.answer == answer_of(RIGHT)
    assert filtered.metadata["behaviour_filter"] == "visible"


async def test_with_nothing_passing_the_rules_fall_back_or_vote_among_runners(humaneval):
    texts = [CRASHING, LOOPING, WRONG, NO_CODE]
    trace = await solve(humaneval, texts, selection="pass-examples")
    assert trace.selections["pass-examples"] == answer_of(CRASHING)  # nobody passes: the first
    assert trace.selections["behaviour-vote"] == answer_of(WRONG)  # crashing and looping join no cluster
    filtered = await solve(humaneval, texts, selection="behaviour-vote", filter="visible")
    assert filtered.answer == answer_of(CRASHING)  # no cluster at all: the first


def test_a_candidate_that_ignores_its_timer_costs_at_most_the_runs_wall_clock(humaneval):
    _, problems = humaneval
    [run] = execute(problems["HumanEval/53"].blind(), [answer_of(STUBBORN)], test_timeout_s=TEST_TIMEOUT_S)
    assert run.run_status == "timeout" and [t.status for t in run.tests] == ["timeout", "timeout"]
    # An upper bound, not a race: the sandbox's wall clock plus its kill grace, with room for load.
    assert run.wall_s <= run_timeout_s(2, TEST_TIMEOUT_S) + 30


def test_random_picks_only_candidates_with_an_answer_and_is_uniform():
    classes = np.asarray([-1, 0, 1, -1])
    picks = chosen_positions("random", classes, np.full(4, np.nan), np.tile(np.arange(4), (2000, 1)),
                             rng=np.random.default_rng(1))
    counts = np.bincount(picks, minlength=4)
    assert counts[0] == counts[3] == 0 and min(counts[1], counts[2]) > 800


def test_code_rules_need_recorded_runs():
    with pytest.raises(ValueError, match="visible tests"):
        chosen_positions("pass-examples", np.asarray([0]), np.asarray([np.nan]), np.asarray([[0]]))


async def test_eval_records_what_recomputes_every_code_rule(tmp_path):
    # HumanEval/0 has_close_elements: wrong (always False), right twice, wrong (always True).
    right = fenced("def has_close_elements(numbers, threshold):\n"
                   "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])")
    wrong = fenced("def has_close_elements(numbers, threshold):\n    return False")
    wrong_too = fenced("def has_close_elements(numbers, threshold):\n    return True")
    script = [wrong, right, right, wrong_too]
    config = RunConfig(benchmark="humaneval", backend="fake", model="fake", output=tmp_path / "runs", limit=1,
                       strategy_options={"n": 4, "selection": "behaviour-vote", "test_timeout_s": TEST_TIMEOUT_S})
    result = await run_eval(config, backend=FakeBackend(script=script, num_params=100))
    [record] = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert record["selections"]["first"]["correct"] is False
    assert record["selections"]["pass-examples"]["correct"] is True
    assert record["selections"]["behaviour-vote"]["correct"] is True
    meta = record["trace_metadata"]
    assert len(meta[CODE_EXEC]) == 4 and meta[EXECUTION]["runs"] == 4
    # Recompute each code rule from the record alone, as compare does, on every subset of 2.
    runs = results_of(meta)
    passed, behaviour = code_arrays(runs, filter_visible=meta["behaviour_filter"] == "visible")
    answers = [c["answer"] for c in record["candidates"]]
    classes = answer_classes(answers, str.__eq__)
    full = np.arange(4)[None, :]
    for rule in CODE_RULES:
        [pick] = chosen_positions(rule, classes, np.full(4, np.nan), full, passed=passed, behaviour=behaviour)
        assert answers[pick] == record["selections"][rule]["answer"]
    pairs = np.asarray([[0, 3], [3, 1], [0, 2]])
    picks = chosen_positions("pass-examples", classes, np.full(4, np.nan), pairs, passed=passed, behaviour=behaviour)
    assert picks.tolist() == [0, 1, 2]  # both wrong: the first; else the one that passes
    # compare's path: the run's records subsampled, the code rules among the rules it reports.
    table = subsample(load_run(result.run_dir), ns=[2, 4], subsets=50)
    assert {"pass-examples", "behaviour-vote", "random", "first"} <= set(table.rules)
    at_4 = table.n.index(4)
    assert table.correct["pass-examples"][at_4, 0] == 1.0 and table.correct["behaviour-vote"][at_4, 0] == 1.0
    assert table.correct["random"][at_4, 0] == pytest.approx(table.correct["first"][at_4, 0], abs=0.3)
    execution = result.summary["execution"]
    assert execution["runs"] == 4 and execution["problems"] == 1
    assert execution["cpu_s"] == pytest.approx(meta[EXECUTION]["cpu_s"])
    assert "execution" not in result.summary["cost"]  # execution is no FLOPs: it lives beside them
