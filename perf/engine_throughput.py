"""Raw vLLM decode speed in float32 and bfloat16, each beside a roofline of the machine it runs on.

    python perf/engine_throughput.py [--batches 1,16,64,256] [--max-tokens 128] [--dtypes float32,bfloat16]

One run, engines one after another. For each dtype the engine (the embedded SmolLM2-135M, with the
settings ttscale chooses on this machine, dtype aside) generates exactly --max-tokens tokens per
request (EOS ignored) for B requests at once, for each batch size B. Generated tok/s is the
figure; ttscale's own bookkeeping is not in the path.

The roofline is measured here, with torch, not taken from a datasheet:
  - memory bandwidth: the best of several copies of a 512 MiB tensor (bytes read + written / s);
  - matmul FLOP/s: the best of several 2048x2048 matmuls in the dtype, or in float32 where that
    is faster (a CPU without native bfloat16 can still compute in float32 what it stores in
    bfloat16, so the float32 rate is the honest ceiling there).
One decode step at batch B reads every weight once and the KV cache of B sequences, and computes
B tokens at 2·(P + 2·n_layers·d_model·L) FLOPs each (ttscale.cost.token_flops, L the mean context
length), so
    bound(B) = B / max(bytes per step / bandwidth, FLOPs per step / matmul FLOP/s)   tokens/s.
Each measured rate is printed as a fraction of its bound: the figure the project's CPU speed is
judged by. A cell predicted to take longer than --cell-budget seconds runs fewer tokens (at least
8), and one predicted to take longer even then is reported as not measured, with the prediction.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch

from ttscale.backends.vllm import VLLMBackend
from ttscale.cost import token_flops
from ttscale.errors import TtscaleError
from ttscale.machine import DTYPE_BYTES, choose_cpu_dtype, cpu_flags, free_memory, kv_bytes_per_token

PROMPT_TOKENS = 32
MIN_TOKENS = 8


def memory_bandwidth(repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (each byte read once and written once)."""
    source = torch.ones(128 << 20, dtype=torch.float32)  # 512 MiB
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * source.element_size() / best


def matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of a square matmul in `dtype` (bfloat16 on a CPU without native support is emulated)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool and kernels
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def decode_bound(shape, dtype: str, batch: int, max_tokens: int, bandwidth: float, flops: float) -> float:
    """The roofline's tokens/s for one decode step at this batch size and mean context length."""
    context = PROMPT_TOKENS + max_tokens / 2
    step_bytes = shape.num_params * DTYPE_BYTES[dtype] + batch * context * kv_bytes_per_token(shape, dtype)
    step_flops = batch * token_flops(shape, context)
    return batch / max(step_bytes / bandwidth, step_flops / flops)


async def measure_dtype(dtype: str, args, bandwidth: float, float32_flops: float) -> list[tuple]:
    """Start one engine in `dtype`, run every batch size, shut it down: one row per batch."""
    native = matmul_flops(getattr(torch, dtype))
    peak = max(native, float32_flops)
    print(f"\n[{dtype}] matmul {native / 1e9:.1f} GFLOP/s in {dtype} (ceiling used: {peak / 1e9:.1f}); "
          "starting the engine ...", flush=True)
    backend = VLLMBackend("smollm2-135m", dtype=dtype, sequences=max(args.batches), max_tokens=args.max_tokens)
    started = time.perf_counter()
    try:
        await backend.start()
    except TtscaleError as error:
        print(f"[{dtype}] cannot start here: {error}", flush=True)
        return []
    print(f"[{dtype}] engine started in {time.perf_counter() - started:.0f} s", flush=True)
    rows, rate = [], None
    try:
        await backend.decode_throughput(1, max_tokens=4)  # warm-up
        for batch in args.batches:
            tokens = args.max_tokens
            if rate is not None and batch * tokens / rate > args.cell_budget:
                tokens = max(MIN_TOKENS, int(args.cell_budget * rate / batch))
                if batch * tokens / rate > args.cell_budget * 2:
                    predicted = batch * tokens / rate
                    rows.append((dtype, batch, None, None, f"not measured: predicted {predicted:.0f} s"))
                    continue
            generated, seconds = await backend.decode_throughput(batch, max_tokens=tokens, prompt_tokens=PROMPT_TOKENS)
            rate = generated / seconds
            bound = decode_bound(backend.model.shape, dtype, batch, tokens, bandwidth, peak)
            note = f"{tokens} tokens each" + ("" if tokens == args.max_tokens else " (cut to fit --cell-budget)")
            rows.append((dtype, batch, rate, bound, note))
            print(f"[{dtype}] batch {batch}: {rate:.1f} tok/s ({note})", flush=True)
    finally:
        await backend.close()
    return rows


async def main(args: argparse.Namespace) -> None:
    flags = cpu_flags()
    free = free_memory()
    print(f"CPU: {torch.get_num_threads()} threads; bf16 flags: {sorted(f for f in flags if 'bf16' in f) or 'none'}; "
          f"AVX-512: {'avx512f' in flags}; ttscale's dtype here: {choose_cpu_dtype(flags).reason}")
    print(f"Free memory: {free.available / (1 << 30):.1f} GiB ({free.source})")
    bandwidth = memory_bandwidth()
    float32_flops = matmul_flops(torch.float32)
    print(f"Memory bandwidth (copy): {bandwidth / 1e9:.1f} GB/s; float32 matmul {float32_flops / 1e9:.1f} GFLOP/s "
          f"({torch.get_num_threads()} torch threads: the roofline is the machine's, whatever the engine uses)", flush=True)
    rows = []
    for dtype in args.dtypes:
        rows += await measure_dtype(dtype, args, bandwidth, float32_flops)
    print("\n| dtype | batch | measured tok/s | roofline tok/s | fraction of roofline | note |")
    print("|---|---|---|---|---|---|")
    for dtype, batch, rate, bound, note in rows:
        if rate is None:
            print(f"| {dtype} | {batch} | - | - | - | {note} |")
        else:
            print(f"| {dtype} | {batch} | {rate:.1f} | {bound:.0f} | {rate / bound:.3f} | {note} |")
    by_key = {(d, b): r for d, b, r, _, _ in rows if r is not None}
    for batch in args.batches:
        if ("bfloat16", batch) in by_key and ("float32", batch) in by_key:
            print(f"batch {batch}: bfloat16 / float32 = {by_key[('bfloat16', batch)] / by_key[('float32', batch)]:.2f}x")


if __name__ == "__main__":  # the engine's workers are spawned: the guard is required
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    parser.add_argument("--cell-budget", type=float, default=120.0, help="seconds one batch size may take")
    asyncio.run(main(parser.parse_args()))
