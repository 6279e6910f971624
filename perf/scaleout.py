"""Throughput of 1 against 2 Ray replicas, side by side in one run; and the driver's records/s.

(a) fake:   the fake backend standing in for a GPU. Every fake sample is 16 tokens, so a per-call
            delay of 16 x --token-ms is a per-token delay: a device that advances each request of
            its batch one token per step, with --concurrency problems (its batch) in flight.
            Expect close to 2x: the second replica brings a second device.
(b) engine: the embedded SmolLM2 on vLLM (CPU here). Two engines share the same cores, so on a
            2-core machine expect no gain (or a loss): run it under the engine lock.
(c) driver: how many records per second the driver can take: RunStore.append alone (one fsync
            per record), and a Ray run of the fake backend with no delay.

Rates are problems/s between the first and the last record of each run, so Ray's and the engines'
start-up are left out (the script prints them apart). Each run has its own run directory.

    python perf/scaleout.py [--parts fake,driver] [--problems 48] [--n 4] [--concurrency 4] [--token-ms 20]
    flock /tmp/ttscale-engine.lock python perf/scaleout.py --parts engine --problems 12 --n 2 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ttscale.config import RunConfig
from ttscale.runner import run_eval
from ttscale.store import RunStore
from ttscale.types import SampleParams

FAKE_SAMPLE_TOKENS = 16  # "Let me think step by step.\n\nThe answer is \\boxed{7}." under the fake tokenizer


async def timed_run(config: RunConfig) -> dict[str, float]:
    """Run once; problems/s and generated tokens/s between the first and the last record."""
    stamps: list[float] = []
    tokens: list[int] = []
    started = time.perf_counter()

    def on_record(record):
        stamps.append(time.perf_counter())
        tokens.append(record["cost"]["generated_tokens"])

    result = await run_eval(config, on_record=on_record)
    total = time.perf_counter() - started
    span = stamps[-1] - stamps[0]
    return {
        "problems": len(stamps),
        "problems_per_s": (len(stamps) - 1) / span if span > 0 else float("nan"),
        "tokens_per_s": sum(tokens[1:]) / span if span > 0 else float("nan"),
        "startup_s": stamps[0] - started,
        "total_s": total,
        "run_dir": str(result.run_dir),
    }


def config_for(args, output: Path, *, backend: str, replicas: int | None, backend_options=None, limit=None) -> RunConfig:
    ray = {"ray": "local", "replicas": replicas} if replicas else {}
    return RunConfig(
        benchmark="arithmetic", backend=backend, model="smollm2-135m", backend_options=backend_options or {},
        strategy_options={"n": args.n}, sampling=SampleParams(max_tokens=args.max_tokens, temperature=0.8),
        limit=limit or args.problems, concurrency=args.concurrency, output=output, **ray,
    )


def show(label: str, figures: dict[str, float]) -> None:
    print(f"  {label:<28} {figures['problems_per_s']:8.2f} problems/s {figures['tokens_per_s']:10.1f} tok/s"
          f"   (start-up {figures['startup_s']:.1f} s, total {figures['total_s']:.1f} s, {figures['problems']} problems)", flush=True)


async def part_fake(args, root: Path) -> None:
    delay = FAKE_SAMPLE_TOKENS * args.token_ms / 1000
    print(f"(a) fake backend: {args.token_ms} ms per token ({delay:.3f} s per call), n={args.n}, "
          f"{args.concurrency} problems in flight per replica, {args.problems} problems", flush=True)
    options = {"delay_s": delay}
    results = {}
    for label, replicas in (("1 process (no Ray)", None), ("Ray, 1 replica", 1), ("Ray, 2 replicas", 2)):
        results[label] = await timed_run(config_for(args, root / f"fake-{replicas}", backend="fake", replicas=replicas, backend_options=options))
        show(label, results[label])
    ideal = args.concurrency / delay
    ratio = results["Ray, 2 replicas"]["problems_per_s"] / results["Ray, 1 replica"]["problems_per_s"]
    print(f"  ratio 2 replicas / 1 replica: {ratio:.2f}x  (device-bound ideal per replica: {ideal:.1f} problems/s)", flush=True)


async def part_engine(args, root: Path) -> None:
    print(f"(b) embedded model on vLLM: n={args.n}, max_tokens={args.max_tokens}, {args.concurrency} problems in "
          f"flight per replica, {args.problems} problems; {os.cpu_count()} CPUs here", flush=True)
    results = {}
    for label, replicas in (("Ray, 1 replica", 1), ("Ray, 2 replicas", 2)):
        results[label] = await timed_run(config_for(args, root / f"engine-{replicas}", backend="vllm", replicas=replicas))
        show(label, results[label])
    ratio = results["Ray, 2 replicas"]["tokens_per_s"] / results["Ray, 1 replica"]["tokens_per_s"]
    print(f"  ratio 2 replicas / 1 replica (tokens/s): {ratio:.2f}x  (the two engines share these {os.cpu_count()} cores)", flush=True)


async def part_driver(args, root: Path) -> None:
    print("(c) the driver's records/s", flush=True)
    probe = await timed_run(config_for(args, root / "probe", backend="fake", replicas=None, limit=1))
    record = json.loads(Path(probe["run_dir"], "samples.jsonl").read_text().splitlines()[0])
    config = config_for(args, root / "append", backend="fake", replicas=None)
    # Snell et al.'s sweeps: N=256 samples of about 500 tokens (some 2 KB of text each) per problem.
    big = {**record, "candidates": [{**record["candidates"][0], "text": "x " * 1000} for _ in range(256)]}
    for label, sample, count in ((f"n={args.n}", record, 2000), ("n=256, 2 KB texts", big, 100)):
        with RunStore(config.model_copy(update={"seed": count})) as store:
            started = time.perf_counter()
            for i in range(count):
                store.append({**sample, "problem_id": f"p{i}"})
            elapsed = time.perf_counter() - started
        size = len(json.dumps(sample))
        print(f"  RunStore.append alone, fsync each, {label} ({size / 1024:.0f} KiB/record): {count / elapsed:8.0f} records/s", flush=True)
    many = max(args.problems, 200)
    fast = await timed_run(config_for(args, root / "fast", backend="fake", replicas=2, limit=many))
    show("Ray, 2 replicas, no delay", fast)
    local = await timed_run(config_for(args, root / "fast-local", backend="fake", replicas=None, limit=many))
    show("1 process, no delay", local)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="fake,driver", help="comma-separated: fake, engine, driver")
    parser.add_argument("--problems", type=int, default=48)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--token-ms", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ttscale-scaleout-") as root:
        for part in args.parts.split(","):
            await {"fake": part_fake, "engine": part_engine, "driver": part_driver}[part.strip()](args, Path(root))


if __name__ == "__main__":  # vLLM and Ray start processes with spawn
    asyncio.run(main())
