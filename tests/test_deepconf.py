"""DeepConf on the fake backend: confidence functions against naive forms, the fake's logprobs,
the online mode against a replay of the full traces' recorded confidences (answer, stopped
traces and where, exact token counts), offline voting rules, and verifier-free best-of-N scorers."""

import json
import math
import random

import numpy as np
import pytest

from ttscale.backends.fake import FakeBackend, fake_tokens
from ttscale.benchmarks.jsonl import JsonlBenchmark
from ttscale.confidence import (
    CONFIDENCE_DECIMALS,
    DEFAULT_TAIL,
    DEFAULT_WINDOW,
    GroupConfidenceStop,
    bottom_group_confidence,
    group_confidences,
    lowest_group_confidence,
    online_replay,
    online_threshold,
    stop_position,
    tail_confidence,
    token_confidence,
    token_confidences,
    topk_certainty,
    trace_score,
    vote_share,
)
from ttscale.analysis.adaptive import WINDOWS, default_families
from ttscale.analysis.runs import load_run
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.protocols import needs_verifier, streams
from ttscale.runner import run_eval
from ttscale.selection import answer_classes, chosen_positions, filtered_positions, filtered_vote
from ttscale.strategies.best_of_n import BestOfN
from ttscale.strategies.deepconf import DeepConf
from ttscale.types import ChatMessage, GenRequest, Problem, SampleParams

PROBLEM = Problem(id="p", question="What is 2 + 3?", prompt=(ChatMessage(role="user", content="What is 2 + 3?"),))
K = 5


def backend(accuracy=0.6):
    return FakeBackend(answer_key={"2 + 3": "5"}, accuracy=accuracy)


def context(fake, seed):
    answers = JsonlBenchmark.__new__(JsonlBenchmark)  # answer tools only
    return SolveContext.for_problem(PROBLEM, backend=fake, answers=answers, params=SampleParams(max_tokens=64), seed=seed)


def naive_groups(confs, window):
    if not confs:
        return []
    if len(confs) < window:
        return [sum(confs) / len(confs)]
    return [sum(confs[i : i + window]) / window for i in range(len(confs) - window + 1)]


def random_confidences(rng, length):
    return [round(rng.uniform(0.5, 4.0), CONFIDENCE_DECIMALS) for _ in range(length)]


# --- confidence functions ---------------------------------------------------------------------


def test_group_confidences_match_the_sliding_mean():
    rng = random.Random(0)
    for length in (0, 1, 3, 4, 5, 17, 40):
        confs = random_confidences(rng, length)
        for window in (1, 4, 16):
            assert group_confidences(confs, window) == pytest.approx(naive_groups(confs, window), abs=1e-12)
            groups = naive_groups(confs, window)
            assert lowest_group_confidence(confs, window) == pytest.approx(min(groups) if groups else 0.0, abs=1e-12)
            bottom = sorted(groups)[: max(1, int(len(groups) * 0.1))] if groups else [0.0]
            assert bottom_group_confidence(confs, window) == pytest.approx(sum(bottom) / len(bottom), abs=1e-12)
            tail = confs[-window:]
            assert tail_confidence(confs, window) == pytest.approx(sum(tail) / len(tail) if tail else 0.0, abs=1e-12)


def test_trace_scores_by_name_and_bottom_ten_takes_the_lowest_tenth():
    confs = [3.0] * 20 + [1.0] * 4 + [3.0] * 20  # 41 windows of 4; the 4 lowest hold a 1.0
    assert trace_score(confs, "lowest-group", 4) == 1.0
    groups = sorted(naive_groups(confs, 4))
    assert trace_score(confs, "bottom-10", 4) == pytest.approx(np.mean(groups[:4]))
    assert trace_score(confs, "tail", 4) == 3.0
    # the tail length is its own knob, as the reference's tail_tokens (deepconf/utils.py:104)
    tailed = [3.0] * 20 + [1.0] * 2
    assert trace_score(tailed, "tail", 4, tail=2) == 1.0 and trace_score(tailed, "tail", 4, tail=4) == 2.0
    assert trace_score(tailed, "tail", 2, tail=4) == 2.0  # the window does not move it
    assert trace_score(tailed, "tail") == tail_confidence(tailed, DEFAULT_TAIL)
    assert trace_score(confs, "mean", 4) == pytest.approx(np.mean(confs))
    with pytest.raises(ValueError, match="lowest-group"):
        trace_score(confs, "median", 4)


