"""What PRM-guided search costs beyond its tokens: beam search, DVTS and particle filtering with a
trained verifier, each next to plain sampling of the same generated tokens.

One generation engine, one run. For each search (N = --n, beam width --beam-width, the trained
head at --head reading the policy's hidden states on its own pooling engine, started and warmed
before the clock starts):
  1. the search over the problems (all at once, as `ttscale eval --concurrency` would run them):
     wall time, generated tokens G, the verifier's actual FLOPs (what the pooling engine computed:
     its prefix-cache hits free) and its structural FLOPs (each problem's repeated prefixes free,
     ttscale.cost);
  2. plain sampling of the same number of generated tokens: the same problems, n=N samples each
     of exactly G / (problems x N) tokens (ignore_eos), straight into the generation engine.
Prints, side by side, actual / structural verifier FLOPs and search / plain wall time.

Each search gets a fresh verifier (its own pooling engine), so nothing one search read is cached
for the next.

    python perf/search_overhead.py --head DIR [--problems 8] [--n 4] [--beam-width 2] [--max-tokens 160]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from ttscale.backends.vllm import VLLMBackend
from ttscale.build import build_benchmark, build_verifier
from ttscale.config import RunConfig
from ttscale.cost import sum_costs
from ttscale.problems import select_problems
from ttscale.solve import solve
from ttscale.types import GenRequest, PoolRequest, SampleParams

SEARCHES = ("beam-search", "dvts", "particle-filter")


def search_options(strategy: str, args: argparse.Namespace) -> dict:
    """The options of the recipes in recipes/trained-prm-*.yaml, at N = --n."""
    if strategy == "particle-filter":
        return {"n": args.n, "selection": "max-score"}
    return {"n": args.n, "beam_width": args.beam_width, **({"selection": "weighted-vote"} if strategy == "dvts" else {})}


async def run_search(strategy: str, backend: VLLMBackend, config: RunConfig, problems, args) -> dict:
    """The search over every problem at once, with a fresh, warmed verifier; its wall time and cost totals."""
    verifier = build_verifier(config, build_benchmark(config))
    try:
        await verifier.backend.pool([PoolRequest(prompt="warm-up")])  # start the pooling engine off the clock
        started = time.perf_counter()
        traces = await asyncio.gather(*(
            solve(p, backend=backend, strategy=strategy, options=search_options(strategy, args), verifier=verifier,
                  params=config.sampling, seed=config.seed)
            for p in problems))
        wall_s = time.perf_counter() - started
    finally:
        await verifier.close()
    cost = sum_costs(t.cost for t in traces)
    return {"wall_s": wall_s, "generated_tokens": cost.generated_tokens, "verifier_flops": cost.verifier_flops,
            "structural_verifier_flops": cost.structural_verifier_flops, "verifier_tokens": cost.verifier_tokens}


async def plain_sampling(backend: VLLMBackend, problems, n: int, tokens_each: int) -> tuple[int, float]:
    """n samples of exactly `tokens_each` tokens per problem, sent at once to the engine."""
    from vllm import SamplingParams  # the engine's own API: this script measures it directly
    from vllm.inputs import TokensPrompt

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
    # The recorded arithmetic run the heads were trained on (docs/guide/trained-verifiers.md), held-out half b.
    config = RunConfig(
        benchmark="arithmetic",
        benchmark_options={"terms": 2, "digits": "1-2", "size": 240},
        backend="vllm",
        verifier="trained",
        verifier_options={"path": args.head},
        sampling={"max_tokens": args.max_tokens, "temperature": 0.8},
        seed=1,
    )
    problems = select_problems(build_benchmark(config).load(limit=240), split="b", shard=None)[: args.problems]
    backend = VLLMBackend(config.model, sequences=args.problems * args.n, max_tokens=args.max_tokens)
    started = time.perf_counter()
    await backend.start()
    print(f"Engine started in {time.perf_counter() - started:.0f} s; {len(problems)} problems, N={args.n}", flush=True)
    rows = []
    try:
        await plain_sampling(backend, problems[:1], 1, 8)  # warm-up
        for strategy in args.searches:
            search = await run_search(strategy, backend, config, problems, args)
            tokens_each = max(1, round(search["generated_tokens"] / (len(problems) * args.n)))
            plain_tokens, plain_s = await plain_sampling(backend, problems, args.n, tokens_each)
            rows.append((strategy, search, plain_tokens, plain_s))
            print(f"{strategy}: {search['generated_tokens']} generated tokens in {search['wall_s']:.1f} s, "
                  f"plain {plain_tokens} in {plain_s:.1f} s; verifier read {search['verifier_tokens']} tokens", flush=True)
    finally:
        await backend.close()
    print()
    print("| search | generated tokens | search s | plain s | search / plain wall | verifier FLOPs actual | structural | actual / structural |")
    print("|---|---|---|---|---|---|---|---|")
    for strategy, search, plain_tokens, plain_s in rows:
        ratio = search["verifier_flops"] / max(search["structural_verifier_flops"], 1.0)
        print(f"| {strategy} | {search['generated_tokens']} | {search['wall_s']:.1f} | {plain_s:.1f} | {search['wall_s'] / plain_s:.2f} | "
              f"{search['verifier_flops']:.3g} | {search['structural_verifier_flops']:.3g} | {ratio:.2f} |")


if __name__ == "__main__":  # vLLM spawns workers, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", required=True, help="a trained verifier's directory (`ttscale verifier train -o DIR`)")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--beam-width", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--searches", nargs="+", choices=SEARCHES, default=list(SEARCHES))
    asyncio.run(main(parser.parse_args()))
