"""Self-certainty (Kang et al. 2025) as the paper defines it, the Borda vote, and the top-k proxy
under its own name (issue 25, section 2)."""

from __future__ import annotations

import math
import random

import pytest

from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.jsonl import JsonlBenchmark
from ttscale.confidence import topk_certainty, trace_score
from ttscale.context import SolveContext
from ttscale.strategies.best_of_n import BORDA_POWER, BestOfN, borda_vote, borda_weights, confidence_score
from ttscale.types import Candidate, ChatMessage, Problem, SampleParams


def candidate(answer: str | None, score: float | None) -> Candidate:
    return Candidate(text=f"{answer}", answer=answer, num_tokens=1, finish_reason="stop", score=score)


# --- the Borda vote ---------------------------------------------------------------------------


def reference_borda(answers: list[str | None], confidences: list[float], power: float) -> str | None:
    """backprop07/Self-Certainty src/voting_from_list.py lines 37-72, transcribed (exact equality)."""
    sorted_indices = sorted(range(len(confidences)), key=lambda k: confidences[k], reverse=True)
    votes_per_output = [(len(confidences) - rank) ** power for rank in range(len(confidences))]
    votes_map = {sorted_indices[i]: votes_per_output[i] for i in range(len(sorted_indices))}
    votes = [0 for _ in range(len(confidences))]
    for i in range(len(confidences)):
        if answers[i] is None:
            continue
        found = False
        for j in range(i):
            if answers[j] is None:
                continue
            if answers[i] == answers[j]:
                votes[j] += votes_map[i]
                found = True
                break
        if not found:
            votes[i] += votes_map[i]
    return answers[votes.index(max(votes))]


def test_borda_weights_are_n_minus_rank_to_the_half():
    assert BORDA_POWER == 0.5
    # ranked by score: 0.9 (rank 0), 0.7 (1), 0.4 (2), 0.1 (3); N = 4
    assert borda_weights([0.4, 0.9, 0.1, 0.7]) == pytest.approx([math.sqrt(2), 2.0, 1.0, math.sqrt(3)])
    assert borda_weights([0.4, 0.9, 0.1, 0.7], power=1.0) == [2.0, 4.0, 1.0, 3.0]
    assert borda_weights([0.5, 0.5, None]) == pytest.approx([math.sqrt(3), math.sqrt(2), 1.0])  # ties: draw order; no score: last


def test_borda_vote_is_not_the_score_weighted_vote():
    # weighted vote: a = 10 beats b = 1 + 1; Borda: a = sqrt(4) = 2 loses to b = sqrt(3) + sqrt(2) = 3.15
    cands = [candidate("a", 10.0), candidate("b", 1.0), candidate("b", 1.0), candidate("c", 0.5)]
    assert borda_vote(cands, str.__eq__) == "b"
    assert borda_vote(cands, str.__eq__, power=8.0) == "a"  # 4^8 > 3^8 + 2^8


def test_borda_vote_equals_the_reference_loop():
    rng = random.Random(7)
    for _ in range(500):
        n = rng.randint(1, 9)
        answers = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
        scores = [float(rng.randint(0, 4)) for _ in range(n)]  # many ties
        power = rng.choice([0.5, 1.0, 2.0])
        ours = borda_vote([candidate(a, s) for a, s in zip(answers, scores)], str.__eq__, power)
        assert ours == reference_borda(answers, scores, power), (answers, scores, power)


# --- the top-k proxy, renamed ------------------------------------------------------------------


def test_the_proxy_is_topk_certainty_and_self_certainty_names_the_verifier():
    with pytest.raises(ValueError, match="topk-certainty.*--verifier self-certainty"):
        BestOfN(selection="weighted-vote", scorer="self-certainty", logprobs=10)
    assert BestOfN(selection="borda-vote", scorer="topk-certainty", logprobs=10).borda_power == 0.5
    assert BestOfN(selection="borda-vote").needs_verifier


def test_topk_certainty_ranks_samples_as_deepconf_mean_does():
    rng = random.Random(3)
    k = 10
    for _ in range(50):
        traces = [tuple(round(rng.uniform(0.5, 6.0), 4) for _ in range(rng.randint(1, 40))) for _ in range(6)]
        cands = [Candidate(text="x", answer="x", num_tokens=len(t), finish_reason="stop", token_confidences=t) for t in traces]
        proxy = [confidence_score(c, "topk-certainty", k=k) for c in cands]
        mean = [confidence_score(c, "deepconf-mean", k=k) for c in cands]
        assert proxy == pytest.approx([m - math.log(k) for m in mean])
        assert sorted(range(6), key=proxy.__getitem__) == sorted(range(6), key=mean.__getitem__)
        assert all(topk_certainty(t, k) == pytest.approx(trace_score(t, "mean") - math.log(k)) for t in traces)


async def test_best_of_n_borda_vote_by_a_verifier_free_score():
    problem = Problem(id="p", question="What is 2 + 3?", prompt=(ChatMessage(role="user", content="What is 2 + 3?"),))
    answers = JsonlBenchmark.__new__(JsonlBenchmark)  # answer tools only
    for seed in range(4):
        ctx = SolveContext.for_problem(problem, backend=FakeBackend(answer_key={"2 + 3": "5"}, accuracy=0.5), answers=answers,
                                       params=SampleParams(max_tokens=64), seed=seed)
        trace = await ctx.solve(BestOfN(n=8, selection="borda-vote", scorer="topk-certainty", logprobs=5), problem)
        assert trace.metadata["scorer"] == "topk-certainty" and trace.chosen_rule == "borda-vote"
        assert trace.answer == borda_vote(trace.candidates, answers.equivalent)
        assert trace.answer == reference_borda([c.answer for c in trace.candidates], [c.score for c in trace.candidates], 0.5)