def test_streamed_stop_is_bit_identical_to_the_replayed_stop_position():
    rng = random.Random(1)
    for _ in range(300):
        confs = random_confidences(rng, rng.randrange(0, 30))
        window = rng.choice([1, 3, 4, 8])
        groups = group_confidences(confs, window)
        # thresholds right at a group's value test the equality edge exactly
        threshold = float(rng.choice(list(groups))) if groups.size and rng.random() < 0.5 else rng.uniform(1, 3.5)
        expected = stop_position(confs, window, threshold)
        stop = GroupConfidenceStop(k=1, window=window, threshold=threshold)
        fired = next((i + 1 for i, c in enumerate(confs) if stop({"t": -c})), None)  # C_i = -logprob with k=1
        assert fired == expected
        if expected is not None:
            assert expected >= window and groups[expected - window] < threshold
            assert all(g >= threshold for g in groups[: expected - window])


def test_online_threshold_is_the_percentile_that_lets_eta_percent_pass():
    lowest = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert online_threshold(lowest, 10) == pytest.approx(np.percentile(lowest, 90))
    assert online_threshold(lowest, 90) == pytest.approx(np.percentile(lowest, 10))
    assert sum(x >= online_threshold(lowest, 90) for x in lowest) == 4


async def test_with_one_warmup_trace_eta_has_no_effect_and_the_sweep_needs_two(tmp_path, write_problems):
    assert online_threshold([2.5], 10) == online_threshold([2.5], 90) == 2.5  # the percentile of one value
    assert online_threshold([1.0, 3.0], 10) != online_threshold([1.0, 3.0], 90)
    data = write_problems({"id": "p1", "question": "What is 2 + 3?", "answer": "5"}, name="tiny.jsonl")
    config = RunConfig(benchmark=str(data), backend="fake", model="fake", output=tmp_path / "runs", strategy="best-of-n",
                       strategy_options={"n": 8, "logprobs": K})
    families = default_families(load_run((await run_eval(config, backend=backend())).run_dir))
    online = [m for name, methods in families.items() if name.startswith("DeepConf online") for m in methods]
    assert online and min(m.warmup for m in online) >= 2
    assert {m.window for m in online} == set(WINDOWS) and DEFAULT_WINDOW in WINDOWS  # the window is swept
    assert {m.consensus for m in online} >= {DeepConf().consensus} == {0.95}  # tau: the paper's by default


def test_vote_share_is_weighted_and_skips_non_voters():
    assert vote_share([0, 1, 0, -1], [1.0, 2.0, 1.0, 9.0]) == pytest.approx(0.5)
    assert vote_share([-1, -1], [1.0, 1.0]) == 0.0


# --- the fake's logprobs ------------------------------------------------------------------------


async def test_fake_logprobs_are_seeded_varied_and_leave_texts_alone():
    fake = backend()
    request = GenRequest(prompt=PROBLEM.prompt, params=SampleParams(n=40, seed=3, logprobs=K))
    [a] = await fake.generate([request])
    [b] = await fake.generate([request])
    [plain] = await fake.generate([request.model_copy(update={"params": request.params.model_copy(update={"logprobs": None})})])
    assert a.completions == b.completions
    assert [c.text for c in a.completions] == [c.text for c in plain.completions]
    assert all(c.top_logprobs is None and c.cumulative_logprob is None for c in plain.completions)
    right, wrong = [], []
    for c in a.completions:
        assert len(c.top_logprobs) == c.num_tokens
        assert all(len(position) == K and all(lp < 0 for lp in position.values()) for position in c.top_logprobs)
        sampled = sum(position[t.group()] for position, t in zip(c.top_logprobs, fake_tokens(c.text)))
        assert c.cumulative_logprob == pytest.approx(sampled)
        confs = token_confidences(c, K)
        assert len(set(confs)) > 1  # tokens differ in confidence
        (right if c.text.endswith("\\boxed{5}.") else wrong).append(sum(confs) / len(confs))
    assert right and wrong and np.mean(right) > np.mean(wrong)  # correct answers are surer on average


