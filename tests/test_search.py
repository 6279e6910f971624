"""PRM-guided search on the fake backend with scripted PRMs: exact survivors, resampling,
aggregation and costs."""

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from ttscale.backends.fake import FakeBackend, fake_tokens, render_prompt
from ttscale.config import RunConfig
from ttscale.context import AnswerView, SolveContext, VerifierView
from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.runner import run_eval
from ttscale.strategies.beam_search import BeamSearch, children_per_beam
from ttscale.strategies.best_of_n import BestOfN
from ttscale.strategies.dvts import DVTS
from ttscale.strategies.particle_filter import ParticleFilter, logit, resample, resampling_probabilities
from ttscale.types import ChatMessage, Problem, SampleParams
from ttscale.steps import aggregate
from ttscale.verifiers.prm import LLMJudgePRM, ScriptedPRM, yes_probability
from ttscale.benchmarks.jsonl import JsonlBenchmark

sys.path.insert(0, str(Path(__file__).parent))
from _step_policy import depth_of, step_responder  # noqa: E402

PROBLEM = Problem(id="p", question="What is 1 + 1?", prompt=(ChatMessage(role="user", content="What is 1 + 1?"),), answer="2")


def context(backend, verifier, problem=PROBLEM, seed=1, max_tokens=64):
    benchmark = JsonlBenchmark.__new__(JsonlBenchmark)  # answer tools only; no file needed
    meter = CostMeter(backend)
    vmeter = CostMeter(verifier.backend or backend, role="verifier")
    return SolveContext(
        backend=meter,
        answers=AnswerView(benchmark),
        params=SampleParams(max_tokens=max_tokens, seed=seed),
        rng=random.Random(seed),
        verifier=VerifierView(verifier, problem, vmeter),
    )


def test_children_per_beam_is_m_each_and_survivors_share_n():
    assert children_per_beam(2, 8) == [4, 4]
    assert children_per_beam(3, 8) == [3, 3, 2]
    assert children_per_beam(1, 8) == [8]


async def test_beam_search_keeps_the_top_n_over_m_beams_each_step():
    backend = FakeBackend(responder=step_responder(final_depth=2))
    # Step-0 children S0c0..S0c3; the PRM likes c1 best, then c3. Step-1 children of a kept
    # beam are S1c0..S1c1 (M = 2 per beam); the PRM prefers S1c1.
    prm = ScriptedPRM(rules={"S0c1": 0.9, "S0c3": 0.7, "S0c2": 0.5, "S0c0": 0.1, "S1c1": 0.8, "S1c0": 0.3, "S2": 0.6})
    ctx = context(backend, prm)
    trace = await BeamSearch(n=4, beam_width=2, max_steps=5).solve(PROBLEM.blind(), ctx)
    steps = trace.metadata["steps"]
    assert steps[0]["kept_scores"] == [0.9, 0.7]  # S0c1 and S0c3 survive step 0
    assert steps[1]["kept_scores"] == [0.8, 0.8]  # the S1c1 child of each survives step 1
    lineages = sorted(tuple(c.text.split("\n\n")[:2]) for c in trace.candidates)
    assert lineages == [("S0c1 work.", "S1c1 work."), ("S0c1 work.", "S1c1 work."),
                        ("S0c3 work.", "S1c1 work."), ("S0c3 work.", "S1c1 work.")]
    assert len(trace.candidates) == 4 and all(c.answer == "2" for c in trace.candidates)
    assert trace.selections["weighted-vote"] == "2"
    # Every generation request continued a kept beam: the prefixes tell the tree.
    prefixes = {r.prefix.split("\n\n")[0] for r in backend.requests if r.prefix}
    assert prefixes <= {"S0c1 work.", "S0c3 work."}


