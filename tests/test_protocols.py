"""The contract in ttscale/protocols.py: plugins written from it alone run end to end, optional
capabilities fall back to their stated defaults, and a problem's cost travels one road."""

import json
from types import SimpleNamespace
from typing import ClassVar

import pytest

import ttscale
from ttscale import registry
from ttscale.backends.fake import FakeBackend
from ttscale.benchmarks.arithmetic import ArithmeticBenchmark
from ttscale.config import RunConfig
from ttscale.context import SolveContext
from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.protocols import (
    Backend,
    Strategy,
    Verifier,
    draft_num_params_of,
    engine_settings_of,
    needs_verifier,
    prompt_template_of,
    speculative_metrics_of,
)
from ttscale.build import build_benchmark
from ttscale.runner import run_eval
from ttscale.strategies.best_of_n import BestOfN
from ttscale.types import Candidate, ChatMessage, Completion, Generation, GenRequest, Problem, SampleParams, Trace

PROBLEM = Problem(id="p", question="1+1?", prompt=(ChatMessage(role="user", content="1+1?"),), answer="2")


class BareBackend:
    """A backend with only what Backend requires: a model and generate/close."""

    def __init__(self):
        self.model = SimpleNamespace(name="bare", num_params=10, shape=None)

    async def generate(self, requests):
        return [
            Generation(
                completions=tuple(Completion(text=f"\\boxed{{{i}}}", num_tokens=5, finish_reason="stop") for i in range(r.params.n)),
                prompt_tokens=3,
            )
            for r in requests
        ]

    async def close(self):
        pass


class LastDigitVerifier:
    """A verifier with only what Verifier requires: it likes larger final digits."""

    name = "last-digit"
    uses_gold = False
    backend = None

    async def score(self, problem, solutions, meter):
        return [int(s.strip("\\boxed{}")) / 10 for s in solutions]

    async def score_steps(self, problem, steps, meter):
        return [[int(s[-1].strip("\\boxed{}")) / 10] for s in steps]

    async def close(self):
        pass


class NeedyStrategy:
    """A strategy declaring the VerifierNeed capability: it picks the verifier's favourite."""

    name: ClassVar[str] = "needy"
    needs_verifier: ClassVar[bool] = True

    def __init__(self, n: int = 3):
        self.n = n

    async def solve(self, problem, ctx):
        verifier = ctx.require_verifier(self.name)
        [generation] = await ctx.backend.generate([GenRequest(prompt=problem.prompt, params=ctx.params.model_copy(update={"n": self.n}))])
        texts = [c.text for c in generation.completions]
        scores = await verifier.score(texts)
        candidates = [Candidate(text=t, answer=ctx.answers.extract_answer(t), num_tokens=5, finish_reason="stop", score=s)
                      for t, s in zip(texts, scores)]
        best = max(candidates, key=lambda c: c.score)
        return Trace(candidates=tuple(candidates), selections={"max-score": best.answer}, chosen_rule="max-score")


def test_plugins_written_from_the_protocols_satisfy_them():
    assert isinstance(BareBackend(), Backend)
    assert isinstance(LastDigitVerifier(), Verifier)
    assert isinstance(NeedyStrategy(), Strategy)


def test_optional_capabilities_default_as_stated():
    bare = BareBackend()
    assert engine_settings_of(bare) == {}
    assert speculative_metrics_of(bare) is None
    assert draft_num_params_of(bare.model) == 0
    assert prompt_template_of(object()) is None
    assert needs_verifier(object()) is False
    rich = SimpleNamespace(engine_settings={"dtype": "bfloat16"}, speculative_metrics=lambda: {"drafts": 3})
    assert engine_settings_of(rich) == {"dtype": "bfloat16"}
    assert speculative_metrics_of(rich) == {"drafts": 3}
    assert draft_num_params_of(SimpleNamespace(draft_num_params=135)) == 135


def test_strategies_declare_when_they_need_a_verifier():
    assert needs_verifier(BestOfN(selection="majority")) is False
    assert needs_verifier(BestOfN(selection="max-score")) is True
    assert needs_verifier(registry.strategies.create("beam-search")) is True
    assert needs_verifier(registry.strategies.create("revision", selection="hierarchical")) is True
    assert needs_verifier(registry.strategies.create("revision", selection="majority")) is False
    assert needs_verifier(NeedyStrategy()) is True