async def test_fake_sample_i_of_seed_s_is_the_first_sample_of_seed_s_plus_i():
    fake = backend()
    [whole] = await fake.generate([GenRequest(prompt=PROBLEM.prompt, params=SampleParams(n=6, seed=10, logprobs=K))])
    for i in range(6):
        [single] = await fake.generate([GenRequest(prompt=PROBLEM.prompt, params=SampleParams(n=1, seed=10 + i, logprobs=K))])
        assert single.completions[0] == whole.completions[i]


async def test_fake_generate_until_cuts_where_the_replay_stops_and_counts_those_tokens():
    fake = backend()
    for seed in range(30):
        params = SampleParams(n=1, seed=seed, logprobs=K)
        [full] = await fake.generate([GenRequest(prompt=PROBLEM.prompt, params=params)])
        confs = token_confidences(full.completions[0], K)
        threshold = float(np.median(group_confidences(confs, 4)))
        cut = await fake.generate_until(GenRequest(prompt=PROBLEM.prompt, params=params),
                                        GroupConfidenceStop(k=K, window=4, threshold=threshold))
        [c] = cut.completions
        position = stop_position(confs, 4, threshold)
        if position is None:
            assert c == full.completions[0]
        else:
            assert c.finish_reason == "abort" and c.num_tokens == position
            assert full.completions[0].text.startswith(c.text)
            assert c.top_logprobs == full.completions[0].top_logprobs[:position]
            kept = [t.group() for t in fake_tokens(c.text)]
            assert len(kept) == position
            assert c.cumulative_logprob == pytest.approx(sum(p[t] for p, t in zip(c.top_logprobs, kept)))


# --- online equals the replay -------------------------------------------------------------------


@pytest.mark.parametrize("eta,batch,window", [(10, 1, 4), (90, 1, 4), (10, 3, 4), (90, 2, 16), (50, 1, 6)])
async def test_online_equals_a_replay_of_the_full_traces(eta, batch, window):
    stopped_somewhere = consensus_somewhere = 0
    for seed in range(200, 212):
        strategy = DeepConf(n=12, warmup=4, eta=eta, window=window, batch=batch, logprobs=K, consensus=0.9)
        fake = backend()
        trace = await context(fake, seed).solve(strategy, PROBLEM)
        # the recorded best-of-N run with the same seed: full traces, their confidences
        full = await context(backend(), seed).solve(BestOfN(n=12, logprobs=K), PROBLEM)
        classes = answer_classes([c.answer for c in full.candidates], str.__eq__).tolist()
        replay = online_replay([c.token_confidences for c in full.candidates], classes, n=12, warmup=4, eta=eta,
                               window=window, consensus=0.9, batch=batch)
        meta = trace.metadata
        assert meta["threshold"] == replay.threshold
        assert meta["samples_drawn"] == replay.drawn == len(trace.candidates)
        assert tuple(meta["stopped_at"]) == replay.stopped_at
        assert tuple(meta["votes"]) == replay.votes
        assert meta["stop_reason"] == replay.stop_reason
        assert trace.answer == (full.candidates[replay.winner].answer if replay.winner >= 0 else None)
        # exact token counts: a stopped trace's tokens up to its stop, the others' in full
        assert tuple(c.num_tokens for c in trace.candidates) == replay.tokens
        assert trace.cost.generated_tokens == sum(replay.tokens)
        for j, (online, recorded) in enumerate(zip(trace.candidates, full.candidates)):
            if replay.stopped_at[j] is None:
                assert online.model_dump(exclude={"score"}) == recorded.model_dump(exclude={"score"})
            else:
                assert online.finish_reason == "abort" and online.answer is None
                assert recorded.text.startswith(online.text)
                assert online.token_confidences == recorded.token_confidences[: replay.stopped_at[j]]
        # requests: the warm-up as one request of n=4 with the run's seed, then one per later trace
        assert [(r.params.n, r.params.seed) for r in fake.requests] == [(4, seed)] + [(1, seed + j) for j in range(4, replay.drawn)]
        stopped_somewhere += any(s is not None for s in replay.stopped_at)
        consensus_somewhere += replay.stop_reason == "consensus"
    if window <= 6:
        assert stopped_somewhere  # the workload does stop traces, so the equality is not vacuous
    assert consensus_somewhere or eta == 10


