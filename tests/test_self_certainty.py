"""Self-certainty (Kang et al. 2025) as the paper defines it, the Borda vote, and the top-k proxy
under its own name (issue 25, section 2)."""

from __future__ import annotations

import asyncio
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ttscale import registry
from ttscale.backends.fake import FakeBackend, FakeModel
from ttscale.benchmarks.jsonl import JsonlBenchmark
from ttscale.confidence import token_confidence, topk_certainty, trace_score
from ttscale.context import SolveContext
from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.models import prepare_model
from ttscale.self_certainty import LMHead, position_self_certainty, sample_self_certainties
from ttscale.selection import BORDA_POWER, borda_weights
from ttscale.strategies.best_of_n import BestOfN, borda_vote, confidence_score
from ttscale.types import Candidate, ChatMessage, PoolRequest, PoolResult, Problem, SampleParams
from ttscale.verifiers.prm import OracleORM
from ttscale.verifiers.self_certainty import SelfCertaintyVerifier


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
    assert borda_weights([0.4, 0.9, 0.1, 0.7])[0] == pytest.approx([math.sqrt(2), 2.0, 1.0, math.sqrt(3)])
    assert borda_weights([0.4, 0.9, 0.1, 0.7], power=1.0)[0].tolist() == [2.0, 4.0, 1.0, 3.0]
    assert borda_weights([0.5, 0.5, np.nan])[0] == pytest.approx([math.sqrt(3), math.sqrt(2), 1.0])  # ties: draw order; no score: last


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


# --- the full-vocabulary score (Kang et al. eq. 3; src/confidence_list.py) ---------------------

V = 49_152  # SmolLM2's vocabulary
A = (0.5509, 0.0499, 4.85e-10)  # one token, nine tokens, each of the other 49,142: flat top-10, a vanishing tail
B = (0.8, 0.01005, 2.23e-6)  # a peaked top, a fatter tail


def three_level_head() -> LMHead:
    """W (V x 3): token 0 reads h[0], tokens 1-9 read h[1], the rest h[2]; so h = log weights."""
    weight = np.zeros((V, 3), dtype=np.float32)
    weight[0, 0], weight[1:10, 1], weight[10:, 2] = 1.0, 1.0, 1.0
    return LMHead(weight)


def hidden(levels: tuple[float, float, float]) -> np.ndarray:
    return np.log(np.asarray(levels))


def reference_confidence(logits: torch.Tensor) -> float:
    """confidence_list.py lines 187-194 and 12-25, for one sequence (attention mask all ones)."""
    logprob_sum = F.log_softmax(logits, dim=-1).sum(dim=-1).to(torch.float32)
    mask = torch.ones(logprob_sum.shape[-1])
    V_tensor = torch.tensor(logits.shape[-1], dtype=logprob_sum.dtype)
    conf = -1 / logits.shape[-1] * logprob_sum - torch.log(V_tensor)
    return float((conf * mask).sum(dim=-1) / mask.sum(dim=-1))


def test_full_vocabulary_and_top_k_order_the_pair_oppositely():
    head = three_level_head()
    full = {name: head.self_certainty(hidden(levels)[None, :]) for name, levels in (("A", A), ("B", B))}
    assert full["A"] == pytest.approx(10.64, abs=0.005) and full["B"] == pytest.approx(2.21, abs=0.005)
    for name, levels in (("A", A), ("B", B)):
        logits = torch.from_numpy(hidden(levels)[None, :].astype(np.float32) @ head.weight.T).double()  # the reference's autocast aside
        assert full[name] == pytest.approx(reference_confidence(logits), rel=1e-5)
    proxy = {}
    for name, levels in (("A", A), ("B", B)):
        logprobs = np.log(np.asarray([levels[0]] + [levels[1]] * 9 + [levels[2]] * (V - 10)))
        logprobs -= np.logaddexp.reduce(logprobs)
        top = {str(j): float(logprobs[j]) for j in np.argsort(logprobs)[::-1][:20]}  # the engine's top-20
        proxy[name] = topk_certainty([token_confidence(top, 10)], 10)
    assert proxy["A"] == pytest.approx(0.455, abs=0.0005) and proxy["B"] == pytest.approx(1.86, abs=0.0005)
    assert full["A"] > full["B"] and proxy["A"] < proxy["B"]


def test_position_self_certainty_by_hand():
    # p = (1/2, 1/4, 1/8, 1/8): -1/4 * log(1/512) - log 4 = (9/4 - 2) log 2
    assert position_self_certainty(np.log([[0.5, 0.25, 0.125, 0.125]])) == pytest.approx([0.25 * math.log(2)])
    assert position_self_certainty(np.log([[0.5, 0.25, 0.125, 0.125]]) + 7.0) == pytest.approx([0.25 * math.log(2)])
    assert position_self_certainty(np.zeros((2, 4))) == pytest.approx([0.0, 0.0])  # uniform: no certainty


