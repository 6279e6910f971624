"""ttscale.problems: one seed recipe (derive_seed) behind the three places that seed requests, giving
the values the three copies of the recipe gave (recorded runs keep their seeds and run ids); the
split and shard rules."""

import hashlib
import json

from ttscale.backends.fake import FakeBackend
from ttscale.build import build_benchmark
from ttscale.config import RunConfig
from ttscale.cost import CostMeter
from ttscale.problems import derive_seed, in_split, select_problems, shard_index, split_of
from ttscale.runner import run_eval
from ttscale.solve import as_problem, solve
from ttscale.types import SampleParams
from ttscale.verifier_training import Solution, rollout_prefix


def old_problem_seed(seed: int, problem_id: str) -> int:
    """The recipe as RunConfig.problem_seed and ttscale.solve.problem_seed wrote it before derive_seed."""
    digest = hashlib.sha256(f"{seed}|{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def old_rollout_seed(run_seed: int, key: str, step: int) -> int:
    """verifier_training.rollout_seed before derive_seed."""
    digest = hashlib.sha256(f"{run_seed}|rollout|{key}|{step}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class RecordingBackend(FakeBackend):
    """The fake backend, keeping every request it was sent."""

    def __init__(self, **options):
        super().__init__(**options)
        self.requests = []

    async def generate(self, requests):
        self.requests.extend(requests)
        return await super().generate(requests)


def test_derive_seed_is_the_old_recipe_bit_for_bit():
    ids = ["p1", "arithmetic-t2d1-s0-0", "prompt-0123456789ab", "ünïcode"]
    for seed in (0, 1, 7, 2**31 + 5):
        for pid in ids:
            assert derive_seed(seed, pid) == old_problem_seed(seed, pid)
            assert derive_seed(seed, "rollout", f"{pid}#3", 2) == old_rollout_seed(seed, f"{pid}#3", 2)
    # Pinned values (from the recipe before the move), so a change to both sides still fails.
    assert derive_seed(0, "p1") == old_problem_seed(0, "p1") == 459658164
    assert derive_seed(0, "rollout", "p1#0", 0) == 51010338


def test_run_config_seeds_as_before():
    config = RunConfig(benchmark="arithmetic", seed=11)
    assert config.problem_seed("p7") == old_problem_seed(11, "p7")


async def test_a_recorded_run_keeps_its_seeds(tmp_path, write_problems):
    problems = write_problems(*({"id": f"p{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)),
                              name="tiny.jsonl")
    config = RunConfig(benchmark=str(problems), backend="fake", model="fake", output=tmp_path / "runs",
                       strategy_options={"n": 2}, seed=5)
    backend = RecordingBackend()
    result = await run_eval(config, backend=backend)
    records = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert {r["problem_id"]: r["seed"] for r in records} == {f"p{i}": old_problem_seed(5, f"p{i}") for i in range(3)}
    assert {r.params.seed for r in backend.requests} == {old_problem_seed(5, f"p{i}") for i in range(3)}


async def test_ttscale_solve_seeds_as_before():
    backend = RecordingBackend()
    await solve("What is 2 + 3?", backend=backend, strategy="best-of-n", options={"n": 2}, seed=9)
    problem = as_problem("What is 2 + 3?")
    assert {r.params.seed for r in backend.requests} == {old_problem_seed(9, problem.id)}


async def test_rollouts_seed_as_before():
    benchmark = build_benchmark(RunConfig(benchmark="arithmetic"))
    [problem] = benchmark.load(limit=1)
    solution = Solution(problem=problem, sample=3, steps=("First.", "So \\boxed{1}"), correct=False, pass1=0.5,
                        num_tokens=8, text="First.\n\nSo \\boxed{1}")
    backend = RecordingBackend()
    await rollout_prefix(CostMeter(backend), benchmark, solution, 0, k=2, params=SampleParams(max_tokens=16), run_seed=4)
    assert {r.params.seed for r in backend.requests} == {old_rollout_seed(4, solution.key, 0)}


def test_split_and_shard_rules():
    ids = [f"arithmetic-t2d1-s0-{i}" for i in range(64)]
    assert {split_of(i) for i in ids} == {"a", "b"}
    assert all(split_of(i) == "ab"[hashlib.sha256(i.encode()).digest()[0] & 1] for i in ids)
    assert all(in_split(i, "all") and in_split(i, split_of(i)) for i in ids)
    problems = build_benchmark(RunConfig(benchmark="arithmetic")).load(limit=40)
    chosen = select_problems(problems, split="b", shard=(1, 3))
    assert chosen == [p for p in problems if split_of(p.id) == "b" and shard_index(p.id, 3) == 1]
    assert select_problems(problems, split=None, shard=None) == list(problems)
