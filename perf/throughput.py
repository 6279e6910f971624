"""Generated tokens/s through ttscale next to the same requests sent to vLLM directly.

One engine, one run. After a warm-up, the same best-of-N requests (same prompt token ids, same
seeds, so the same tokens) go, in rotating order each round, through:
  - vLLM direct: straight into the backend's AsyncLLM (the baseline);
  - backend:     VLLMBackend.generate (prompt rendering, param conversion, result types);
  - eval:        `ttscale eval`'s runner (cost meter, grading, samples.jsonl) on a fresh run dir.
Prints each round and the median ratios backend/direct and eval/direct (1.0 = no overhead).
All paths share one engine and its warm prefix cache, so only ttscale's own work differs.

    python perf/throughput.py [--problems 6] [--n 4] [--max-tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from ttscale.backends.vllm import VLLMBackend, to_sampling_params
from ttscale.config import RunConfig
from ttscale.build import build_benchmark
from ttscale.runner import run_eval
from ttscale.types import GenRequest


def best_of_n_requests(config: RunConfig) -> list[GenRequest]:
    """The requests best-of-N sends for the config's problems (per-problem seeds, as the runner)."""
    n = config.strategy_options["n"]
    return [
        GenRequest(prompt=p.prompt, params=config.sampling.model_copy(update={"n": n, "seed": config.problem_seed(p.id)}))
        for p in build_benchmark(config).load(limit=config.limit)
    ]


async def direct_vllm(backend: VLLMBackend, config: RunConfig) -> tuple[int, float]:
    """The baseline: the same prompt token ids and seeds straight into the AsyncLLM engine."""
    from vllm.inputs import TokensPrompt

    requests = best_of_n_requests(config)
    prompts = [(TokensPrompt(prompt_token_ids=backend.prompt_token_ids(r)), to_sampling_params(r.params)) for r in requests]

    async def one(prompt, params) -> int:
        final = None
        async for output in backend.engine.generate(prompt, params, request_id=uuid.uuid4().hex):
            final = output
        return sum(len(sample.token_ids) for sample in final.outputs)

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(prompt, params) for prompt, params in prompts))
    return sum(tokens), time.perf_counter() - started


async def through_backend(backend: VLLMBackend, config: RunConfig) -> tuple[int, float]:
    """The same requests through VLLMBackend.generate, in one call."""
    requests = best_of_n_requests(config)
    started = time.perf_counter()
    generations = await backend.generate(requests)
    seconds = time.perf_counter() - started
    return sum(c.num_tokens for g in generations for c in g.completions), seconds


async def through_eval(backend: VLLMBackend, config: RunConfig) -> tuple[int, float]:
    """`ttscale eval` as the CLI runs it (runner, cost meter, grading, store), on a fresh run dir."""
    with tempfile.TemporaryDirectory() as output:
        fresh = config.model_copy(update={"output": Path(output)})
        started = time.perf_counter()
        result = await run_eval(fresh, backend=backend)
        return result.summary["cost"]["generated_tokens"], time.perf_counter() - started


PATHS = {"direct": direct_vllm, "backend": through_backend, "eval": through_eval}


async def main(args: argparse.Namespace) -> None:
    config = RunConfig(
        benchmark="arithmetic",
        backend="vllm",
        strategy_options={"n": args.n},
        sampling={"max_tokens": args.max_tokens, "temperature": 0.8},
        limit=args.problems,
        concurrency=args.problems,
    )
    backend = VLLMBackend(config.model, sequences=args.problems * args.n, max_tokens=args.max_tokens)
    print(f"Starting the engine ({config.model}) ...", flush=True)
    started = time.perf_counter()
    await backend.start()
    print(f"Engine started in {time.perf_counter() - started:.0f} s with {backend.engine_settings}", flush=True)
    try:
        await direct_vllm(backend, config)  # warm-up: fills the prefix cache for every path
        rates: dict[str, list[float]] = {name: [] for name in PATHS}
        order = list(PATHS)
        for round_number in range(1, args.rounds + 1):
            line = []
            for name in order:
                tokens, seconds = await PATHS[name](backend, config)
                rates[name].append(tokens / seconds)
                line.append(f"{name} {tokens} tok / {seconds:.1f} s = {tokens / seconds:.1f} tok/s")
            print(f"round {round_number}: " + " | ".join(line), flush=True)
            order = order[1:] + order[:1]  # rotate, so no path always runs first or last
        base = statistics.median(rates["direct"])
        for name in ("backend", "eval"):
            median = statistics.median(rates[name])
            print(f"{name}: {median:.1f} tok/s vs direct {base:.1f} tok/s, ratio {median / base:.3f} (median of {args.rounds})")
    finally:
        await backend.close()


if __name__ == "__main__":  # vLLM spawns workers, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=6)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
