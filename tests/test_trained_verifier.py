"""Verifiers trained from one's own runs (issue 19), on the fake backends: labels, splits, cost, serving."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from ttscale.problems import split_of
from ttscale.analysis.runs import load_run
from ttscale.backends.fake import FakeBackend, FakeHiddenBackend
from ttscale.cli import app
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.errors import ConfigError
from ttscale.hidden_states import solution_text
from ttscale.reward_heads import RewardHead
from ttscale.build import build_benchmark
from ttscale.runner import run_eval
from ttscale.steps import split_steps, step_prefixes
from ttscale.testing import write_jsonl
from ttscale.types import ChatMessage, Problem, SampleParams
from ttscale.verifier_training import (
    RolloutStore, Solution, check_fitting_only, evaluate, math_shepherd_values, pav_advantages, run_rollouts,
)
from ttscale.verifiers.trained import TrainedVerifier

runner = CliRunner()
QUESTIONS = 48
ANSWER_KEY = {f"What is {i} + {i}?": str(2 * i) for i in range(QUESTIONS)}


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A graded best-of-4 run of a fake policy that is right half the time, over 48 problems."""
    root = tmp_path_factory.mktemp("trained")
    problems = write_jsonl(root / "p.jsonl", ({"id": f"p{i}", "question": q, "answer": ANSWER_KEY[q]} for i, q in enumerate(ANSWER_KEY)))
    config = RunConfig(benchmark=str(problems), backend="fake", model="fake", output=root / "runs", strategy_options={"n": 4},
                       backend_options={"num_params": 1000, "accuracy": 0.5, "answer_key": ANSWER_KEY})
    return asyncio.run(run_eval(config)).run_dir


def test_rollout_labels_equal_the_closed_form(tmp_path):
    """Math-Shepherd: Q_i = correct rollouts / k from the prefix ending at step i, the last step's Q its
    grade; PAV: A_i = Q_i - Q_{i-1} from the problem's pass@1. A scripted policy reaches gold from
    the prefix after step 1 in 3 of 4 rollouts and after step 2 in 1 of 4."""
    problem = Problem(id="p0", question="What is 2 + 2?", prompt=(ChatMessage(role="user", content="What is 2 + 2?"),), answer="4")
    reaches_gold = {"Add them.": 3, "Two and two.": 1}

    def responder(prompt: str, index: int) -> str:
        last_step = prompt.split("assistant: ")[-1].rstrip().split("\n\n")[-1]
        return "So \\boxed{4}." if index < reaches_gold[last_step] else "So \\boxed{5}."

    text = "Add them.\n\nTwo and two.\n\nThe answer is \\boxed{4}."
    solution = Solution(problem, 0, tuple(split_steps(text)), True, pass1=0.5, num_tokens=12, text=text)
    store = RolloutStore(tmp_path / "rollouts.jsonl")
    benchmark = build_benchmark(RunConfig(benchmark="arithmetic"))
    backend = FakeBackend(responder=responder)
    asyncio.run(run_rollouts(backend, benchmark, [solution], store, k=4, params=SampleParams(max_tokens=64), run_seed=0))
    grades = [store.done[(solution.key, i)]["correct"] for i in range(2)]
    assert grades == [[True, True, True, False], [True, False, False, False]]
    values = math_shepherd_values(grades, solution.correct)
    assert values == [0.75, 0.25, 1.0]
    assert pav_advantages(values, solution.pass1) == [0.25, -0.5, 0.75]
    # Each rollout continued the solution after its step, as a search continues a beam.
    prefixes = [r.prefix for r in backend.requests]
    assert prefixes == ["Add them.\n\n", "Add them.\n\nTwo and two.\n\n"] and all(r.params.n == 4 for r in backend.requests)
    # A rerun reads the stored rollouts and generates nothing.
    again = FakeBackend(responder=responder)
    asyncio.run(run_rollouts(again, benchmark, [solution], RolloutStore(tmp_path / "rollouts.jsonl"), k=4,
                             params=SampleParams(max_tokens=64), run_seed=0))
    assert again.requests == []


