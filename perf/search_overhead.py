"""What step-wise search costs beyond its tokens: particle filtering next to plain sampling.

One engine, one run:
  1. particle filtering (N particles, llm-judge-prm on the same engine) over the problems,
     through `ttscale eval`'s runner: wall time, generated tokens G, prompt and cached tokens;
  2. plain sampling of the same number of generated tokens: the same problems, n=N samples each
     of exactly G / (problems x N) tokens (ignore_eos), straight into the engine.
Prints the wall-time ratio search/plain and the share of the search's prompt tokens that the
prefix cache served. Search pays for many short requests, re-sent prefixes and judge calls;
the ratio says how much that costs on this machine.

    python perf/search_overhead.py [--problems 20] [--n 8] [--max-tokens 192]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from ttscale.backends.vllm import VLLMBackend
from ttscale.config import RunConfig
from ttscale.build import build_benchmark
from ttscale.runner import run_eval
from ttscale.types import GenRequest, SampleParams


async def particle_filtering(backend: VLLMBackend, config: RunConfig) -> dict:
    """Run the search through the runner; return its wall time and cost totals."""
    with tempfile.TemporaryDirectory() as output:
        started = time.perf_counter()
        result = await run_eval(config.model_copy(update={"output": Path(output)}), backend=backend)
        wall_s = time.perf_counter() - started
        # The summary's own wall_s sums per-problem call times; this is the search's wall clock.
        return {**result.summary["cost"], "wall_s": wall_s, "accuracy": result.summary["accuracy"]}


async def plain_sampling(backend: VLLMBackend, config: RunConfig, n: int, tokens_each: int) -> tuple[int, float]:
    """n samples of exactly `tokens_each` tokens per problem, sent at once to the engine."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    problems = build_benchmark(config).load(limit=config.limit)
    params = SamplingParams(n=n, max_tokens=tokens_each, ignore_eos=True, temperature=0.8, seed=0)

    async def one(problem) -> int:
        ids = backend.prompt_token_ids(GenRequest(prompt=problem.prompt, params=SampleParams()))
        final = None
        async for output in backend.engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id=uuid.uuid4().hex):
            final = output
        return sum(len(sample.token_ids) for sample in final.outputs)

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in problems))
    return sum(counts), time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    config = RunConfig(
        benchmark="arithmetic",
        backend="vllm",
        strategy="particle-filter",
        strategy_options={"n": args.n},
        verifier="llm-judge-prm",
        sampling={"max_tokens": args.max_tokens, "temperature": 0.8},
        limit=args.problems,
        concurrency=args.problems,
    )
    backend = VLLMBackend(config.model, sequences=args.problems * args.n, max_tokens=args.max_tokens)
    started = time.perf_counter()
    await backend.start()
    print(f"Engine started in {time.perf_counter() - started:.0f} s", flush=True)
    try:
        await plain_sampling(backend, config, 1, 8)  # warm-up
        search = await particle_filtering(backend, config)
        tokens_each = max(1, round(search["generated_tokens"] / (args.problems * args.n)))
        plain_tokens, plain_s = await plain_sampling(backend, config, args.n, tokens_each)
    finally:
        await backend.close()
    cached_share = search["cached_prompt_tokens"] / max(1, search["prompt_tokens"])
    print(f"particle filtering: {search['generated_tokens']} generated tokens in {search['wall_s']:.1f} s; "
          f"prompt tokens {search['prompt_tokens']} ({search['cached_prompt_tokens']} cached); "
          f"judge: {search['verifier_calls']} calls, {search['verifier_tokens']} tokens; accuracy {search['accuracy']}")
    print(f"plain sampling:     {plain_tokens} generated tokens ({args.problems} x n={args.n} x {tokens_each}) in {plain_s:.1f} s")
    print(f"wall-time ratio search/plain: {search['wall_s'] / plain_s:.2f}")
    print(f"cached share of the search's prompt tokens: {cached_share:.3f}")


if __name__ == "__main__":  # vLLM spawns workers, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=192)
    asyncio.run(main(parser.parse_args()))
