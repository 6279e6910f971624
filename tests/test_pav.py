"""PAV (Setlur et al. 2024): the prover is Best-of-K of the policy, not the policy (issue 25, item 1).

A step's reward is Q^pi + alpha·A^mu with A^mu = Q^mu(after) - Q^mu(before). The numbers are
worked by hand in each test's docstring."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from ttscale.build import build_benchmark
from ttscale.backends.fake import FakeBackend
from ttscale.config import RunConfig
from ttscale.errors import ConfigError
from ttscale.reward_heads import LinearHead, Provenance, RewardHead
from ttscale.steps import split_steps
from ttscale.types import ChatMessage, Problem, SampleParams
from ttscale.verifier_training import (
    PROVER_K, RolloutStore, Solution, best_of_k_value, pav_labels, prover_start_value, prover_values, run_rollouts,
)

T, F = True, False
ALPHA = 1.0


def reward(q_policy: float, advantage: float, alpha: float = ALPHA) -> float:
    """What a PAV head is trained to score a step: Q^pi + alpha·A^mu."""
    return q_policy + alpha * advantage


def order(scores) -> list[int]:
    """Indices best first (a beam search keeps the top of this)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def test_with_the_policy_as_prover_siblings_keep_qs_order():
    """mu = pi (K = 1, "Q-difference"): parent Q 0.5 (2 of 4 rollouts), children Q 0.25, 0.75, 0.5:
    Q + A = 0.25 + (0.25 - 0.5) = 0, 0.75 + 0.25 = 1, 0.5 + 0 = 0.5: the order Q gives."""
    parent = [T, T, F, F]
    children = [[T, F, F, F], [T, T, T, F], [T, T, F, F]]
    scores, values = [], []
    for child in children:
        q, a = pav_labels([parent, child], True, start_prover=0.5, k=1)  # steps: parent, child, a last step
        values.append(q[1])
        scores.append(reward(q[1], a[1]))
    assert values == [0.25, 0.75, 0.5]
    assert scores == [0.0, 1.0, 0.5]
    assert order(scores) == order(values) == [1, 2, 0]


@pytest.mark.parametrize("k", [2, PROVER_K, 8])
def test_with_exact_values_best_of_k_ranks_siblings_as_q_does(k):
    """Q^BoK = 1 - (1 - Q^pi)^K increases with Q^pi, and siblings share the parent's Q^mu, so
    Q^pi + alpha·(Q^BoK(child) - Q^BoK(parent)) is increasing in the child's Q^pi: the same order
    as Q, for any K and alpha >= 0. (Bo4 of Q 0.5 is 1 - 0.5^4 = 0.9375.)"""
    assert best_of_k_value(0.5, 4) == 0.9375 and best_of_k_value(0.3, 1) == pytest.approx(0.3)
    grid = np.linspace(0, 1, 21)
    assert np.all(np.diff([best_of_k_value(q, k) for q in grid]) > 0)  # strictly increasing
    children = [0.05, 0.6, 0.35, 0.9, 0.2]
    for parent, alpha in itertools.product([0.0, 0.3, 0.5, 1.0], [0.5, 1.0, 2.0]):
        pav = [reward(q, best_of_k_value(q, k) - best_of_k_value(parent, k), alpha) for q in children]
        assert order(pav) == order(children)


def test_best_of_k_ranks_children_of_different_parents_differently_from_q():
    """A beam search ranks all beams' children together. Beam A (Q 0.25) has child a (Q 0.75),
    beam B (Q 0) has child b (Q 0.5); K = 4, alpha = 1, exact values:
      Q:                a 0.75 > b 0.5
      Q-difference:     a 0.75 + 0.5 = 1.25 > b 0.5 + 0.5 = 1.0      (the policy as prover: as Q)
      PAV, Bo4 prover:  Q^mu(A) = 1 - 0.75^4 = 0.68359375, Q^mu(a) = 1 - 0.25^4 = 0.99609375,
                        a 0.75 + 0.3125 = 1.0625;
                        Q^mu(B) = 0, Q^mu(b) = 1 - 0.5^4 = 0.9375, b 0.5 + 0.9375 = 1.4375 > a."""
    parents, children = [0.25, 0.0], [0.75, 0.5]
    q_difference = [reward(c, c - p) for p, c in zip(parents, children)]
    pav = [reward(c, best_of_k_value(c, 4) - best_of_k_value(p, 4)) for p, c in zip(parents, children)]
    assert q_difference == [1.25, 1.0] and pav == [1.0625, 1.4375]
    assert order(children) == order(q_difference) == [0, 1]
    assert order(pav) == [1, 0]