def test_hard_estimation_labels_a_step_good_when_any_rollout_reaches_gold():
    grades = [[True, True, True, False], [True, False, False, False], [False, False, False, False]]
    assert math_shepherd_values(grades, True) == [0.75, 0.25, 0.0, 1.0]  # soft (the default)
    assert math_shepherd_values(grades, True, "hard") == [1.0, 1.0, 0.0, 1.0]
    assert math_shepherd_values(grades, False, "hard")[-1] == 0.0  # the last step's label is the grade


def test_rollouts_continue_the_literal_step_prefix(tmp_path):
    """The model wrote "2. \\n\\n" (a trailing space): a rollout continues those bytes, not the stripped
    steps rejoined ("2.\\n\\n", which is not a prefix of what was generated)."""
    problem = Problem(id="p0", question="What is 2 + 2?", prompt=(ChatMessage(role="user", content="What is 2 + 2?"),), answer="4")
    text = "1. Add them. \n\n2. \n\n\n\nSo \\boxed{4}.  "
    assert split_steps(text) == ["1. Add them.", "2.", "So \\boxed{4}."]
    assert step_prefixes(text) == ["1. Add them. \n\n", "1. Add them. \n\n2. \n\n", text]
    rejoined = "\n\n".join(split_steps(text)[:2]) + "\n\n"
    assert not text.startswith(rejoined)  # what the rollouts used to continue
    solution = Solution(problem, 0, tuple(split_steps(text)), True, pass1=0.5, num_tokens=12, text=text)
    store = RolloutStore(tmp_path / "rollouts.jsonl")
    benchmark = build_benchmark(RunConfig(benchmark="arithmetic"))
    backend = FakeBackend(responder=lambda prompt, index: "So \\boxed{4}.")
    asyncio.run(run_rollouts(backend, benchmark, [solution], store, k=2, params=SampleParams(max_tokens=64), run_seed=0))
    prefixes = [r.prefix for r in backend.requests]
    assert prefixes == step_prefixes(text)[:2] and all(text.startswith(p) for p in prefixes)
    assert [store.row(solution, i)["prefix"] for i in range(2)] == prefixes
    # rollouts stored from a rebuilt prefix (no "prefix" recorded) are rolled out again
    stale = tmp_path / "stale.jsonl"
    stale.write_text(json.dumps({"solution": solution.key, "step": 0, "k": 2, "correct": [False, False], "cost": {}}) + "\n")
    again = FakeBackend(responder=lambda prompt, index: "So \\boxed{4}.")
    asyncio.run(run_rollouts(again, benchmark, [solution], RolloutStore(stale), k=2, params=SampleParams(max_tokens=64), run_seed=0))
    assert [r.prefix for r in again.requests] == prefixes
    assert RolloutStore(stale).row(solution, 0)["correct"] == [True, True]


def test_hard_estimation_is_math_shepherds_only(fake_run, tmp_path):
    args = ["verifier", "train", str(fake_run), "--kind", "prm", "--label", "pav", "--estimation", "hard", "-o", str(tmp_path / "v")]
    result = runner.invoke(app, args)
    assert isinstance(result.exception, ConfigError) and "Math-Shepherd" in str(result.exception)


