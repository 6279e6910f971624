"""adaptive-consistency on the fake backend: an adaptive run is a prefix of best-of-N, it stops
where `stop_index` replays it, and it pays exactly for the samples it drew."""

import json

import pytest

from ttscale.backends.fake import FakeBackend, fake_tokens, render_prompt
from ttscale.benchmarks.jsonl import JsonlBenchmark
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.registry import strategies
from ttscale.runner import run_eval
from ttscale.selection import answer_classes, majority_vote
from ttscale.stopping import StoppingRule, stop_index
from ttscale.strategies.adaptive_consistency import AdaptiveConsistency
from ttscale.strategies.best_of_n import BestOfN
from ttscale.types import ChatMessage, GenRequest, Problem, SampleParams

PROBLEM = Problem(id="p", question="What is 2 + 3?", prompt=(ChatMessage(role="user", content="What is 2 + 3?"),))
N = 16


def answers():
    return JsonlBenchmark.__new__(JsonlBenchmark)  # answer tools only; no file needed


def backend(accuracy=0.7):
    return FakeBackend(answer_key={"2 + 3": "5"}, accuracy=accuracy)


def context(fake, seed):
    return SolveContext.for_problem(PROBLEM, backend=fake, answers=answers(), params=SampleParams(max_tokens=64), seed=seed)


async def best_of_n(seed, accuracy=0.7, logprobs=None):
    ctx = context(backend(accuracy), seed)
    return await ctx.solve(BestOfN(n=N, logprobs=logprobs), PROBLEM)


RULES = [
    StoppingRule(rule="beta", threshold=0.8),
    StoppingRule(rule="beta", threshold=0.95),
    StoppingRule(rule="dirichlet", threshold=0.9),
    StoppingRule(rule="esc", window=4),
    StoppingRule(rule="esc"),
    StoppingRule(rule="beta", threshold=0.8, unanswered="class"),
    StoppingRule(rule="beta", threshold=0.95, give_up=4),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.rule}-{r.threshold}-{r.window}-{r.give_up}-{r.unanswered}")
