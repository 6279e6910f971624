"""Model-written tests: CodeT's dual execution agreement (`codet`), the test vote (`test-vote`) and
CodeMonkeys' vote-then-judge (`test-vote-judge`) on the fake backend, with scripted candidates,
scripted tests and a scripted judge; each rule's exact choice, the metering of the test-writing
and judge calls, and what compare recomputes from the record."""

import json

import numpy as np
import pytest

from ttscale.analysis.runs import load_run, subsample
from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.humaneval import HumanEvalBenchmark
from ttscale.code_exec import CandidateExec
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.generated_tests import (
    GENERATED_TESTS, SELECTION_COST, GeneratedTests, arrays_of, codet_prompt, collect, parse_asserts, parse_choice,
    generated_behaviour_of,
    generated_metadata,
)
from ttscale.runner import run_eval
from ttscale.selection import answer_classes, chosen_positions, consensus_sets
from ttscale.strategies.best_of_n import BestOfN
from ttscale.types import SampleParams


def fenced(body: str) -> str:
    return f"Here it is:\n```python\n{body}\n```\n"


# HumanEval/53: add(x, y).
WRONG = fenced("def add(x, y):\n    return x - y")
WRONG_TOO = fenced("def add(a, b):\n    return -(b - a)")
ODD = fenced("def add(x, y):\n    return 0 if x == y or x == 0 else x + y")  # wrong on add(0, 1), a hidden test
RIGHT = fenced("def add(x, y):\n    return x + y")
RIGHT_TOO = fenced("def add(x: int, y: int):\n    return sum([x, y])")
CRASHING = fenced("def add(x, y):\n    raise ValueError('no')")
NO_CODE = "I cannot write this function."
CANDIDATES = [WRONG, WRONG_TOO, ODD, RIGHT, RIGHT_TOO, CRASHING, NO_CODE]

# Two test-writing samples, each the text after the prompt's `assert add(`.
TEST_SAMPLES = [
    "2, 3) == 5\nassert add(0, 0) == 0\nassert add(1, 1) == 0\n",
    "2, 3) == 5\nassert add(x, 1) == 2\nassert add(5, 5) == 'ten'\nassert add(\nprint(add(1, 2))",
]
# The distinct well-formed tests: T0 add(2, 3) == 5 (written twice), T1 add(0, 0) == 0,
# T2 add(1, 1) == 0, T3 add(5, 5) == 'ten'; `add(x, 1)` reads a name, `add(` does not parse.
# Passes (T0 weighs 2):  WRONG, WRONG_TOO: T1 T2 -> 2 each;  ODD: T0 T1 T2 -> 4;
# RIGHT, RIGHT_TOO: T0 T1 -> 3 each;  CRASHING, NO_CODE: none.
# CodeT's consensus sets, scored (samples) x (tests passed):
#   {T1, T2}: 2 x 2 = 4;  {T0, T1, T2}: 1 x 4 = 4;  {T0, T1}: 2 x 3 = 6  -> RIGHT (its first sample).
# test-vote: ODD (4). The judge's finalists, the top 3 distinct programs: ODD, RIGHT, RIGHT_TOO.


def answer_of(text):
    return HumanEvalBenchmark().extract_answer(text)


def responder_for(judge_says: str, prompts: list[str]):
    def respond(prompt: str, index: int) -> str:
        prompts.append(prompt)
        if "# check the correctness of add\nassert add(" in prompt:
            return TEST_SAMPLES[index % len(TEST_SAMPLES)]
        if "Which solution is correct?" in prompt:
            return judge_says
        return CANDIDATES[index]
    return respond


@pytest.fixture(scope="module")
def humaneval():
    benchmark = HumanEvalBenchmark()
    return benchmark, {p.id: p for p in benchmark.load()}