async def test_online_refuses_a_backend_that_cannot_stream():
    class NoStream:
        def __init__(self):
            self.inner = backend()
            self.model = self.inner.model

        async def generate(self, requests):
            return await self.inner.generate(requests)

        async def close(self):
            pass

    assert not streams(NoStream()) and streams(backend())
    ctx = context(NoStream(), 1)
    assert not ctx.backend.streams
    with pytest.raises(ConfigError, match="--backend vllm"):
        await ctx.solve(DeepConf(n=4, warmup=2), PROBLEM)
    with pytest.raises(ConfigError, match="cannot stream"):
        await CostMeter(NoStream()).generate_until(GenRequest(prompt="x", params=SampleParams(logprobs=1)), lambda _: False)
    # offline needs no streaming
    trace = await ctx.solve(DeepConf(n=4, mode="offline"), PROBLEM)
    assert len(trace.candidates) == 4


def test_deepconf_options_are_validated():
    with pytest.raises(ValueError, match="warmup"):
        DeepConf(n=4, warmup=8)
    with pytest.raises(ValueError, match="filtered-vote"):
        DeepConf(mode="offline", selection="deepconf")
    assert DeepConf().chosen_rule == "deepconf" and DeepConf(mode="offline").chosen_rule == "filtered-vote"
    assert DeepConf().tail == DeepConf().window == 16 and DeepConf(window=8).tail == 16  # set apart


# --- offline ------------------------------------------------------------------------------------


def naive_filtered(answers, scores, keep):
    """Fu et al.'s released offline code: traces with answers, the (100-keep) percentile, then a
    confidence-weighted vote among those kept (ties: first seen here, as selection.py)."""
    valid = [(a, s) for a, s in zip(answers, scores) if a is not None]
    cut = np.percentile([s for _, s in valid], 100 - keep)
    totals = {}
    for a, s in valid:
        if s >= cut:
            totals[a] = totals.get(a, 0.0) + s
    best = max(totals.values())
    return next(a for a in totals if totals[a] == best)


def test_filtered_positions_match_the_papers_filter_then_weighted_vote():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        answers = [None if rng.random() < 0.15 else str(rng.integers(0, 4)) for _ in range(n)]
        if all(a is None for a in answers):
            continue
        scores = np.round(rng.uniform(1, 4, size=n), 2)
        classes = answer_classes(answers, str.__eq__)
        for keep in (10, 50, 90):
            [position] = filtered_positions(classes, scores, np.arange(n)[None, :], keep)
            assert answers[position] == naive_filtered(answers, scores, keep)
    # many subsets at once agree with one at a time
    classes = answer_classes(["1", "2", "1", "3", None, "2"], str.__eq__)
    scores = np.asarray([1.0, 3.0, 1.5, 2.0, 9.0, 2.5])
    subsets = np.asarray([[0, 1, 2], [2, 3, 4], [5, 4, 3], [4, 4, 4]])
    together = filtered_positions(classes, scores, subsets, 50)
    alone = [filtered_positions(classes, scores, row[None, :], 50)[0] for row in subsets]
    assert together.tolist() == alone and together[-1] == -1


async def test_offline_selections_equal_the_rules_on_recorded_best_of_n_samples():
    for seed in range(5):
        trace = await context(backend(), seed).solve(DeepConf(n=16, mode="offline", eta=10, window=4, logprobs=K), PROBLEM)
        full = await context(backend(), seed).solve(BestOfN(n=16, logprobs=K), PROBLEM)
        assert [c.text for c in trace.candidates] == [c.text for c in full.candidates]
        scores = np.asarray([lowest_group_confidence(c.token_confidences, 4) for c in full.candidates])
        classes = answer_classes([c.answer for c in full.candidates], str.__eq__)
        whole = np.arange(16)[None, :]
        [filtered] = filtered_positions(classes, scores, whole, 10)
        [weighted] = chosen_positions("weighted-vote", classes, scores, whole)
        assert trace.selections["filtered-vote"] == full.candidates[filtered].answer == trace.answer
        assert trace.selections["confidence-vote"] == full.candidates[weighted].answer
        assert trace.selections["majority"] == full.selections["majority"]
        assert [c.score for c in trace.candidates] == scores.tolist()
        assert trace.metadata["scorer"] == "deepconf-lowest-group"
        assert filtered_vote(full.candidates, scores, str.__eq__, 10) == trace.answer