def test_estimated_labels_rank_children_of_different_parents_differently_from_q():
    """The same through the labels training computes, from rollout grades (m = 2 groups of K = 2):
      solution 1: parent 1 of 4 correct (Q^pi 0.25; groups TF, FF: Q^mu 0.5), child 3 of 4 (Q^pi 0.75, Q^mu 1)
      solution 2: parent 0 of 4 (0, 0), child 2 of 4, one in each group (Q^pi 0.5, Q^mu 1)
    PAV: child 1 = 0.75 + (1 - 0.5) = 1.25 < child 2 = 0.5 + (1 - 0) = 1.5, where Q ranks child 1 first;
    with the policy as prover (K = 1) the advantages are both 0.5: 1.25 > 1.0, Q's order."""
    rollouts = [[[T, F, F, F], [T, T, T, F]], [[F, F, F, F], [T, F, T, F]]]
    best_of_2 = [pav_labels(r, True, start_prover=0.5, k=2) for r in rollouts]
    policy = [pav_labels(r, True, start_prover=0.5, k=1) for r in rollouts]
    q = [labels[0][1] for labels in best_of_2]
    assert q == [0.75, 0.5] and [labels[0][1] for labels in policy] == q  # Q^pi does not depend on K
    assert [prover_values(r, True, 2)[:2] for r in rollouts] == [[0.5, 1.0], [0.0, 1.0]]
    pav = [reward(labels[0][1], labels[1][1]) for labels in best_of_2]
    q_difference = [reward(labels[0][1], labels[1][1]) for labels in policy]
    assert pav == [1.25, 1.5] and q_difference == [1.25, 1.0]
    assert order(q) == order(q_difference) == [0, 1] and order(pav) == [1, 0]


def test_the_start_value_is_the_recorded_samples_pass_at_k():
    """Before the first step Q^mu is Best-of-K of the problem's recorded samples: 2 of 8 correct,
    K = 4: 1 - C(6,4)/C(8,4) = 1 - 15/70; with fewer samples than K, 1 - (1 - pass@1)^K; K = 1: pass@1."""
    assert prover_start_value(0.25, 8, 4) == pytest.approx(1 - 15 / 70)
    assert prover_start_value(0.5, 2, 4) == 0.9375
    assert prover_start_value(0.25, 8, 1) == pytest.approx(0.25)
    # the first step's advantage is measured from it
    assert pav_labels([[T, F, F, F]], False, start_prover=0.75, k=2)[1] == [0.5 - 0.75, 0.0 - 0.5]


def test_rollouts_are_drawn_in_groups_of_k_and_metered(tmp_path):
    """m = 3 prover rollouts of Best-of-2 from each prefix: one request of n = 6 policy rollouts,
    metered, its completions grouped in order. Step 1: rollouts 1 and 4 correct (Q^pi 2/6; groups
    (0,1) (2,3) (4,5): T F T, Q^mu 2/3); step 2: rollouts 2 and 3 (Q^pi 2/6 again; F T F, Q^mu 1/3)."""
    problem = Problem(id="p0", question="What is 2 + 2?", prompt=(ChatMessage(role="user", content="What is 2 + 2?"),), answer="4")
    right = {"Add them.": {1, 4}, "Two and two.": {2, 3}}

    def responder(prompt: str, index: int) -> str:
        last_step = prompt.split("assistant: ")[-1].rstrip().split("\n\n")[-1]
        return "So \\boxed{4}." if index in right[last_step] else "So \\boxed{5}."

    text = "Add them.\n\nTwo and two.\n\nThe answer is \\boxed{4}."
    solution = Solution(problem, 0, tuple(split_steps(text)), True, pass1=0.5, num_tokens=12, text=text, recorded_samples=4)
    store = RolloutStore(tmp_path / "rollouts.jsonl")
    backend = FakeBackend(responder=responder)
    m, k = 3, 2
    asyncio.run(run_rollouts(backend, build_benchmark(RunConfig(benchmark="arithmetic")), [solution], store, k=m * k,
                             params=SampleParams(max_tokens=64), run_seed=0))
    assert [r.params.n for r in backend.requests] == [6, 6]  # one request per prefix: m groups of k
    rows = [store.row(solution, i) for i in range(2)]
    assert [r["correct"] for r in rows] == [[F, T, F, F, T, F], [F, F, T, T, F, F]]
    assert all(r["k"] == 6 and r["cost"]["generated_tokens"] > 0 and r["cost"]["flops"] > 0 for r in rows)
    q, a = pav_labels([r["correct"] for r in rows], True, start_prover=prover_start_value(0.5, 4, k), k=k)
    assert q == pytest.approx([2 / 6, 2 / 6, 1.0])
    assert prover_values([r["correct"] for r in rows], True, k) == pytest.approx([2 / 3, 1 / 3, 1.0])
    start = 1 - 1 / 6  # pass@2 of 2 correct in 4: 1 - C(2,2)/C(4,2)
    assert a == pytest.approx([2 / 3 - start, 1 / 3 - 2 / 3, 1.0 - 1 / 3])
    with pytest.raises(ConfigError, match="groups of the prover's K = 4"):
        prover_values([r["correct"] for r in rows], True, 4)  # 6 rollouts are not groups of 4


def test_a_pav_head_names_its_prover():
    """Tables name the prover; a PAV head from before the prover option (none recorded) used the policy."""
    linear = LinearHead(link="identity", feature_mean=[0.0], feature_scale=[1.0], coef=[1.0], intercept=0.0, penalty=1.0)
    provenance = Provenance(runs=[], split_rule="", fit_problems=[], examples=0, positives=0, data_sha256="")
    head = RewardHead(kind="prm", label="pav", model="m", model_path="m", backend="fake", value=linear, advantage=linear,
                      provenance=provenance)
    assert head.description == "prm (Q-difference, prover = policy)"
    assert head.model_copy(update={"prover": "best-of-k", "prover_k": 4}).description == "prm (pav, prover = Best-of-4 of the policy)"
    assert head.model_copy(update={"label": "math-shepherd", "advantage": None}).description == "prm (math-shepherd)"