def test_pav_prover_options(fake_run, tmp_path):
    """--prover policy is the Q-difference (K = 1: one rollout of the policy per prover rollout);
    --prover-k is PAV's alone, and the policy takes no K."""
    base = ["verifier", "train", str(fake_run), "--kind", "prm", "--rollouts", "2"]
    result = runner.invoke(app, base + ["--label", "pav", "--prover", "policy", "-o", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    head = RewardHead.load(tmp_path / "q")
    assert (head.prover, head.prover_k, head.description) == ("policy", 1, "prm (Q-difference, prover = policy)")
    rows = [json.loads(line) for line in (tmp_path / "q" / "rollouts.jsonl").read_text().splitlines()]
    assert {r["k"] for r in rows} == {2} and head.provenance.rollouts["prover_k"] == 1
    # every rollout is training cost: the provenance sums the rows' metered cost
    assert head.provenance.rollouts["generated_tokens"] == sum(r["cost"]["generated_tokens"] for r in rows) > 0
    for args, message in [(["--label", "math-shepherd", "--prover-k", "2"], "PAV's"),
                          (["--label", "pav", "--prover", "policy", "--prover-k", "3"], "the policy itself")]:
        result = runner.invoke(app, base + args + ["-o", str(tmp_path / "x")])
        assert isinstance(result.exception, ConfigError) and message in str(result.exception)


def test_training_refuses_held_out_problems():
    ids = [f"p{i}" for i in range(40)]
    held_out = next(i for i in ids if split_of(i) == "b")
    check_fitting_only([i for i in ids if split_of(i) == "a"])
    with pytest.raises(ConfigError, match="held-out half b"):
        check_fitting_only([i for i in ids if split_of(i) == "a"] + [held_out])


@pytest.mark.parametrize("kind,label,estimation", [
    ("orm", None, None), ("prm", "math-shepherd", None), ("prm", "math-shepherd", "hard"), ("prm", "pav", None)])
def test_training_reads_half_a_only_and_the_head_separates_held_out_solutions(fake_run, tmp_path, kind, label, estimation):
    args = ["verifier", "train", str(fake_run), "--kind", kind, "-o", str(tmp_path / "v"), "--rollouts", "2"]
    result = runner.invoke(app, args + (["--label", label] if label else []) + (["--estimation", estimation] if estimation else []))
    assert result.exit_code == 0, result.output
    head = RewardHead.load(tmp_path / "v")
    run = load_run(fake_run)
    half_a = sorted(r.problem_id for r in run.records if split_of(r.problem_id) == "a")
    assert head.provenance.fit_problems == half_a and head.provenance.trained_on_split == "a"
    assert re.fullmatch(r"[0-9a-f]{64}", head.provenance.data_sha256)
    if kind == "prm":
        rollouts = [json.loads(line) for line in (tmp_path / "v" / "rollouts.jsonl").read_text().splitlines()]
        assert rollouts and {r["solution"].split("#")[0] for r in rollouts} <= set(half_a)
        assert "Training cost, rollouts" in result.output
        assert (f"{estimation or 'soft'} estimation" if label != "pav" else "Step labels: Q^pi") in result.output
        if label == "pav":  # the default prover: Best-of-4 of the policy, 2 groups of 4 rollouts per prefix
            assert (head.prover, head.prover_k) == ("best-of-k", 4) and {r["k"] for r in rollouts} == {8}
        assert head.provenance.rollouts["hard_estimation"] == float(estimation == "hard")
    result = runner.invoke(app, ["verifier", "eval", str(tmp_path / "v"), str(fake_run)])
    assert result.exit_code == 0 and "Held out (half b)" in result.output, result.output
    # The fake hidden states carry whether the text so far states the gold answer: a head learns it.
    held_out = evaluate(head, [run], features_cache=tmp_path / "v" / "features.npz", resamples=50)
    assert held_out.problems == len(run.records) - len(half_a)
    assert held_out.auroc[f"{head.description}, last step"][0] > 0.95


def test_the_trained_verifier_is_metered_as_a_prefill_of_the_scored_text(fake_run, tmp_path):
    assert runner.invoke(app, ["verifier", "train", str(fake_run), "--kind", "orm", "-o", str(tmp_path / "orm")]).exit_code == 0
    verifier = TrainedVerifier(path=str(tmp_path / "orm"), backend_options={"answer_key": ANSWER_KEY})
    assert isinstance(verifier.backend, FakeHiddenBackend)
    problem = Problem(id="q", question="What is 3 + 3?", prompt=(ChatMessage(role="user", content="What is 3 + 3?"),), answer="6")
    ctx = SolveContext.for_problem(problem, backend=FakeBackend(), answers=build_benchmark(RunConfig(benchmark="arithmetic")),
                                   params=SampleParams(), seed=0, verifier=verifier)
    solutions = [["Think.", "So \\boxed{6}."], ["Think.", "So \\boxed{7}."]]
    scores = asyncio.run(ctx.verifier.score_steps(solutions))
    assert scores[0][-1] > 0.5 > scores[1][-1]
    read = verifier.backend.requests
    assert [r.prefix for r in read] == [solution_text(s)[0] for s in solutions]
    pooled = asyncio.run(FakeHiddenBackend(answer_key=ANSWER_KEY).pool(read))
    cost = ctx.verifier.meter.cost
    assert cost.verifier_calls == 2 and cost.verifier_tokens == sum(r.prompt_tokens for r in pooled) > 0
    assert cost.verifier_flops > 0 and ctx.cost.verifier_flops == cost.verifier_flops
    # A prefix scored before is looked up, not read again (a step's hidden state depends on the text up to it).
    assert asyncio.run(ctx.verifier.score_steps([["Think."]])) == [[scores[0][0]]]
    assert len(verifier.backend.requests) == 2 and ctx.verifier.meter.cost.verifier_calls == 2
    # An empty completion has no text to read: it scores 0 and costs nothing.
    assert asyncio.run(ctx.verifier.score(["", "  "])) == [0.0, 0.0]
    assert len(verifier.backend.requests) == 2 and ctx.verifier.meter.cost.verifier_calls == 2
    # With a feature cache, a second verifier reads nothing from its engine, and is metered the same.
    for _ in range(2):
        cached = TrainedVerifier(path=str(tmp_path / "orm"), backend_options={"answer_key": ANSWER_KEY}, features=str(tmp_path / "f.npz"))
        again = SolveContext.for_problem(problem, backend=FakeBackend(), answers=build_benchmark(RunConfig(benchmark="arithmetic")),
                                         params=SampleParams(), seed=0, verifier=cached)
        assert asyncio.run(again.verifier.score_steps(solutions)) == scores
        assert again.verifier.meter.cost.model_dump(exclude={"wall_s"}) == cost.model_dump(exclude={"wall_s"})
        asyncio.run(cached.close())
    assert cached.backend._backend.requests == []


def test_replayed_best_of_n_scored_by_the_trained_verifier_keeps_the_recorded_samples(fake_run, tmp_path):
    assert runner.invoke(app, ["verifier", "train", str(fake_run), "--kind", "orm", "-o", str(tmp_path / "orm")]).exit_code == 0
    recorded = RunConfig.model_validate_json((fake_run / "config.json").read_text())
    config = recorded.model_copy(update={"backend": "replay", "backend_options": {"run": str(fake_run)}, "verifier": "trained",
                                         "verifier_options": {"path": str(tmp_path / "orm"), "backend_options": {"answer_key": ANSWER_KEY}},
                                         "output": tmp_path / "rescored", "strategy_options": {"n": 4, "selection": "weighted-vote"}})
    rescored = load_run(asyncio.run(run_eval(config)).run_dir)
    original = {r.problem_id: r for r in load_run(fake_run).records}
    for record in rescored.records:
        assert [s.text for s in record.samples] == [s.text for s in original[record.problem_id].samples]
        assert record.cost["generated_tokens"] == original[record.problem_id].cost["generated_tokens"]
        # One prefill per distinct solution: an equal one is looked up.
        assert record.cost["verifier_calls"] == len({s.text for s in record.samples}) and all(s.score is not None for s in record.samples)
    assert np.mean([r.selections["weighted-vote"] for r in rescored.records]) > np.mean([r.selections["majority"] for r in rescored.records])
    # The head learned from half a's grades: its scores there are upper bounds, and the run says so.
    assert all(r.verifier_uses_gold == (split_of(r.problem_id) == "a") for r in rescored.records)
    assert rescored.verifier_uses_gold and rescored.uses_gold("weighted-vote") and not rescored.uses_gold("majority")
    # The held-out AUROC read from the scores the replay recorded equals the one computed from features.
    head = RewardHead.load(tmp_path / "orm")
    read = evaluate(head, [rescored], resamples=20)
    computed = evaluate(head, [load_run(fake_run)], resamples=20)
    assert read.auroc["orm (grade), last step"][0] == pytest.approx(computed.auroc["orm (grade), last step"][0])
    # (the live verifier reads an equal solution once, so it read no more than one prefill per solution)
    assert read.solutions == computed.solutions and 0 < read.prompt_tokens <= computed.prompt_tokens
    with pytest.raises(ConfigError, match="temperature"):
        asyncio.run(run_eval(config.model_copy(update={"sampling": config.sampling.model_copy(update={"temperature": 0.2}),
                                                       "output": tmp_path / "other"})))


def test_user_errors_are_one_line(tmp_path, fake_run):
    result = runner.invoke(app, ["verifier", "train", str(fake_run), "--kind", "xrm", "-o", str(tmp_path / "v")])
    assert result.exit_code != 0 and "--kind must be orm or prm" in result.output
    with pytest.raises(ConfigError, match="no trained verifier there"):
        TrainedVerifier(path=str(tmp_path / "missing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "head.json").write_text('{"version": 1, "kind": "orm"}')
    with pytest.raises(ConfigError, match=r"head.json: field"):
        RewardHead.load(tmp_path / "bad")
    with pytest.raises(ConfigError, match="not 'math-shepherd'"):
        from ttscale.verifier_training import train
        train([load_run(fake_run)], tmp_path / "v", kind="orm", label="math-shepherd")


@pytest.mark.engine
def test_vllm_hidden_states_at_step_ends_are_the_full_reads_rows_there():
    """The real pooling engine (SmolLM2, mode "hidden"): asking for the rows at the steps' ends gives
    the rows of a full read at the last token of each step, and the same rows as reading each step's
    prefix alone (a step's hidden state depends only on the text up to it: the verifier's memo)."""
    from ttscale.backends.vllm_pooling import VLLMPoolingBackend
    from ttscale.cost import CostMeter
    from ttscale.hidden_states import step_features, step_request

    prompt = (ChatMessage(role="user", content="What is 12 + 30?"),)
    steps = ["First, add the tens: 10 + 30 = 40.", "Then add the ones: 40 + 2 = 42.", "The answer is \\boxed{42}."]

    async def main():
        # float32, as conftest.ENGINE_TEST_DTYPE: in bfloat16 a step's prefix read alone rounds differently from the longer read
        backend = VLLMPoolingBackend("smollm2-135m", mode="hidden", max_model_len=1024, dtype="float32")
        try:
            meter = CostMeter(backend, role="verifier")
            [at_ends] = await step_features(meter, prompt, [steps])
            full_request = step_request(prompt, steps).model_copy(update={"positions": ()})
            [full] = await backend.pool([full_request])
            prefixes = [await step_features(CostMeter(backend), prompt, [steps[: i + 1]]) for i in range(len(steps))]
            ends = [len(backend._encode(backend.render(step_request(prompt, steps[: i + 1]).model_copy(update={"positions": ()})),
                                        full_request)) - 1 for i in range(len(steps))]
            return at_ends, np.asarray(full.data), prefixes, ends, meter.cost, backend.model
        finally:
            await backend.close()

    at_ends, full, prefixes, ends, cost, model = asyncio.run(main())
    assert at_ends.shape == (3, model.shape.d_model) and full.shape[0] == ends[-1] + 1
    assert np.allclose(at_ends, full[ends], atol=1e-4)
    for i, [rows] in enumerate(prefixes):
        assert np.allclose(rows[-1], at_ends[i], atol=1e-3)
    assert cost.verifier_calls == 1 and cost.verifier_tokens == full.shape[0] and cost.verifier_flops > 0


def test_labels_too_one_sided_to_cross_validate_are_a_clear_error():
    """One partly right label among 20: a problem fold would train on wrong examples only, which
    scikit-learn refuses with a traceback; ttscale says what is short instead."""
    from ttscale.verifier_training import fit_logistic

    x = np.random.default_rng(0).normal(size=(20, 3))
    soft = np.zeros(20)
    soft[0] = 0.5
    with pytest.raises(ConfigError, match="too few examples of one kind to cross-validate.*1 of 20 labels above 0"):
        fit_logistic(x, soft, [f"p{i}" for i in range(20)])
