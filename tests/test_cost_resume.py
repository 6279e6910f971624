"""A run killed part way and resumed on a restarted engine (its prefix cache cold) costs the same,
cache-independently, as a clean run: the structural cost fields agree exactly, problem by
problem and in total, while the engine-reported cached tokens and actual FLOPs do not."""

import json
import random

import pytest

from ttscale.analysis.runs import load_run
from ttscale.analysis.scaling import scaling_curves
from ttscale.analysis.summary import summarize
from ttscale.backends.fake import FakeBackend
from ttscale.config import RunConfig
from ttscale.cost import STRUCTURAL_FIELDS, cache_independent_cost
from ttscale.runner import run_eval
from ttscale.types import SampleParams

STRUCTURAL = tuple(STRUCTURAL_FIELDS.values())
SHAPE = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}  # attention terms on


def respond(prompt: str, index: int) -> str:
    """Judges say Yes; the policy writes step d of sample i, and answers at depth 2."""
    if "Answer Yes or No." in prompt:
        return "Yes"
    depth = prompt.split("assistant: ")[-1].count("\n\n")
    if depth >= 2:
        return f"Step {depth} of sample {index}: so \\boxed{{{index}}}"
    return f"Step {depth} of sample {index}: work it out.\n\nmore"


ENGINE = {"responder": respond, "num_params": 1_000_000, "shape": SHAPE, "block_size": 4}


def engine() -> FakeBackend:
    """A fresh engine, as after a restart: nothing in its prefix cache."""
    return FakeBackend(**ENGINE)


class Killed(Exception):
    """Stands in for SIGKILL."""


class EngineThatDies(FakeBackend):
    """Dies at the first request that mentions `question`, and stays dead: the problems
    finished before it are on disk, the rest are not."""

    def __init__(self, question: str):
        super().__init__(**ENGINE)
        self.question = question
        self.dead = False

    async def generate(self, requests):
        self.dead = self.dead or any(self.question in str(r.prompt) for r in requests)
        if self.dead:
            raise Killed
        return await super().generate(requests)


def records_of(run_dir) -> dict[str, dict]:
    return {r["problem_id"]: r for r in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())}


@pytest.mark.parametrize(
    "strategy, options, verifier",
    [
        ("beam-search", {"n": 4, "beam_width": 2, "max_steps": 3}, "llm-judge-prm"),  # steps continue prefixes
        ("dvts", {"n": 4, "beam_width": 2, "max_steps": 3}, "llm-judge-prm"),  # curves scale by subtree
        ("revision", {"n": 4, "ratio": "2:2"}, None),  # revision prompts hold earlier attempts
        ("best-of-n", {"n": 4}, None),  # one request: nothing shared within the problem
    ],
)
async def test_resumed_run_and_clean_run_agree_exactly_on_the_cache_independent_cost(tmp_path, strategy, options, verifier,
                                                                                     write_problems):
    path = write_problems(*({"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(1, 7)))
    config = RunConfig(benchmark=str(path), backend="fake", model="fake", strategy=strategy, strategy_options=options,
                       verifier=verifier, sampling=SampleParams(max_tokens=64), concurrency=1, output=tmp_path / "clean",
                       backend_options={"num_params": ENGINE["num_params"], "shape": SHAPE})
    clean = await run_eval(config, backend=engine())

    crashed = config.model_copy(update={"output": tmp_path / "crashed"})
    with pytest.raises(Killed):  # one problem at a time: p1 and p2 finish, p3 kills the engine
        await run_eval(crashed, backend=EngineThatDies("What is 3 + 3?"))
    done_before = list(records_of(tmp_path / "crashed" / clean.run_dir.name))
    assert done_before == ["p1", "p2"]
    resumed = await run_eval(crashed, backend=engine())  # the restarted engine starts cold
    assert resumed.run_dir.name == clean.run_dir.name  # the same run, in another directory
    assert (resumed.resumed, resumed.solved_now) == (2, 4)

    before, after = records_of(clean.run_dir), records_of(resumed.run_dir)
    assert sorted(before) == sorted(after) == [f"p{i}" for i in range(1, 7)]
    for pid in before:
        # The same work was done ...
        assert [c["text"] for c in before[pid]["candidates"]] == [c["text"] for c in after[pid]["candidates"]]
        assert before[pid]["cost"]["prompt_tokens"] == after[pid]["cost"]["prompt_tokens"]
        # ... so the cost that compare and the allocator read agrees exactly.
        assert {f: before[pid]["cost"][f] for f in STRUCTURAL} == {f: after[pid]["cost"][f] for f in STRUCTURAL}
        priced_before, priced_after = cache_independent_cost(before[pid]["cost"]), cache_independent_cost(after[pid]["cost"])
        assert {f: priced_before[f] for f in STRUCTURAL_FIELDS} == {f: priced_after[f] for f in STRUCTURAL_FIELDS}
    for field in STRUCTURAL:
        assert clean.summary["cost"][field] == resumed.summary["cost"][field]
    # compare, report and the allocator read runs through one layer: its curves cost the same.
    curves = [{c.rule: c for c in scaling_curves(load_run(r.run_dir), bootstrap=0)} for r in (clean, resumed)]
    assert curves[0].keys() == curves[1].keys()
    for rule, curve in curves[0].items():
        assert [(p.n, p.flops, p.eflops) for p in curve.points] == [(p.n, p.flops, p.eflops) for p in curves[1][rule].points]

    # The actual cost did depend on the crash: the first problem solved after the restart found
    # the engine's cache cold, where the clean run had the shared prompt template cached.
    first_after_restart = "p3"
    assert before[first_after_restart]["cost"]["cached_prompt_tokens"] > after[first_after_restart]["cost"]["cached_prompt_tokens"]
    assert clean.summary["cost"]["cached_prompt_tokens"] > resumed.summary["cost"]["cached_prompt_tokens"]
    assert clean.summary["cost"]["flops"] < resumed.summary["cost"]["flops"]
    if strategy != "best-of-n":  # within a problem, later requests re-send what earlier ones sent or generated
        assert all(r["cost"]["structural_cached_prompt_tokens"] > 0 for r in before.values())
    if strategy == "revision":  # per-depth meters book what the problem's meter priced
        for record in before.values():
            depths = record["trace_metadata"]["depth_cost"]
            assert sum(d["structural_cached_prompt_tokens"] for d in depths) == record["cost"]["structural_cached_prompt_tokens"]


def test_summary_totals_do_not_depend_on_the_order_of_the_records():
    # A resumed run's samples.jsonl lists problems in another order than a clean run's.
    rng = random.Random(0)
    records = [
        {"selections": {"first": {"correct": True}}, "pass_at_k": {"1": 1.0}, "chosen_rule": "first", "candidates": [{}],
         "cost": {"flops": rng.uniform(1e15, 1e17), "structural_flops": rng.uniform(1e15, 1e17), "prompt_tokens": i}}
        for i in range(200)
    ]
    shuffled = records[:]
    rng.shuffle(shuffled)
    assert summarize(records)["cost"] == summarize(shuffled)["cost"]