def test_a_benchmark_states_its_prompt_template():
    assert prompt_template_of(ArithmeticBenchmark()) == ArithmeticBenchmark.default_template
    assert prompt_template_of(ArithmeticBenchmark(prompt_template="Q: {question}\nA:")) == "Q: {question}\nA:"


async def test_a_backend_without_pooling_is_refused_by_pooling_verifiers():
    with pytest.raises(TypeError, match="BareBackend has no pooling API"):
        await CostMeter(BareBackend(), role="verifier").pool([])


async def test_protocol_only_plugins_run_through_solve_and_the_cost_is_on_the_trace():
    trace = await ttscale.solve(PROBLEM, backend=BareBackend(), strategy="best-of-n",
                                options={"n": 3, "selection": "max-score"}, verifier=LastDigitVerifier())
    assert trace.answer == "2"  # the verifier's favourite of 0, 1, 2
    assert trace.cost.calls == 1 and trace.cost.generated_tokens == 15 and trace.cost.prompt_tokens == 3
    assert trace.cost.flops == 2 * 10 * (3 + 15)
    assert "cost" not in trace.metadata


async def test_the_runner_refuses_a_plugin_strategy_that_needs_a_verifier(tmp_path, monkeypatch, write_problems):
    monkeypatch.setitem(registry.strategies._entries, "needy", NeedyStrategy)
    path = write_problems({"id": "a", "question": "1+1?", "answer": "2"}, name="p.jsonl")
    config = RunConfig(benchmark=str(path), backend="fake", model="fake", strategy="needy", output=tmp_path)
    with pytest.raises(ConfigError, match="'needy'.*needs a verifier"):
        await run_eval(config)


async def test_runner_and_solve_book_the_same_cost_for_the_same_problem(tmp_path, write_problems):
    # One road: the runner's record["cost"] and ttscale.solve's trace.cost come from the same
    # SolveContext.solve, so the same problem, seed and strategy cost the same (wall time aside).
    path = write_problems({"id": "a", "question": "What is 1 + 1?", "answer": "2"}, name="p.jsonl")
    config = RunConfig(benchmark=str(path), backend="fake", model="fake", strategy="beam-search", output=tmp_path / "runs",
                       strategy_options={"n": 4, "beam_width": 2, "max_steps": 3}, verifier="llm-judge-prm")
    result = await run_eval(config, backend=FakeBackend(num_params=100))
    [record] = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    [problem] = build_benchmark(config).load()
    verifier = registry.verifiers.create("llm-judge-prm", benchmark=build_benchmark(config))
    trace = await ttscale.solve(problem, backend=FakeBackend(num_params=100), strategy="beam-search",
                                options=dict(config.strategy_options), verifier=verifier, answers=build_benchmark(config),
                                params=config.sampling, seed=config.seed)
    solved = trace.cost.model_dump()
    assert solved["verifier_tokens"] > 0 and solved["generated_tokens"] > 0
    assert {k: v for k, v in record["cost"].items() if k != "wall_s"} == {k: v for k, v in solved.items() if k != "wall_s"}
    assert "cost" not in record["trace_metadata"]


async def test_per_candidate_metadata_must_give_one_entry_per_candidate():
    class Lopsided:
        name = "lopsided"

        async def solve(self, problem, ctx):
            candidate = Candidate(text="\\boxed{2}", answer="2", num_tokens=1, finish_reason="stop")
            return Trace(candidates=(candidate, candidate), selections={"first": "2"}, chosen_rule="first",
                         metadata={"subtree": [0]})

    ctx = SolveContext.for_problem(PROBLEM, backend=BareBackend(), answers=ArithmeticBenchmark(), params=SampleParams(), seed=1)
    with pytest.raises(ValueError, match=r"'lopsided': trace.metadata\['subtree'\] has 1 entries for 2 candidates"):
        await ctx.solve(Lopsided(), PROBLEM)