async def solve(humaneval, selection, judge_says="Solution 2", **options):
    benchmark, problems = humaneval
    problem = problems["HumanEval/53"].blind()
    prompts: list[str] = []
    backend = FakeBackend(responder=responder_for(judge_says, prompts), num_params=100)
    ctx = SolveContext.for_problem(problem, backend=backend, answers=benchmark, params=SampleParams(max_tokens=4096), seed=0)
    strategy = BestOfN(n=len(CANDIDATES), selection=selection, test_samples=2, test_timeout_s=1.0,
                       generated_test_timeout_s=1.0, **options)
    return await ctx.solve(strategy, problem), prompts


def test_asserts_are_parsed_as_codet_cuts_them_and_only_well_formed_ones_count():
    tests = collect(TEST_SAMPLES, "add")
    assert [t.assertion for t in tests.tests] == [
        "assert add(2, 3) == 5", "assert add(0, 0) == 0", "assert add(1, 1) == 0", "assert add(5, 5) == 'ten'"]
    assert tests.counts == (2, 1, 1, 1)
    # the first five asserts of a sample only; cut at a new `def`; other functions' asserts dropped
    many = "".join(f"{i}, 0) == {i}\nassert add(" for i in range(7)) + "9, 9) == 18\ndef more():\n    assert add(1, 1) == 2"
    assert [t.call for t in parse_asserts(many, "add")] == [f"add({i}, 0)" for i in range(5)]
    assert parse_asserts("1, 2) == 3\nassert sub(1, 2) == -1", "add") == parse_asserts("1, 2) == 3", "add")


def test_the_test_prompt_is_codets_and_shows_no_hidden_test(humaneval):
    benchmark, problems = humaneval
    problem = problems["HumanEval/53"]
    prompt = codet_prompt(problem.blind())
    assert prompt.startswith(problem.metadata["code_prefix"].rstrip("\n") + "\n    pass\n")
    assert prompt.endswith("\n# check the correctness of add\nassert add(")
    hidden = benchmark._rows()["HumanEval/53"]["test"]
    assert "assert candidate(0, 1) == 1" in hidden and "candidate(" not in prompt


def test_the_judges_answer_is_parsed_robustly():
    assert parse_choice("Solution 2 is correct.", 3) == 1
    assert parse_choice("Not solution 1; Solution #3.", 3) == 2  # the last one it names
    assert parse_choice("The answer is 2", 3) == 1
    assert parse_choice("Solution 7", 3) is None  # out of range
    assert parse_choice("1 or 2?", 3) is None  # ambiguous
    assert parse_choice("", 3) is None