async def test_beam_search_lookahead_scores_rollouts_and_pays_for_them():
    backend = FakeBackend(responder=step_responder(final_depth=2))
    # S0c0 looks bad now but its lookahead step S1c0 looks great; with lookahead 1 it wins.
    prm = ScriptedPRM(rules={"S0c0": 0.2, "S0c1": 0.6, "S1c0": 0.95, "S1c1": 0.1}, default=0.5)
    plain = await BeamSearch(n=2, beam_width=2, max_steps=3).solve(PROBLEM.blind(), context(backend, prm))
    assert plain.metadata["steps"][0]["kept_scores"] == [0.6]
    backend2 = FakeBackend(responder=step_responder(final_depth=2))
    ctx = context(backend2, prm)
    looked = await BeamSearch(n=2, beam_width=2, max_steps=3, lookahead=1).solve(PROBLEM.blind(), ctx)
    assert looked.metadata["steps"][0]["kept_scores"] == [0.95]
    greedy = [r for r in backend2.requests if r.params.temperature == 0.0]
    assert greedy and ctx.backend.cost.generated_tokens > 0  # rollouts were generated and metered


async def test_filter_duplicates_drops_equal_texts():
    backend = FakeBackend(responder=lambda prompt, index: "same step.\n\nmore" if depth_of(prompt) == 0 else "\\boxed{2}")
    prm = ScriptedPRM()
    kept = await BeamSearch(n=4, beam_width=2, max_steps=3, filter_duplicates=True).solve(PROBLEM.blind(), context(backend, prm))
    assert kept.metadata["steps"][0]["kept_scores"] == [0.5]  # four identical children, one kept
    unfiltered = await BeamSearch(n=4, beam_width=2, max_steps=3).solve(PROBLEM.blind(), context(FakeBackend(responder=backend.responder), prm))
    assert unfiltered.metadata["steps"][0]["kept_scores"] == [0.5, 0.5]


async def test_dvts_follows_the_best_child_per_subtree_and_returns_n():
    backend = FakeBackend(responder=step_responder(final_depth=1, answer=lambda p, i: "2" if "S0c1" in p else "3"))
    prm = ScriptedPRM(rules={"S0c1": 0.9, "S0c0": 0.2, "S1c0": 0.7, "S1c1": 0.4})
    trace = await DVTS(n=4, beam_width=2, max_steps=4).solve(PROBLEM.blind(), context(backend, prm))
    assert len(trace.candidates) == 4
    assert trace.metadata["subtree"] == [0, 0, 1, 1]
    # Each subtree followed S0c1 and returns its last two children, both from S0c1.
    assert all(c.text.startswith("S0c1 work.\n\n") for c in trace.candidates)
    assert [c.score for c in trace.candidates] == [0.7, 0.4, 0.7, 0.4]
    assert trace.selections["weighted-vote"] == "2"


def test_resampling_probabilities_match_numpy_softmax_of_logits():
    scores = [0.1, 0.5, 0.9, 0.99, 0.3]
    weights = [math.log(s / (1 - s)) for s in scores]
    assert [logit(s) for s in scores] == pytest.approx(weights, abs=1e-12)
    for temperature in (0.25, 1.0, 3.0):
        reference = np.exp(np.array(weights) / temperature) / np.exp(np.array(weights) / temperature).sum()
        assert np.allclose(resampling_probabilities(weights, temperature), reference, atol=1e-9, rtol=0)
    assert logit(0.0) == pytest.approx(math.log(1e-6 / (1 - 1e-6)))  # clipped, finite


def test_systematic_resampling_gives_floor_or_ceil_counts_and_multinomial_converges():
    p = np.array([0.05, 0.25, 0.3, 0.4])
    rng = np.random.default_rng(0)
    for _ in range(50):
        counts = np.bincount(resample(p, 8, "systematic", rng), minlength=4)
        assert all(math.floor(8 * q) <= c <= math.ceil(8 * q) for q, c in zip(p, counts))
    draws = resample(p, 200_000, "multinomial", rng)
    assert np.allclose(np.bincount(draws, minlength=4) / 200_000, p, atol=0.005)


