"""Runs a strategy over a benchmark, many problems at once, resumably.

Concurrency comes from running problems side by side against one backend (vLLM batches them
continuously), bounded by a semaphore; strategies themselves stay sequential pseudocode.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ttscale.analysis.summary import summarize
from ttscale.benchmarks.humaneval import CodeBenchmark
from ttscale.build import build_backend, build_benchmark, build_strategy, build_verifier, describe_backend
from ttscale.config import RunConfig
from ttscale.errors import ConfigError
from ttscale.grading.sandbox import isolation_record
from ttscale.problems import select_problems
from ttscale.protocols import Backend, Benchmark, needs_verifier, samples_per_problem, size_for_workload
from ttscale.record import solve_and_record
from ttscale.scaleout import gather_or_cancel, solve_on_ray
from ttscale.store import RunStore
from ttscale.types import Problem

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    """What an eval produced: where it lives, its summary, and what this invocation did."""

    run_dir: Path
    summary: dict[str, Any]
    resumed: int  # problems found already finished
    solved_now: int  # problems finished by this invocation
    elapsed_s: float


def _with_sandbox(info: dict[str, Any], benchmark: Benchmark) -> dict[str, Any]:
    """backend.json's content, plus what the sandbox gives programs here (its layers and notes)
    when the benchmark grades by running code."""
    return {**info, "sandbox": isolation_record()} if isinstance(benchmark, CodeBenchmark) else info


async def run_eval(
    config: RunConfig,
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_record: ProgressCallback | None = None,
    backend: Backend | None = None,
) -> RunResult:
    """Evaluate config.strategy on config.benchmark, resuming whatever the run already finished.

    `on_start(total, already_done)` and `on_record(record)` drive a progress display. Pass
    `backend` to reuse a started engine (tests do); otherwise one is built and closed here.
    With `config.split` only that half's problems (of the first `limit`) run, and with `config.shard`
    only that shard's of them; with `config.ray` they run on Ray
    replicas (ttscale.scaleout) and this process stays the only writer of samples.jsonl.
    """
    started = time.perf_counter()
    benchmark = build_benchmark(config)
    strategy = build_strategy(config)
    # With Ray the replicas build their own verifiers; the driver only checks that one is named.
    verifier = None if config.ray else build_verifier(config, benchmark)
    if config.verifier is None and needs_verifier(strategy):
        raise ConfigError(
            f"strategy {config.strategy!r} with options {dict(config.strategy_options)} needs a verifier: "
            "pass --verifier llm-judge-prm (runs on CPU), vllm-prm (GPU) or oracle-orm (an upper bound)"
        )
    # Every problem of the first `limit` unless --split (one half) or --shard (one part) narrows them.
    problems = select_problems(benchmark.load(limit=config.limit), split=config.split, shard=config.shard_of())
    wanted = {p.id for p in problems}
    with RunStore(config) as store:
        done = store.done_ids() & wanted
        todo = [p for p in problems if p.id not in done]
        if on_start:
            on_start(len(problems), len(done))
        if todo and config.ray:
            if backend is not None:
                raise ConfigError("a started backend cannot be shared with Ray replicas; run without ray, or pass no backend")
            info = await solve_on_ray(
                todo, config, append=_recorder(store, on_record),
                on_placed=lambda placed: store.write_json("backend.json", _with_sandbox(placed, benchmark)),
            )
            store.write_json("backend.json", _with_sandbox(info, benchmark))
        elif todo:
            owned = backend is None
            backend = backend or build_backend(config)
            # Problems in flight x samples each is what the engine's KV cache must hold at once.
            in_flight = min(config.concurrency, len(todo)) * samples_per_problem(strategy)
            size_for_workload(backend, sequences=in_flight, max_tokens=config.sampling.max_tokens)
            try:
                await _solve_all(todo, strategy, backend, benchmark, config, store, on_record, verifier)
                store.write_json("backend.json", _with_sandbox(describe_backend(backend), benchmark))
            finally:
                if verifier is not None:
                    await verifier.close()
                if owned:
                    await backend.close()
        records = [r for r in store.records() if r["problem_id"] in wanted]
        summary = {"run_id": config.run_id(), **summarize(records)}
        store.write_summary(summary)
    return RunResult(store.dir, summary, len(done), len(todo), time.perf_counter() - started)


def _recorder(store: RunStore, on_record: ProgressCallback | None) -> Callable[[dict[str, Any]], None]:
    """Write a finished problem durably, then report it (the driver is the only writer)."""

    def record(result: dict[str, Any]) -> None:
        store.append(result)  # durable before it is reported
        if on_record:
            on_record(result)

    return record


async def _solve_all(todo, strategy, backend, benchmark, config, store, on_record, verifier) -> None:
    semaphore = asyncio.Semaphore(config.concurrency)

    async def one(problem: Problem) -> None:
        async with semaphore:
            record = await solve_and_record(
                problem, strategy=strategy, backend=backend, benchmark=benchmark, config=config, verifier=verifier
            )
        record_one(record)

    record_one = _recorder(store, on_record)
    await gather_or_cancel(one(p) for p in todo)  # on the first failure, stop the rest
