"""The runner end to end on the fake backend: exact selections, pass@k, tokens, resume."""

import json
from math import comb

import pytest

from ttscale import registry
from ttscale.backends.fake import FakeBackend
from ttscale.config import RunConfig
from ttscale.runner import run_eval
from ttscale.strategies.best_of_n import BestOfN


@pytest.fixture
def problems_file(write_problems):
    return write_problems(
        {"id": "p1", "question": "What is 2 + 3?", "answer": "5"},
        {"id": "p2", "question": "What is 4 + 4?", "answer": 8},
        {"id": "p3", "question": "What is 9 - 2?", "answer": "7"},
        name="tiny.jsonl",
    )


def config_for(path, tmp_path, **overrides):
    values = dict(benchmark=str(path), backend="fake", model="fake", output=tmp_path / "runs", strategy_options={"n": 4})
    values.update(overrides)
    return RunConfig(**values)


async def test_exact_selections_pass_at_k_and_tokens(problems_file, tmp_path):
    # Each problem gets the same four samples: answers 3, 5, 5, 7.
    script = ["So \\boxed{3}", "So \\boxed{5}", "So \\boxed{5}", "So \\boxed{7}"]
    backend = FakeBackend(script=script, num_params=100)
    result = await run_eval(config_for(problems_file, tmp_path), backend=backend)
    records = {r["problem_id"]: r for r in map(json.loads, (result.run_dir / "samples.jsonl").read_text().splitlines())}

    p1 = records["p1"]  # gold 5: two of four samples are right
    assert [c["answer"] for c in p1["candidates"]] == ["3", "5", "5", "7"]
    assert [c["correct"] for c in p1["candidates"]] == [False, True, True, False]
    assert p1["candidates"][0]["grade_reason"] == "expected '5', got '3'"
    assert p1["selections"]["majority"] == {"answer": "5", "correct": True}
    assert p1["selections"]["first"] == {"answer": "3", "correct": False}
    assert p1["selections"]["oracle"] == {"answer": "5", "correct": True}
    assert p1["pass_at_k"] == {"1": 0.5, "2": pytest.approx(1 - comb(2, 2) / comb(4, 2), abs=1e-15), "4": 1.0}
    # Fake tokens: "So", "\", "boxed", "{", "3", "}" = 6 per sample.
    assert p1["cost"]["generated_tokens"] == 24
    assert p1["cost"]["calls"] == 1

    p2 = records["p2"]  # gold 8 (a JSON number): nobody is right
    assert p2["num_correct"] == 0 and p2["selections"]["oracle"]["correct"] is False
    assert records["p3"]["selections"]["majority"]["correct"] is False  # gold 7, majority says 5

    summary = result.summary
    assert summary["problems"] == 3
    assert summary["accuracy"] == {"first": 0.0, "majority": pytest.approx(1 / 3), "oracle": pytest.approx(2 / 3)}
    assert summary["pass_at_k"]["1"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert summary["cost"]["generated_tokens"] == 72
    prompt_tokens = sum(r["cost"]["prompt_tokens"] for r in records.values())
    cached = sum(r["cost"]["cached_prompt_tokens"] for r in records.values())
    assert summary["cost"]["flops"] == 2 * 100 * (prompt_tokens - cached + 72)
    assert json.loads((result.run_dir / "summary.json").read_text()) == summary


async def test_rerun_resumes_without_generating(problems_file, tmp_path):
    config = config_for(problems_file, tmp_path)
    first = await run_eval(config, backend=FakeBackend(answer_key={"2 + 3": "5"}, accuracy=1.0))
    assert (first.resumed, first.solved_now) == (0, 3)
    again = FakeBackend()
    second = await run_eval(config, backend=again)
    assert (second.resumed, second.solved_now) == (3, 0)
    assert again.requests == []
    assert second.summary == first.summary
    assert len((first.run_dir / "samples.jsonl").read_text().splitlines()) == 3


async def test_changed_config_gets_new_directory(problems_file, tmp_path):
    a = await run_eval(config_for(problems_file, tmp_path), backend=FakeBackend())
    b = await run_eval(config_for(problems_file, tmp_path, seed=1), backend=FakeBackend())
    assert a.run_dir != b.run_dir


async def test_same_seed_same_samples_and_per_problem_seeds_differ(problems_file, tmp_path):
    a = await run_eval(config_for(problems_file, tmp_path / "a"), backend=FakeBackend())
    b = await run_eval(config_for(problems_file, tmp_path / "b"), backend=FakeBackend())
    lines_a = (a.run_dir / "samples.jsonl").read_text().splitlines()
    texts = lambda lines: {json.loads(l)["problem_id"]: [c["text"] for c in json.loads(l)["candidates"]] for l in lines}
    assert texts(lines_a) == texts((b.run_dir / "samples.jsonl").read_text().splitlines())
    seeds = [json.loads(line)["seed"] for line in lines_a]
    assert len(set(seeds)) == 3


class BlindnessProbe(BestOfN):
    """Best-of-N that records whether it was ever shown a gold answer."""

    seen_answers: list = []

    async def solve(self, problem, ctx):
        BlindnessProbe.seen_answers.append(problem.answer)
        assert not hasattr(ctx.answers, "grade")  # no way to ask the grader either
        return await super().solve(problem, ctx)


async def test_strategies_never_see_gold_answers(problems_file, tmp_path):
    registry.strategies.register("blindness-probe", BlindnessProbe)
    BlindnessProbe.seen_answers = []
    await run_eval(config_for(problems_file, tmp_path, strategy="blindness-probe"), backend=FakeBackend())
    assert BlindnessProbe.seen_answers == [None, None, None]


async def test_concurrency_bound_is_respected(problems_file, tmp_path):
    class CountingBackend(FakeBackend):
        in_flight = peak = 0

        async def generate(self, requests):
            CountingBackend.in_flight += 1
            CountingBackend.peak = max(CountingBackend.peak, CountingBackend.in_flight)
            try:
                return await super().generate(requests)
            finally:
                CountingBackend.in_flight -= 1

    await run_eval(config_for(problems_file, tmp_path, concurrency=2), backend=CountingBackend(delay_s=0.05))
    assert CountingBackend.peak == 2


async def test_backend_description_is_stored_beside_the_samples(problems_file, tmp_path):
    result = await run_eval(config_for(problems_file, tmp_path), backend=FakeBackend(num_params=123))
    described = json.loads((result.run_dir / "backend.json").read_text())
    assert described == {"backend": "FakeBackend", "model": "fake", "num_params": 123, "shape": None, "engine_settings": {}}