async def test_particle_filter_resamples_by_softmax_of_logit_prod_scores():
    backend = FakeBackend(responder=step_responder(final_depth=1, answer=lambda p, i: "2"))
    prm = ScriptedPRM(rules={"S0": 0.8, "S1": 0.5})
    trace = await ParticleFilter(n=4, temperature=0.5, max_steps=4).solve(PROBLEM.blind(), context(backend, prm))
    first = trace.metadata["steps"][0]
    assert first["probabilities"] == [0.25] * 4  # equal particles, equal weights
    # After two steps every particle has steps [0.8, 0.5]; prod = 0.4; all finished.
    assert all(c.score == pytest.approx(0.4) and c.step_scores == (0.8, 0.5) for c in trace.candidates)
    assert trace.selections["max-score"] == "2"


async def test_particle_filter_keeps_finished_particles_in_the_pool():
    # Step 1 gives particle A a finished answer scored 0.9 and B, C unfinished steps scored
    # 0.5; later steps (script entries D...) score 0.1. A stays in the pool with its weight.
    script = ["A done \\boxed{2}", "B work.\n\n", "C work.\n\n"] + ["D \\boxed{3}"] * 10
    prm = ScriptedPRM(rules={"done": 0.9, "work": 0.5, "D": 0.1})
    trace = await ParticleFilter(n=3, max_steps=3, resampling="systematic").solve(PROBLEM.blind(), context(FakeBackend(script=script), prm))
    first = trace.metadata["steps"][0]["probabilities"]
    assert first == pytest.approx([9 / 11, 1 / 11, 1 / 11], abs=1e-6)  # softmax(logit): e^logit(0.9) = 9
    finished_a = [c for c in trace.candidates if c.text.startswith("A done")]
    assert len(finished_a) >= 2  # systematic resampling gives A at least floor(3 * 9/11) copies
    assert all(c.score == pytest.approx(0.9) and c.step_scores == (0.9,) for c in finished_a)
    assert trace.selections["max-score"] == "2"


def test_aggregations():
    scores = [0.2, 0.9, 0.5]
    assert aggregate(scores, "last") == 0.5
    assert aggregate(scores, "min") == 0.2
    assert aggregate(scores, "prod") == pytest.approx(0.09)
    assert aggregate(scores, "mean") == pytest.approx(1.6 / 3)
    assert aggregate([], "prod") == 0.0


@pytest.mark.parametrize("how, expected", [("last", "5"), ("min", "7"), ("prod", "7"), ("mean", "7")])
async def test_configured_aggregation_is_the_one_used(how, expected):
    # Regression (search-and-learn users reported agg_strategy being ignored): answer 5's
    # steps score [0.2, 0.9], answer 7's [0.8, 0.7]. Only "last" prefers 5.
    script = ["shaky start.\n\nstrong finish \\boxed{5}", "solid start.\n\nsolid finish \\boxed{7}"]
    backend = FakeBackend(script=script)
    prm = ScriptedPRM(rules={"shaky": 0.2, "strong": 0.9, "solid start": 0.8, "solid finish": 0.7})
    trace = await BestOfN(n=2, selection="max-score", aggregation=how).solve(PROBLEM.blind(), context(backend, prm))
    assert trace.answer == expected


def test_yes_probability_pools_variants_and_normalises():
    assert yes_probability({" Yes": math.log(0.3), "yes": math.log(0.1), "No": math.log(0.1), "The": math.log(0.5)}) == pytest.approx(0.8)
    assert yes_probability({"Maybe": 0.0}) == 0.5