async def test_offline_tail_score_reads_its_own_length_not_the_window():
    trace = await context(backend(), 2).solve(DeepConf(n=6, mode="offline", score="tail", window=4, tail=3, logprobs=K), PROBLEM)
    assert [c.score for c in trace.candidates] == [tail_confidence(c.token_confidences, 3) for c in trace.candidates]
    assert trace.metadata["tail"] == 3 and trace.metadata["window"] == 4


# --- verifier-free best-of-N scorers ------------------------------------------------------------


@pytest.mark.parametrize("scorer", ["mean-logprob", "topk-certainty", "deepconf-lowest-group", "deepconf-tail"])
async def test_best_of_n_scores_samples_without_a_verifier(scorer):
    strategy = BestOfN(n=8, selection="weighted-vote", scorer=scorer, logprobs=K, window=4, tail=3)
    assert not strategy.needs_verifier and not needs_verifier(strategy)
    trace = await context(backend(), 3).solve(strategy, PROBLEM)
    assert trace.metadata["scorer"] == scorer
    for c in trace.candidates:
        expected = {
            "mean-logprob": math.exp(c.mean_logprob),
            "topk-certainty": topk_certainty(c.token_confidences, K),
            "deepconf-lowest-group": lowest_group_confidence(c.token_confidences, 4),
            "deepconf-tail": tail_confidence(c.token_confidences, 3),  # its tail, not its window
        }[scorer]
        assert c.score == pytest.approx(expected) and c.score > 0
    scores = np.asarray([c.score for c in trace.candidates])
    classes = answer_classes([c.answer for c in trace.candidates], str.__eq__)
    whole = np.arange(8)[None, :]
    assert trace.answer == trace.candidates[chosen_positions("weighted-vote", classes, scores, whole)[0]].answer
    assert trace.selections["max-score"] == trace.candidates[int(np.argmax(scores))].answer


def test_scorers_need_logprobs_and_the_verifier_scorer_needs_a_verifier():
    with pytest.raises(ValueError, match="logprobs"):
        BestOfN(selection="weighted-vote", scorer="topk-certainty")
    assert BestOfN(selection="weighted-vote").needs_verifier
    assert not BestOfN(selection="majority", scorer="mean-logprob", logprobs=1).needs_verifier


def test_topk_certainty_is_non_negative_for_any_top_k():
    rng = np.random.default_rng(1)
    for _ in range(100):
        probs = np.sort(rng.dirichlet(np.ones(50)))[::-1]
        k = int(rng.integers(1, 20))
        c = token_confidence({str(i): float(np.log(p)) for i, p in enumerate(probs)}, k)
        assert c - math.log(k) >= -1e-12


async def test_eval_runs_weighted_vote_by_topk_certainty_with_no_verifier(tmp_path, write_problems):
    data = write_problems({"id": "p1", "question": "What is 2 + 3?", "answer": "5"},
                          {"id": "p2", "question": "What is 4 + 4?", "answer": "8"}, name="tiny.jsonl")
    config = RunConfig(benchmark=str(data), backend="fake", model="fake", output=tmp_path / "runs",
                       strategy_options={"n": 4, "selection": "weighted-vote", "scorer": "topk-certainty", "logprobs": K})
    result = await run_eval(config, backend=FakeBackend(answer_key={"2 + 3": "5", "4 + 4": "8"}, accuracy=0.7))
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["trace_metadata"]["scorer"] == "topk-certainty"
        assert all(c["score"] is not None and c["score"] >= 0 for c in record["candidates"])


# --- the real engine ----------------------------------------------------------------------------