class HandHiddenStates:
    """A hidden-state backend by hand: PROMPT rows of the prompt, then a row per word of the prefix."""

    PROMPT = 3

    def __init__(self, rows: dict[str, list[list[float]]]):
        self.model = FakeModel("hand", 1_000_000)
        self.rows = rows
        self.requests: list[PoolRequest] = []

    async def pool(self, requests):
        self.requests.extend(requests)
        results = []
        for r in requests:
            assert not r.positions and len(self.rows[r.prefix]) == self.PROMPT + len(r.prefix.split())
            results.append(PoolResult(data=tuple(map(tuple, self.rows[r.prefix])), prompt_tokens=len(self.rows[r.prefix])))
        return results

    def prompt_rows(self, request: PoolRequest) -> int:
        return self.PROMPT

    async def close(self):
        pass


HALF = list(np.log([0.5, 0.25, 0.125, 0.125]))  # (1/4) log 2
FLAT = [0.0, 0.0, 0.0, 0.0]  # 0
JUNK = [50.0, 0.0, 0.0, 0.0]  # about 50: must never be read


def hand_backend() -> HandHiddenStates:
    return HandHiddenStates({
        # prompt rows, then one per word; the rows read are the last prompt row and every word's but the last
        "two words": [JUNK, JUNK, HALF, FLAT, JUNK],
        "one": [JUNK, FLAT, HALF, JUNK],
        "step one\n\nstep two": [JUNK, JUNK, HALF, HALF, FLAT, HALF, JUNK],
    })


async def test_sample_self_certainty_reads_the_rows_that_predicted_each_token_and_is_metered():
    backend = hand_backend()
    meter = CostMeter(backend, role="verifier")
    head = LMHead(np.eye(4, dtype=np.float32))
    scores = await sample_self_certainties(meter, backend, head, "Q", ["two words", "one", ""])
    assert scores == pytest.approx([math.log(2) / 8, math.log(2) / 4, 0.0])
    assert [r.prefix for r in backend.requests] == ["two words", "one"]  # an empty sample is not read
    cost = meter.cost
    assert cost.verifier_calls == 2 and cost.verifier_tokens == 5 + 4 and cost.generated_tokens == 0
    assert cost.verifier_flops == pytest.approx(2 * 1_000_000 * 9) and cost.flops == cost.verifier_flops


async def test_the_self_certainty_verifier(tmp_path):
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"tie_word_embeddings": True, "vocab_size": 4}))
    save_file({"model.embed_tokens.weight": torch.eye(4)}, str(model_dir / "model.safetensors"))
    with pytest.raises(ConfigError, match="-V model="):  # Registry.create: the factory's ValueError, as one line
        registry.verifiers.create("self-certainty", benchmark=None)
    verifier = registry.verifiers.create("self-certainty", model=str(model_dir), benchmark=None)
    assert isinstance(verifier, SelfCertaintyVerifier) and not verifier.uses_gold
    assert np.array_equal(verifier._head.weight, np.eye(4))
    verifier._backend = hand_backend()  # the engine's edge, by hand
    problem = Problem(id="p", question="q", prompt=(ChatMessage(role="user", content="q"),))
    meter = CostMeter(verifier.backend, role="verifier")
    assert await verifier.score(problem, ["two words", "one"], meter) == pytest.approx([math.log(2) / 8, math.log(2) / 4])
    # step scores: the text so far, steps joined by a blank line, for every step
    steps = await verifier.score_steps(problem, [["step one", "step two"]], meter)
    assert steps == [pytest.approx([3 * math.log(2) / 16] * 2)]


def test_the_lm_head_is_the_tied_embedding_or_lm_head_and_unscaled(tmp_path):
    tied, untied, scaled = (tmp_path / name for name in ("tied", "untied", "scaled"))
    for directory, config, tensors in (
        (tied, {"tie_word_embeddings": True}, {"model.embed_tokens.weight": torch.ones(5, 2), "lm_head.weight": torch.zeros(5, 2)}),
        (untied, {"tie_word_embeddings": False}, {"model.embed_tokens.weight": torch.ones(5, 2), "lm_head.weight": torch.zeros(5, 2)}),
        (scaled, {"tie_word_embeddings": True, "logit_scale": 0.5}, {"model.embed_tokens.weight": torch.ones(5, 2)}),
    ):
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps(config))
        save_file(tensors, str(directory / "model.safetensors"))
    assert LMHead.load(tied).weight.sum() == 10 and LMHead.load(untied).weight.sum() == 0
    with pytest.raises(ConfigError, match="logit_scale"):
        LMHead.load(scaled)
    with pytest.raises(ConfigError, match="do not fit"):
        LMHead.load(tied).self_certainty(np.zeros((1, 3)))