async def test_beam_search_with_llm_judge_counts_every_token_exactly():
    # Regression (search-and-learn's beam search reported 0 tokens): policy and judge both run
    # on the fake backend; every prompt, cached prefix and generated token is accounted for.
    policy = FakeBackend(responder=step_responder(final_depth=1), num_params=1000, block_size=10_000)
    judge_says = lambda prompt, index: "Yes"
    judge_backend = FakeBackend(responder=judge_says, num_params=10, block_size=10_000)
    judge = LLMJudgePRM()
    judge._backend = judge_backend  # its own engine, so the two meters' bills can be told apart
    ctx = context(policy, judge)
    trace = await BeamSearch(n=2, beam_width=2, max_steps=3).solve(PROBLEM.blind(), ctx)

    generated = sum(len(fake_tokens(c.text)) for c in trace.candidates)  # each beam's own tokens
    prompt = sum(len(fake_tokens(render_prompt(r))) for r in policy.requests)
    cost = ctx.backend.cost
    assert cost.generated_tokens == generated > 0
    assert cost.prompt_tokens == prompt and cost.cached_prompt_tokens == 0
    assert cost.flops == 2 * 1000 * (prompt + generated)

    judge_prompts = sum(len(fake_tokens(render_prompt(r))) for r in judge_backend.requests)
    vcost = ctx.verifier.meter.cost
    assert vcost.verifier_calls == len(judge_backend.requests) == 4  # 2 first steps + 2 finals, each judged once
    assert vcost.verifier_tokens == judge_prompts + 4  # one "Yes" token generated per judgement
    assert vcost.verifier_flops == vcost.flops == 2 * 10 * (judge_prompts + 4)
    assert [c.score for c in trace.candidates] == [1.0, 1.0]


async def test_search_strategies_need_a_verifier_and_say_which(tmp_path, write_problems):
    path = write_problems({"id": "a", "question": "1+1?", "answer": "2"}, name="p.jsonl")
    config = RunConfig(benchmark=str(path), backend="fake", model="fake", strategy="beam-search", output=tmp_path)
    with pytest.raises(ConfigError, match="needs a verifier.*llm-judge-prm"):
        await run_eval(config)


async def test_runner_books_verifier_cost_and_labels_the_oracle(tmp_path, write_problems):
    path = write_problems({"id": "a", "question": "1+1?", "answer": "2"}, name="p.jsonl")
    for verifier in ("llm-judge-prm", "oracle-orm"):
        config = RunConfig(
            benchmark=str(path), backend="fake", model="fake", strategy="particle-filter",
            strategy_options={"n": 2, "max_steps": 2}, verifier=verifier, output=tmp_path / verifier,
        )
        result = await run_eval(config, backend=FakeBackend(answer_key={"1+1?": "2"}, accuracy=1.0))
        [record] = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
        assert record["verifier"] == verifier
        assert record["verifier_uses_gold"] is (verifier == "oracle-orm")
        if verifier == "llm-judge-prm":
            assert record["cost"]["verifier_tokens"] > 0 and record["cost"]["verifier_flops"] > 0
        else:  # the oracle runs no model
            assert record["cost"]["verifier_tokens"] == 0
            assert all(c["score"] == 1.0 for c in record["candidates"])


def test_snell_sweep_beam_widths_are_expressible():
    assert BeamSearch(n=16, beam_width="sqrt").beam_width == 4
    assert DVTS(n=64, beam_width="sqrt").beam_width == 8
    assert BeamSearch(n=16, beam_width="4", lookahead=3).beam_width == 4
    with pytest.raises(ValueError, match="square n"):
        BeamSearch(n=8, beam_width="sqrt")
    with pytest.raises(ValueError, match="multiple of beam_width"):
        DVTS(n=8, beam_width=3)


# --- Where search-and-learn differs: each difference is a named option (exact choices) -------------


def test_search_and_learn_defaults_are_followed_or_named():
    beam, dvts = BeamSearch(), DVTS()
    assert beam.max_steps == dvts.max_steps == 40  # search-and-learn's num_iterations
    assert beam.sort_completed is False and beam.stop_at_boxed is False  # its beam_search.py
    assert dvts.stop_at_boxed is True  # its DVTS prunes a subtree at "boxed{"
    assert beam.max_tokens_per == dvts.max_tokens_per == "solution"  # kept: ttscale's own default
    assert beam.score_rollouts is True  # kept: Snell et al.'s lookahead (and search-and-learn's DVTS)