class Recording:
    """A backend proxy that keeps what the engine returned for each streamed request (in the
    order they finish: a batch streams at once), with the request's seed."""

    def __init__(self, inner):
        self.inner, self.model, self.streamed = inner, inner.model, []

    async def generate(self, requests):
        return await self.inner.generate(requests)

    async def generate_until(self, request, stop):
        generation = await self.inner.generate_until(request, stop)
        self.streamed.append((request.params.seed, generation))
        return generation

    def prompt_token_ids(self, request):
        return self.inner.prompt_token_ids(request)

    async def close(self):
        pass


@pytest.mark.engine
@pytest.mark.asyncio(loop_scope="session")
async def test_deepconf_online_on_the_engine_stops_traces_and_counts_their_tokens(vllm_backend):
    answers = JsonlBenchmark.__new__(JsonlBenchmark)
    # eta=10 (DeepConf-low) sets a high threshold, so streamed traces do get stopped
    strategy = DeepConf(n=7, warmup=3, eta=10, window=8, batch=4, logprobs=5, consensus=1.0)
    stopped_total = 0
    for i, question in enumerate(["What is 3 + 4?", "What is 12 - 5?"]):
        problem = Problem(id=f"q{i}", question=question, prompt=(ChatMessage(role="user", content=question),))
        engine = Recording(vllm_backend)
        ctx = SolveContext.for_problem(problem, backend=engine, answers=answers,
                                       params=SampleParams(max_tokens=48, temperature=0.8), seed=1234 + i)
        trace = await ctx.solve(strategy, problem)
        meta = trace.metadata
        later = trace.candidates[3:]
        assert len(engine.streamed) == len(later) == meta["samples_drawn"] - 3
        # the meter counted every token the engine generated, stopped traces' included
        assert trace.cost.generated_tokens == sum(c.num_tokens for c in trace.candidates)
        streamed = [generation for _, generation in sorted(engine.streamed, key=lambda pair: pair[0])]  # trace order
        assert [seed for seed, _ in sorted(engine.streamed, key=lambda pair: pair[0])] == [1234 + i + j for j in range(3, 3 + len(later))]
        for candidate, generation, stop in zip(later, streamed, meta["stopped_at"][3:]):
            [returned] = generation.completions
            assert candidate.num_tokens == returned.num_tokens
            confs = candidate.token_confidences
            # where it stopped is where a replay of its own recorded confidences stops it
            assert stop_position(confs, 8, meta["threshold"]) == stop
            if stop is None:
                assert candidate.finish_reason in ("stop", "length")
                assert len(confs) == returned.num_tokens
            else:
                stopped_total += 1
                assert candidate.finish_reason == "abort" and candidate.answer is None
                assert len(confs) == stop <= returned.num_tokens
        assert trace.cost.calls == 1 + len(engine.streamed)  # the warm-up request, then one per streamed trace
        print(f"{problem.id}: threshold {meta['threshold']:.3f}, stopped at {meta['stopped_at'][3:]}, "
              f"tokens returned {[g.completions[0].num_tokens for g in streamed]}, votes {meta['votes']}")
    assert stopped_total >= 1, "no streamed trace was stopped: the abort path went untested"


@pytest.mark.parametrize("mode", ["online", "offline"])
async def test_eval_runs_deepconf_and_records_what_it_paid(tmp_path, mode, write_problems):
    data = write_problems({"id": "p1", "question": "What is 2 + 3?", "answer": "5"},
                          {"id": "p2", "question": "What is 4 + 4?", "answer": "8"}, name="tiny.jsonl")
    config = RunConfig(benchmark=str(data), backend="fake", model="fake", output=tmp_path / "runs", strategy="deepconf",
                       strategy_options={"n": 8, "mode": mode, "warmup": 4, "window": 4, "logprobs": K})
    result = await run_eval(config, backend=FakeBackend(answer_key={"2 + 3": "5", "4 + 4": "8"}, accuracy=0.7))
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert record["chosen_rule"] == ("deepconf" if mode == "online" else "filtered-vote")
        assert record["cost"]["generated_tokens"] == sum(c["num_tokens"] for c in record["candidates"])
        if mode == "online":
            stopped = record["trace_metadata"]["stopped_at"]
            assert len(stopped) == len(record["candidates"])
            for candidate, stop in zip(record["candidates"], stopped):
                assert (candidate["finish_reason"] == "abort") == (stop is not None)