@pytest.mark.parametrize("batch", [1, 3, None])
async def test_adaptive_run_is_a_prefix_of_best_of_n_and_stops_where_the_replay_says(rule, batch):
    stops = set()
    for seed in range(100, 108):
        full = await best_of_n(seed, logprobs=5)
        fake = backend()
        ctx = context(fake, seed)
        strategy = AdaptiveConsistency(n=N, batch=batch, stopping=rule, logprobs=5)
        trace = await ctx.solve(strategy, PROBLEM)
        k = len(trace.candidates)
        # the same samples: texts, tokens, answers, confidences, in order
        assert [c.model_dump() for c in trace.candidates] == [c.model_dump() for c in full.candidates[:k]]
        # and the replay on the recorded best-of-N answers draws exactly as many
        classes = answer_classes([c.answer for c in full.candidates], str.__eq__).tolist()
        assert k == stop_index(classes, rule, strategy.step)
        assert trace.metadata["samples_drawn"] == k
        position = rule.answer_position(classes[:k])
        assert trace.answer == (full.candidates[position].answer if position >= 0 else None)
        assert trace.selections["majority"] == majority_vote(full.candidates[:k], str.__eq__)
        reason = trace.metadata["stop_reason"]
        assert reason == (rule.stop_reason(classes[:k]) or "budget")
        assert trace.metadata["requests"] == len(fake.requests) == -(-k // strategy.step)
        stops.add(k)
        # cost: exactly the drawn samples' tokens, and the prompt once per request
        prompt_tokens = len(fake_tokens(render_prompt(fake.requests[0])))
        assert trace.cost.generated_tokens == sum(c.num_tokens for c in full.candidates[:k])
        assert trace.cost.calls == len(fake.requests)
        assert trace.cost.prompt_tokens == prompt_tokens * len(fake.requests)
        # later batches re-send the prompt: the engine's cache serves its full blocks, and the
        # cache-independent count treats all of it as cached
        full_blocks = prompt_tokens // fake.block_size * fake.block_size
        assert trace.cost.cached_prompt_tokens == full_blocks * (len(fake.requests) - 1)
        assert trace.cost.structural_cached_prompt_tokens == prompt_tokens * (len(fake.requests) - 1)
    assert len(stops) > 1 or rule.rule == "esc"  # the workload makes the rule stop at different points


async def test_adaptive_requests_carry_best_of_n_seeds():
    fake = backend()
    ctx = context(fake, 500)
    trace = await ctx.solve(AdaptiveConsistency(n=8, batch=3, stopping=StoppingRule(rule="beta", threshold=0.999)), PROBLEM)
    assert len(trace.candidates) == 8 and trace.metadata["stop_reason"] == "budget"
    assert [(r.params.seed, r.params.n) for r in fake.requests] == [(500, 3), (503, 3), (506, 2)]


async def test_sure_problems_stop_early_and_hard_ones_give_up():
    easy = await context(backend(accuracy=1.0), 7).solve(
        AdaptiveConsistency(n=N, stopping=StoppingRule(rule="beta", threshold=0.95)), PROBLEM)
    # one answer only: P = 1 - 2^-(c+1) >= .95 first at c = 4
    assert len(easy.candidates) == 4 and easy.answer == "5" and easy.metadata["stop_reason"] == "settled"
    assert easy.metadata["posterior"] == pytest.approx(1 - 2**-5)
    # a fake with no answer key answers a random digit: find a seed whose first 3 disagree
    rule = StoppingRule(rule="beta", threshold=0.95, give_up=3)
    for seed in range(50):
        fake = FakeBackend()
        trace = await context(fake, seed).solve(AdaptiveConsistency(n=N, stopping=rule), PROBLEM)
        if trace.metadata["stop_reason"] == "give-up":
            assert len(trace.candidates) == 3
            assert len({c.answer for c in trace.candidates}) == 3
            break
    else:
        pytest.fail("no seed in 50 gave three different digits first")


def scripted(*answers):
    """A fake whose samples state these answers in order (None: a sample stating no answer)."""
    return FakeBackend(script=[f"So \\boxed{{{a}}}." if a is not None else "I cannot tell." for a in answers])


async def test_esc_answers_its_unanimous_window_not_the_majority():
    # the example: [b,b,c, b,b,d, a,a,a], w = 3 -> ESC a (Yiwei98/ESC early_stop_gsm8k.py:142-148)
    fake = scripted(2, 2, 3, 2, 2, 4, 1, 1, 1, 2, 2, 2)
    trace = await context(fake, 1).solve(AdaptiveConsistency(n=12, stopping=StoppingRule(rule="esc", window=3)), PROBLEM)
    assert [c.answer for c in trace.candidates] == ["2", "2", "3", "2", "2", "4", "1", "1", "1"]
    assert trace.metadata["stop_reason"] == "settled" and trace.metadata["requests"] == 3
    assert trace.answer == "1" and trace.selections["majority"] == "2"


@pytest.mark.parametrize("unanswered,posterior,answer", [("skip", 0.875, "5"), ("class", 0.65625, None)])
async def test_an_unanswered_sample_is_a_class_when_asked(unanswered, posterior, answer):
    # [a, a, None x3]: ttscale's default skips them (0.875); the references count None (0.656)
    rule = StoppingRule(rule="beta", threshold=0.95, unanswered=unanswered)
    trace = await context(scripted(5, 5, None, None, None), 1).solve(AdaptiveConsistency(n=5, stopping=rule), PROBLEM)
    assert [c.answer for c in trace.candidates] == ["5", "5", None, None, None]
    assert trace.metadata["posterior"] == pytest.approx(posterior)
    assert trace.answer == answer and trace.selections["majority"] == "5"


def test_rule_fields_may_be_given_flat_as_with_dash_s():
    strategy = strategies.create("adaptive-consistency", n=12, rule="esc", window=4)
    assert strategy.stopping == StoppingRule(rule="esc", window=4)
    assert strategy.step == 4  # ESC checks at its window by default
    nested = AdaptiveConsistency(stopping={"rule": "dirichlet", "threshold": 0.9}, give_up=4)
    assert nested.stopping == StoppingRule(rule="dirichlet", threshold=0.9, give_up=4)
    assert AdaptiveConsistency().step == 1
    assert strategies.create("adaptive-consistency", rule="esc").step == 5  # ESC's reference window
    assert strategies.create("adaptive-consistency", unanswered="class").stopping.unanswered == "class"


async def test_eval_records_adaptive_runs(tmp_path, write_problems):
    data = write_problems({"id": "p1", "question": "What is 2 + 3?", "answer": "5"},
                          {"id": "p2", "question": "What is 4 + 4?", "answer": "8"}, name="tiny.jsonl")
    config = RunConfig(benchmark=str(data), backend="fake", model="fake", output=tmp_path / "runs",
                       strategy="adaptive-consistency", strategy_options={"n": 8, "rule": "beta", "threshold": 0.8})
    fake = FakeBackend(answer_key={"2 + 3": "5", "4 + 4": "8"}, accuracy=0.7)
    result = await run_eval(config, backend=fake)
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        drawn = record["trace_metadata"]["samples_drawn"]
        assert len(record["candidates"]) == drawn <= 8
        assert record["cost"]["generated_tokens"] == sum(c["num_tokens"] for c in record["candidates"])


async def test_unseeded_params_still_run():
    fake = backend()
    ctx = SolveContext(backend=context(fake, 1).backend, answers=context(fake, 1).answers, params=SampleParams())
    trace = await ctx.solve(AdaptiveConsistency(n=4, batch=2), PROBLEM)
    assert 1 <= len(trace.candidates) <= 4
    assert all(r.params.seed is None for r in fake.requests)
    [generation] = await fake.generate([GenRequest(prompt=PROBLEM.prompt, params=SampleParams(n=1))])
    assert generation.completions[0].text.endswith(".")