class TextLength:
    """A verifier that scores a whole text by its length, and refuses to score steps."""

    name, uses_gold, backend = "text-length", False, None

    def __init__(self):
        self.read: list[str] = []

    async def score(self, problem, solutions, meter):
        self.read.extend(solutions)
        return [float(len(s)) for s in solutions]

    async def score_steps(self, problem, steps, meter):
        raise AssertionError("borda-vote reads whole samples")

    async def close(self):
        pass


async def test_borda_vote_ranks_the_verifiers_score_of_each_exact_sample():
    problem = Problem(id="p", question="What is 2 + 3?", prompt=(ChatMessage(role="user", content="What is 2 + 3?"),))
    answers = JsonlBenchmark.__new__(JsonlBenchmark)
    verifier = TextLength()
    ctx = SolveContext.for_problem(problem, backend=FakeBackend(answer_key={"2 + 3": "5"}, accuracy=0.5), answers=answers,
                                   params=SampleParams(max_tokens=64), seed=1, verifier=verifier)
    trace = await ctx.solve(BestOfN(n=6, selection="borda-vote"), problem)
    assert verifier.read == [c.text for c in trace.candidates]  # the exact texts, not steps joined again
    assert [c.score for c in trace.candidates] == [float(len(c.text)) for c in trace.candidates]
    assert all(c.step_scores is None for c in trace.candidates) and trace.metadata["scorer"] == "verifier"
    assert trace.answer == reference_borda([c.answer for c in trace.candidates], [c.score for c in trace.candidates], 0.5)
    with pytest.raises(ValueError, match="aggregation 'min' does not apply"):
        BestOfN(selection="borda-vote", aggregation="min")


async def test_borda_vote_refuses_a_gold_reading_verifier():
    problem = Problem(id="p", question="What is 2 + 3?", prompt=(ChatMessage(role="user", content="What is 2 + 3?"),), answer="5")
    benchmark = JsonlBenchmark.__new__(JsonlBenchmark)
    ctx = SolveContext.for_problem(problem, backend=FakeBackend(answer_key={"2 + 3": "5"}), answers=benchmark,
                                   params=SampleParams(max_tokens=64), seed=0, verifier=OracleORM(benchmark=benchmark))
    with pytest.raises(ConfigError, match="borda-vote.*gold"):
        await ctx.solve(BestOfN(n=4, selection="borda-vote"), problem)


@pytest.mark.engine
def test_self_certainty_on_the_real_pooling_engine_equals_the_reference_on_transformers_logits():
    """SmolLM2 on vLLM's pooling runner (float32): the verifier's score of each sample equals the
    reference formula on transformers' logits of the same token ids, at the rows that predicted
    the sample's tokens; the pooled hidden states are after the final norm (else they would not
    match); each sample is one metered prefill."""
    from transformers import AutoModelForCausalLM

    problem = Problem(id="p", question="What is 12 + 30?", prompt=(ChatMessage(role="user", content="What is 12 + 30?"),))
    texts = ["First, 12 + 30 = 42.\n\nThe answer is \\boxed{42}.", "The answer is \\boxed{41}"]

    async def main():
        verifier = SelfCertaintyVerifier(model="smollm2-135m", backend_options={"max_model_len": 1024, "dtype": "float32"})
        try:
            meter = CostMeter(verifier.backend, role="verifier")
            scores = await verifier.score(problem, texts, meter)
            reads = []
            for text in texts:
                request = PoolRequest(prompt=problem.prompt, prefix=text)
                alone = verifier.backend._prompt_ids(request.model_copy(update={"prefix": ""}))
                reads.append((verifier.backend._prompt_ids(request), verifier.backend.prompt_rows(request), len(alone)))
            return scores, reads, meter.cost, prepare_model("smollm2-135m").path
        finally:
            await verifier.close()

    scores, reads, cost, path = asyncio.run(main())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for score, (ids, start, prompt_alone) in zip(scores, reads):
        assert start == prompt_alone and start < len(ids)  # no BPE merge across the chat template's "\n"
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, start - 1:len(ids) - 1].double()
        assert score == pytest.approx(reference_confidence(logits), rel=1e-3)
    assert cost.verifier_calls == 2 and cost.verifier_tokens == sum(len(ids) for ids, _, _ in reads) and cost.verifier_flops > 0