def test_codet_scores_consensus_sets_as_computed_by_hand():
    passes = np.asarray([[0, 1, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    counts = np.asarray([2.0, 1.0, 1.0, 1.0])
    assert consensus_sets(passes).tolist() == [0, 0, 1, 2, 2, -1]
    classes = np.arange(6)
    nan = np.full(6, np.nan)
    subsets = np.asarray([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 5, 4], [5, 0, 1, 2, 3, 4], [5, 2, 0, 1, 4, 3]])
    picks = chosen_positions("codet", classes, nan, subsets, test_passes=passes, test_counts=counts)
    assert picks.tolist() == [3, 3, 3, 4]  # {3, 4}: 2 x 3 = 6 beats {0, 1}: 2 x 2 and {2}: 1 x 4
    # {0, 1} and {2} tie at 4: the set seen first in the draw wins; {0}, {2}, {4} alone: 2, 4, 3
    picks = chosen_positions("codet", classes, nan, np.asarray([[0, 1, 2], [2, 0, 1], [0, 2, 4]]), test_passes=passes,
                             test_counts=counts)
    assert picks.tolist() == [0, 2, 2]
    picks = chosen_positions("test-vote", classes, nan, np.asarray([[5, 3, 2], [5, 0, 1]]), test_passes=passes,
                             test_counts=counts)
    assert picks.tolist() == [2, 0]
    # nobody passes a test: the first sample
    assert chosen_positions("codet", classes, nan, np.asarray([[5]]), test_passes=passes, test_counts=counts).tolist() == [5]
    with pytest.raises(ValueError, match="model-written tests"):
        chosen_positions("codet", classes, nan, subsets)


async def test_each_rule_chooses_the_expected_candidate_and_the_calls_are_metered(humaneval):
    trace, prompts = await solve(humaneval, "test-vote-judge")
    s = trace.selections
    assert s["first"] == answer_of(WRONG)
    assert s["codet"] == answer_of(RIGHT)
    assert s["test-vote"] == answer_of(ODD)
    assert s["test-vote-judge"] == answer_of(RIGHT)  # the judge named its second finalist
    assert trace.answer == answer_of(RIGHT)
    recorded = trace.metadata[GENERATED_TESTS]
    assert recorded["counts"] == [2, 1, 1, 1]
    assert recorded["passed"] == [[0, 1, 1, 0], [0, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0],
                                  [0, 0, 0, 0], [0, 0, 0, 0]]
    assert recorded["judge"]["finalists"] == [2, 3, 4] and recorded["judge"]["choice"] == 1
    assert recorded["execution"]["runs"] == 6  # one sandboxed process per candidate with code
    assert trace.metadata["execution"]["runs"] == 12  # the visible tests' runs and these
    # the test-writing call and the judge: metered, booked in the problem's cost, and recorded apart
    rule_cost = trace.metadata[SELECTION_COST]
    assert rule_cost["calls"] == 2 and rule_cost["generated_tokens"] > 0 and rule_cost["flops"] > 0
    assert trace.cost.calls == 3 and trace.cost.generated_tokens > rule_cost["generated_tokens"]
    assert trace.cost.flops > rule_cost["flops"]
    assert sum("Which solution is correct?" in p for p in prompts) == 1
    # nothing the model was shown holds a hidden test
    hidden = HumanEvalBenchmark()._rows()["HumanEval/53"]["test"]
    assert not any("candidate(" in p or hidden.strip() in p for p in prompts)


async def test_behaviour_vote_on_the_generated_inputs_tells_apart_what_the_visible_ones_cannot(humaneval):
    """HumanEval/53 shows add(2, 3) and add(5, 7). On them ODD, RIGHT and RIGHT_TOO agree (5, 12),
    WRONG and WRONG_TOO agree (-1, -2). The tests' inputs (2, 3), (0, 0), (1, 1), (5, 5) split ODD
    (5, 0, 0, 0) from RIGHT and RIGHT_TOO (5, 0, 2, 10); WRONG and WRONG_TOO stay together (-1, 0, 0, 0)."""
    trace, _ = await solve(humaneval, "behaviour-vote-generated")
    s = trace.selections
    assert s["behaviour-vote"] == answer_of(ODD)  # the largest visible cluster: ODD, RIGHT, RIGHT_TOO
    # two clusters of two tie; the first drawn wins, as in every vote
    assert s["behaviour-vote-generated"] == answer_of(WRONG)
    assert trace.metadata[SELECTION_COST]["calls"] == 1  # the test-writing call, no judge
    # only the samples that pass the visible tests: ODD alone against RIGHT and RIGHT_TOO
    trace, _ = await solve(humaneval, "behaviour-vote-generated", filter="visible")
    assert trace.selections["behaviour-vote"] == answer_of(ODD)
    assert trace.selections["behaviour-vote-generated"] == answer_of(RIGHT) == trace.answer
    signatures = trace.metadata[GENERATED_TESTS]["signatures"]
    assert signatures[3] == signatures[4] != signatures[2] and signatures[6] is None  # NO_CODE ran nothing
    classes = generated_behaviour_of(trace.metadata)
    assert classes.tolist() == [-1, -1, 0, 1, 1, -1, -1]


async def test_an_unparsable_judge_falls_back_to_the_top_voter(humaneval):
    trace, _ = await solve(humaneval, "test-vote-judge", judge_says="They all look fine to me.")
    assert trace.selections["test-vote-judge"] == answer_of(ODD)
    assert trace.metadata[GENERATED_TESTS]["judge"]["choice"] is None


async def test_codet_makes_no_judge_call(humaneval):
    trace, prompts = await solve(humaneval, "codet")
    assert trace.answer == answer_of(RIGHT)
    assert "test-vote-judge" not in trace.selections
    assert not any("Which solution is correct?" in p for p in prompts)
    assert trace.metadata[SELECTION_COST]["calls"] == 1


async def test_compare_recomputes_codet_on_subsets_and_prices_the_tests_once(humaneval, tmp_path):
    prompts: list[str] = []
    benchmark, _ = humaneval
    data_file = tmp_path / "humaneval-53.jsonl"  # HumanEval/53 alone
    data_file.write_text(json.dumps({"task_id": "HumanEval/53", **benchmark._rows()["HumanEval/53"]}) + "\n")
    config = RunConfig(benchmark="humaneval", backend="fake", model="fake", output=tmp_path / "runs",
                       benchmark_options={"data_file": str(data_file)},
                       strategy_options={"n": len(CANDIDATES), "selection": "codet", "test_samples": 2,
                                         "test_timeout_s": 1.0, "generated_test_timeout_s": 1.0})
    result = await run_eval(config, backend=FakeBackend(responder=responder_for("Solution 1", prompts), num_params=100))
    records = {r["problem_id"]: r for r in map(json.loads, (result.run_dir / "samples.jsonl").read_text().splitlines())}
    record = records["HumanEval/53"]
    assert record["selections"]["codet"]["answer"] == answer_of(RIGHT)
    assert record["selections"]["codet"]["correct"] is True and record["selections"]["first"]["correct"] is False
    run = load_run(result.run_dir)
    assert run.kind == "best-of-n"  # the test-writing call does not make it a fixed point
    table = subsample(run, ns=[1, 7], subsets=50, problems=["HumanEval/53"])
    assert {"codet", "test-vote", "behaviour-vote-generated"} <= set(table.rules) and "test-vote-judge" not in table.rules
    at_7 = table.n.index(7)
    assert table.correct["codet"][at_7, 0] == 1.0 and table.correct["test-vote"][at_7, 0] == 0.0
    # the generated-input clusters {WRONG, WRONG_TOO} and {RIGHT, RIGHT_TOO} tie at 7: the first drawn
    # of the four wins, so half of the draws pick right
    assert table.correct["behaviour-vote-generated"][at_7, 0] == pytest.approx(0.5, abs=0.2)
    # one sample: codet picks it whenever it passes a test, else falls back to it: pass@1
    assert table.correct["codet"][table.n.index(1), 0] == pytest.approx(2 / 7)
    # the tests are written once per problem: best-of-1 pays them in full
    [record53] = [r for r in run.records if r.problem_id == "HumanEval/53"]
    tests_flops = record53.selection_cost["structural_flops"]
    assert tests_flops > 0
    assert table.cost["flops"][table.n.index(1), 0] > tests_flops
    assert table.cost["flops"][at_7, 0] == pytest.approx(record53.cost["structural_flops"])
    answers = [c["answer"] for c in record["candidates"]]
    passes = np.asarray(record["trace_metadata"][GENERATED_TESTS]["passed"], dtype=bool)
    counts = np.asarray(record["trace_metadata"][GENERATED_TESTS]["counts"], dtype=float)
    [pick] = chosen_positions("codet", answer_classes(answers, str.__eq__), np.full(len(answers), np.nan),
                              np.arange(len(answers))[None, :], test_passes=passes, test_counts=counts)
    assert answers[pick] == record["selections"]["codet"]["answer"]


def test_a_problem_where_no_test_parsed_records_an_empty_matrix_and_falls_back_to_first():
    meta = {GENERATED_TESTS: generated_metadata(GeneratedTests(), ["not a test"], [CandidateExec()] * 3)}
    passes, counts = arrays_of(meta)
    assert passes.shape == (3, 0) and counts.shape == (0,)
    picks = chosen_positions("codet", np.arange(3), np.full(3, np.nan), np.asarray([[2, 0, 1]]), test_passes=passes,
                             test_counts=counts)
    assert picks.tolist() == [2]