def early_and_late_finishers(prompt: str, index: int) -> str:
    """Step 0: children 0 and 1 answer 3 at once (EOS), 2 and 3 go on; step 1 answers 2."""
    if depth_of(prompt) == 0:
        return f"S0c{index} so \\boxed{{3}}" if index < 2 else f"S0c{index} work.\n\nmore"
    return f"S1c{index} so \\boxed{{2}}"


@pytest.mark.parametrize("sort_completed", [False, True])
async def test_sort_completed_picks_the_best_finished_beams_else_the_first_to_finish(sort_completed):
    # N = 4, M = 2: step 0 finishes S0c0 and S0c1 (scored 0.3) and keeps S0c2, S0c3; step 1
    # gives each two children, all finished, scored 0.9. Six beams finished; four are kept.
    prm = ScriptedPRM(rules={"S0c0": 0.3, "S0c1": 0.3, "S1": 0.9})
    search = BeamSearch(n=4, beam_width=2, max_steps=5, sort_completed=sort_completed)
    trace = await search.solve(PROBLEM.blind(), context(FakeBackend(responder=early_and_late_finishers), prm))
    texts = [c.text for c in trace.candidates]
    if sort_completed:  # the four best: step 1's children, in the order they finished
        assert texts == ["S0c2 work.\n\nS1c0 so \\boxed{2}", "S0c2 work.\n\nS1c1 so \\boxed{2}",
                         "S0c3 work.\n\nS1c0 so \\boxed{2}", "S0c3 work.\n\nS1c1 so \\boxed{2}"]
        assert trace.selections["majority"] == "2"
    else:  # search-and-learn: the first four to finish, step 0's two included
        assert texts == ["S0c0 so \\boxed{3}", "S0c1 so \\boxed{3}",
                         "S0c2 work.\n\nS1c0 so \\boxed{2}", "S0c2 work.\n\nS1c1 so \\boxed{2}"]
        assert trace.selections["majority"] == "3"  # a 2-2 tie goes to the answer seen first
    assert trace.metadata["finished_beams"] == 6
    assert trace.selections["weighted-vote"] == "2"  # 0.9 + 0.9 > 0.3 + 0.3 either way


@pytest.mark.parametrize("score_rollouts", [True, False])
async def test_score_rollouts_decides_whether_lookahead_steers_but_rollouts_are_paid_either_way(score_rollouts):
    # S0c0 looks bad (0.2) but its rollout S1c0 looks great (0.95); S0c1 looks fair (0.6).
    prm = ScriptedPRM(rules={"S0c0": 0.2, "S0c1": 0.6, "S1c0": 0.95, "S1c1": 0.1}, default=0.5)
    backend = FakeBackend(responder=step_responder(final_depth=2))
    ctx = context(backend, prm)
    search = BeamSearch(n=2, beam_width=2, max_steps=3, lookahead=1, score_rollouts=score_rollouts)
    trace = await search.solve(PROBLEM.blind(), ctx)
    [kept] = trace.metadata["steps"][0]["kept_scores"]
    # Scored with the rollout, S0c0 wins on its rollout's last step; without, S0c1 wins on its own.
    assert kept == (0.95 if score_rollouts else 0.6)
    assert all(c.text.startswith("S0c0 work." if score_rollouts else "S0c1 work.") for c in trace.candidates)
    rollouts = [r for r in backend.requests if r.params.temperature == 0.0]
    # One greedy step per unfinished child at steps 0 and 1 (the last step runs to the end).
    assert [r.prefix.split("\n\n")[0] for r in rollouts] == ["S0c0 work.", "S0c1 work.", *["S0c0 work." if score_rollouts else "S0c1 work."] * 2]
    # Paid for either way: two children per step (2 x 3, 2 x 3, then 2 x 7 tokens to the end),
    # plus the rollouts (2 x 3 at step 0, 2 x 7 at step 1).
    assert ctx.backend.cost.generated_tokens == (6 + 6 + 14) + (6 + 14)


