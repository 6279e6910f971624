"""MCTS over steps on the fake backend with a scripted policy and PRM: the tree, visits and answer
against a hand computation, the budgets, reproducibility, and the CLI (eval, compare)."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.jsonl import JsonlBenchmark
from ttscale.context import AnswerView, SolveContext, VerifierView
from ttscale.cost import CostMeter
from ttscale.strategies.mcts import MCTS
from ttscale.types import ChatMessage, Problem, SampleParams
from ttscale.verifiers.prm import ScriptedPRM

sys.path.insert(0, str(Path(__file__).parent))
from _step_policy import step_responder  # noqa: E402

PROBLEM = Problem(id="p", question="What is 1 + 1?", prompt=(ChatMessage(role="user", content="What is 1 + 1?"),), answer="2")


def context(backend, verifier, seed=1, max_tokens=64):
    benchmark = JsonlBenchmark.__new__(JsonlBenchmark)  # answer tools only; no file needed
    return SolveContext(
        backend=CostMeter(backend),
        answers=AnswerView(benchmark),
        params=SampleParams(max_tokens=max_tokens, seed=seed),
        rng=random.Random(seed),
        verifier=VerifierView(verifier, PROBLEM, CostMeter(verifier.backend or backend, role="verifier")),
    )


# The small case. Root's children A = S0c0 (PRM 0.6) and B = S0c1 (0.5); each has two terminal
# children S1c0 (0.3) and S1c1 (0.2), which answer 2 under A and 3 under B. Priors are the
# scores normalised over siblings: A 0.6/1.1, B 0.5/1.1; S1c0 0.6, S1c1 0.4.
TWO_BY_TWO_PRM = {"S0c0": 0.6, "S0c1": 0.5, "S1c0": 0.3, "S1c1": 0.2}


def two_by_two_backend():
    return FakeBackend(responder=step_responder(final_depth=1, answer=lambda prompt, i: "2" if "S0c0" in prompt else "3"))


@pytest.mark.parametrize("tree_policy", ["puct", "uct"])
async def test_three_simulations_build_the_hand_computed_tree(tree_policy):
    # Simulation 1: root expanded; no visits yet, so both policies take the best-scored child A;
    # A expanded, its best-scored child A0 (S1c0) is terminal: value 0.3 up root, A, A0.
    # Simulation 2 (root visited once):
    #   PUCT: c(1) = 1.25 + ln(19654/19652) = 1.2501; A: 0.3 + c·(6/11)·1/2 = 0.641,
    #         B: 0.5 + c·(5/11)·1/1 = 1.068 -> B. UCT: B unvisited -> B.
    #   B expanded, B0 (0.3) taken, terminal: value 0.3 up root, B, B0.
    # Simulation 3 (root visited twice):
    #   PUCT: c(2) = 1.25015; A: 0.3 + c·(6/11)·√2/2 = 0.782, B: 0.3 + c·(5/11)·√2/2 = 0.702 -> A;
    #         in A (visited once): A0: 0.3 + c(1)·0.6·1/2 = 0.675, A1: 0.2 + c(1)·0.4·1/1 = 0.700 -> A1.
    #   UCT:  A and B both 0.3 + √2·√(ln 2) = 1.477, the tie to the better-scored A; in A, A1 unvisited.
    #   A1 is terminal: value 0.2 up root, A, A1.
    backend = two_by_two_backend()
    ctx = context(backend, ScriptedPRM(rules=TWO_BY_TWO_PRM))
    trace = await MCTS(n=3, width=2, tree_policy=tree_policy).solve(PROBLEM.blind(), ctx)
    tree = trace.metadata["tree"]  # depth first: root, A, A0, A1, B, B0, B1
    assert [node["step"][:4] for node in tree] == ["", "S0c0", "S1c0", "S1c1", "S0c1", "S1c0", "S1c1"]
    assert [node["parent"] for node in tree] == [None, 0, 1, 1, 0, 4, 4]
    assert [node["visits"] for node in tree] == [3, 2, 1, 1, 1, 1, 0]
    assert [node["q"] for node in tree] == pytest.approx([0.8 / 3, 0.25, 0.3, 0.2, 0.3, 0.3, 0.2], abs=1e-6)
    assert [node["prior"] for node in tree] == pytest.approx([1, 6 / 11, 0.6, 0.4, 5 / 11, 0.6, 0.4], abs=1e-6)
    assert trace.metadata["expansions"] == 3 and trace.metadata["generated_steps"] == 6
    assert len(backend.requests) == 3  # one request of n=2 per expansion; simulation 3 generated nothing new
    # The three simulations ended in A0, B0, A1: three distinct solutions, the candidates in order.
    assert [c.text.split("\n\n")[0] for c in trace.candidates] == ["S0c0 work.", "S0c1 work.", "S0c0 work."]
    assert [c.score for c in trace.candidates] == [0.3, 0.3, 0.2]
    assert trace.metadata["distinct_solutions"] == 3
    # Most visits: A (2 > 1), then A0 and A1 tie on visits and A0's Q is higher -> 2.
    # Best value: B (0.3 > 0.25) -> B0 -> 3. Votes over the three simulations' solutions: 2, 3, 2.
    assert trace.selections["visits"] == "2" and trace.answer == "2"
    assert trace.selections["value"] == "3"
    assert trace.selections["majority"] == "2"
    assert trace.selections["weighted-vote"] == "2"  # 0.3 + 0.2 against 0.3


async def test_a_simulation_that_ends_on_a_known_solution_generates_nothing_and_counts_it_again():
    # A = S0c0 (0.6) over B (0.4); under A, S1c0 (0.9) over S1c1 (0.2). PUCT, simulation 2:
    # A: 0.9 + c(1)·0.6·1/2 = 1.275 against B: 0.4 + c(1)·0.4·1/1 = 0.900; in A, A0: 0.9 + c·(9/11)/2
    # = 1.411 against A1: 0.2 + c·(2/11) = 0.427. Simulation 3: A 0.9 + c(2)·0.6·√2/3 = 1.254 against
    # B 0.4 + c(2)·0.4·√2 = 1.107; A0 1.382 against A1 0.521. All three end at A0.
    backend = two_by_two_backend()
    prm = ScriptedPRM(rules={"S0c0": 0.6, "S0c1": 0.4, "S1c0": 0.9, "S1c1": 0.2})
    trace = await MCTS(n=3, width=2).solve(PROBLEM.blind(), context(backend, prm))
    assert len(backend.requests) == 2  # root and A; simulations 2 and 3 generated nothing
    assert [node["visits"] for node in trace.metadata["tree"]] == [3, 3, 3, 0, 0]  # root, A, A0, A1, B
    assert len(trace.candidates) == 3 and trace.metadata["distinct_solutions"] == 1
    assert trace.selections["visits"] == trace.selections["majority"] == "2"


async def test_rollout_value_evaluates_a_new_leaf_with_one_sample_to_the_end():
    # Simulation 1: root expanded, A taken (best score, no visits); A is no terminal, so one
    # sample is rolled out from it to the end (S1c0, 0.3): value 0.3; the rollout joins no tree.
    # Simulation 2: PUCT takes B (1.068 against 0.641, as above); B expanded, B0 is terminal
    # (0.3): no rollout. Two requests of n=2 (root, B) and one of n=1 (the rollout).
    backend = two_by_two_backend()
    ctx = context(backend, ScriptedPRM(rules=TWO_BY_TWO_PRM))
    trace = await MCTS(n=2, width=2, value="rollout").solve(PROBLEM.blind(), ctx)
    tree = trace.metadata["tree"]  # root, A, B, B0, B1
    assert [node["step"][:4] for node in tree] == ["", "S0c0", "S0c1", "S1c0", "S1c1"]
    assert [node["visits"] for node in tree] == [2, 1, 1, 1, 0]
    assert [r.params.n for r in backend.requests] == [2, 1, 2]
    assert backend.requests[1].params.stop == () and backend.requests[1].prefix == "S0c0 work.\n\n"
    assert trace.metadata["generated_steps"] == 5  # A, B, B0, B1 and the rollout
    assert [c.answer for c in trace.candidates] == ["2", "3"]
    # Visits tie (1, 1) and so do the Qs (0.3): the earlier child, A, whose rollout answered 2.
    assert trace.candidates[0].text == "S0c0 work.\n\nS1c0 so \\boxed{2}"
    assert trace.selections["visits"] == "2"


async def test_sample_budget_bounds_simulations_solutions_and_steps():
    for n, width in [(1, 1), (4, 2), (9, 3), (16, 4)]:
        backend = FakeBackend(responder=step_responder(final_depth=3))
        trace = await MCTS(n=n, width=width, max_steps=6).solve(PROBLEM.blind(), context(backend, ScriptedPRM()))
        assert trace.metadata["simulations"] == n and trace.metadata["stopped_by"] == "n"
        assert len(trace.candidates) == n and 1 <= trace.metadata["distinct_solutions"] <= n
        assert trace.metadata["generated_steps"] <= n * 6 * width
        assert sum(r.params.n for r in backend.requests) == trace.metadata["generated_steps"]


async def test_the_last_allowed_depth_is_generated_to_the_end():
    backend = FakeBackend(responder=step_responder(final_depth=10))  # would never answer by itself
    trace = await MCTS(n=2, width=2, max_steps=3).solve(PROBLEM.blind(), context(backend, ScriptedPRM()))
    assert [r.params.stop for r in backend.requests][:3] == [("\n\n",), ("\n\n",), ()]
    assert all(c.text.count("\n\n") <= 3 for c in trace.candidates)


@pytest.mark.parametrize("value", ["verifier", "rollout"])
async def test_flops_budget_stops_before_the_expansion_that_would_pass_it(value):
    unlimited = await MCTS(n=64, width=2, max_steps=4, value=value).solve(
        PROBLEM.blind(), ctx := context(FakeBackend(responder=step_responder(final_depth=3)), ScriptedPRM()))
    total = ctx.cost.structural_flops
    for fraction in (0.2, 0.4, 0.6, 0.8):
        budget = fraction * total
        ctx = context(FakeBackend(responder=step_responder(final_depth=3)), ScriptedPRM())
        trace = await MCTS(n=64, width=2, max_steps=4, value=value, max_flops=budget).solve(PROBLEM.blind(), ctx)
        assert ctx.cost.structural_flops <= budget
        assert trace.metadata["flops_over_budget"] == 0.0
        assert trace.metadata["stopped_by"] == "max_flops"
        assert trace.metadata["simulations"] < unlimited.metadata["simulations"]
    # The budget is what the problem's cost says: a budget above the whole search changes nothing.
    ctx = context(FakeBackend(responder=step_responder(final_depth=3)), ScriptedPRM())
    roomy = await MCTS(n=64, width=2, max_steps=4, value=value, max_flops=2 * total).solve(PROBLEM.blind(), ctx)
    assert roomy.metadata == unlimited.metadata | {"flops_over_budget": 0.0}


async def test_a_seed_reproduces_the_run_and_another_seed_changes_it():
    def run(seed):
        backend = FakeBackend()  # seeded random digits, a step at a time
        return MCTS(n=6, width=3, max_steps=3).solve(PROBLEM.blind(), context(backend, ScriptedPRM(), seed=seed))

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert first.candidates != other.candidates


def test_bad_options_are_refused_by_name():
    with pytest.raises(ValidationError, match="tree_policy"):
        MCTS(tree_policy="ucb")
    with pytest.raises(ValidationError, match="width"):
        MCTS(width=0)
    with pytest.raises(ValidationError, match="max_flops"):
        MCTS(max_flops=-1)
    with pytest.raises(ValidationError, match="value"):
        MCTS(value="simulate")


def ttscale(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ttscale.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_mcts_runs_through_eval_and_compare(tmp_path):
    common = ["eval", "-b", "arithmetic", "--limit", "4", "--backend", "fake", "--verifier", "scripted-prm"]
    mcts = ttscale(*common, "-s", "mcts", "--n", "4", "-S", "width=2", "-S", "max_steps=3", "-S", "tree_policy=uct",
                   "-o", "mcts", cwd=tmp_path)
    assert mcts.returncode == 0, mcts.stderr
    [samples] = (tmp_path / "mcts").glob("*/samples.jsonl")
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(records) == 4 and all(r["trace_metadata"]["simulations"] == 4 for r in records)
    beam = ttscale(*common, "-s", "beam-search", "--n", "4", "--beam-width", "2", "-o", "beam", cwd=tmp_path)
    assert beam.returncode == 0, beam.stderr
    [beam_run] = (tmp_path / "beam").glob("*/samples.jsonl")
    compared = ttscale("compare", str(samples.parent), str(beam_run.parent), cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert "mcts" in compared.stdout and "beam-search" in compared.stdout
    bad = ttscale(*common, "-s", "mcts", "-S", "tree_policy=ucb", "-o", "bad", cwd=tmp_path)
    assert bad.returncode != 0 and "tree_policy" in bad.stderr and "Traceback" not in bad.stderr + bad.stdout