def boxed_then_more(prompt: str, index: int) -> str:
    """Step 0 states the answer and goes on to a new step; step 1 ends the solution (EOS)."""
    return f"S0c{index} so \\boxed{{2}}.\n\nmore" if depth_of(prompt) == 0 else "Done."


@pytest.mark.parametrize("strategy, stop_at_boxed", [(BeamSearch, False), (BeamSearch, True), (DVTS, False), (DVTS, True)])
async def test_stop_at_boxed_ends_a_beam_at_its_answer_step_or_lets_it_run_to_eos(strategy, stop_at_boxed):
    backend = FakeBackend(responder=boxed_then_more)
    search = strategy(n=2, beam_width=2, max_steps=5, stop_at_boxed=stop_at_boxed)
    trace = await search.solve(PROBLEM.blind(), context(backend, ScriptedPRM()))
    if stop_at_boxed:
        assert [c.text for c in trace.candidates] == ["S0c0 so \\boxed{2}.\n\n", "S0c1 so \\boxed{2}.\n\n"]
        assert len(backend.requests) == 1  # one expansion, then every beam had ended
    else:  # the best child (the first of equal scores) goes on to EOS
        assert [c.text for c in trace.candidates] == ["S0c0 so \\boxed{2}.\n\nDone.", "S0c0 so \\boxed{2}.\n\nDone."]
        assert len(backend.requests) == 2
    assert all(c.answer == "2" for c in trace.candidates)


def three_steps_then_answer(prompt: str, index: int) -> str:
    """Steps 0-2 are 'a b c.' (4 fake tokens each, plus the separator); step 3 answers."""
    return "a b c.\n\nmore" if depth_of(prompt) < 3 else "\\boxed{2}"


@pytest.mark.parametrize("strategy", [BeamSearch, DVTS])
@pytest.mark.parametrize("max_tokens_per", ["solution", "step"])
async def test_max_tokens_bounds_the_whole_solution_or_each_step(strategy, max_tokens_per):
    backend = FakeBackend(responder=three_steps_then_answer)
    search = strategy(n=1, beam_width=1, max_steps=10, max_tokens_per=max_tokens_per)
    trace = await search.solve(PROBLEM.blind(), context(backend, ScriptedPRM(), max_tokens=6))
    [candidate] = trace.candidates
    if max_tokens_per == "solution":
        # Step 0 takes 4 of the 6 tokens; step 1 may take the 2 left and is cut there.
        assert [r.params.max_tokens for r in backend.requests] == [6, 2]
        assert candidate.text == "a b c.\n\na b" and candidate.finish_reason == "length"
        assert candidate.num_tokens == 6
    else:  # search-and-learn: every step may take the full 6; the solution runs to its answer
        assert [r.params.max_tokens for r in backend.requests] == [6, 6, 6, 6]
        assert candidate.text == "a b c.\n\na b c.\n\na b c.\n\n\\boxed{2}" and candidate.finish_reason == "stop"
        assert candidate.num_tokens == 3 * 4 + 5  # \\boxed{2} is 5 fake tokens


async def test_forty_steps_by_default_the_last_one_to_the_end():
    # A policy that never ends a step by itself: the search stops after max_steps (40), whose
    # last step is generated without the step stop.
    backend = FakeBackend(responder=lambda prompt, index: "step.\n\nmore")
    trace = await DVTS(n=2, beam_width=2).solve(PROBLEM.blind(), context(backend, ScriptedPRM(), max_tokens=10_000))
    assert len(backend.requests) == 40
    assert [r.params.stop for r in backend.requests[:-1]] == [("\n\n",)] * 39 and backend.requests[-1].params.stop == ()
    assert trace.candidates[0].text == "step.\n\n" * 40 + "more"
