"""Synthetic finished runs for allocator tests: problems with known per-sample accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ttscale.analysis.passk import k_values, pass_at_k

NUM_PARAMS = 1000  # the fake backend's; no shape, so every token costs 2·P FLOPs


def write_run(root: Path, name: str, accuracies: list[float], *, n: int = 16, seed: int = 0,
              model: str = "fake", strategy: str = "best-of-n", tokens: int = 10, wrong_answers: int = 3,
              verifier: str | None = None, uses_gold: bool = False, verifier_flops: float = 0.0,
              shape: dict[str, int] | None = None) -> Path:
    """A run directory whose problem i draws correct answers with probability accuracies[i].

    Wrong answers come from `wrong_answers` distinct values, so majority vote can lose. With a
    `verifier`, every sample is scored: an oracle one (uses_gold) scores 1 exactly the correct
    samples; any other scores at random. `verifier_flops` is each problem's verifier cost.
    The recorded FLOPs are 2·P per token (no `shape`; with one, the analysis prices the attention
    term too). Nothing is cached, so the cache-independent cost equals the actual one.
    """
    rng = random.Random(seed)
    run = root / name
    run.mkdir(parents=True)
    config = {"benchmark": "arithmetic", "benchmark_options": {}, "strategy": strategy,
              "strategy_options": {"n": n}, "model": model, "backend": "fake",
              "backend_options": {"num_params": NUM_PARAMS, **({"shape": shape} if shape else {})}, "verifier": verifier, "verifier_options": {},
              "sampling": {"n": 1, "max_tokens": 64, "temperature": 0.8, "top_p": 1.0}}
    (run / "config.json").write_text(json.dumps(config))
    # As the runner writes it (ttscale.build.describe_backend): the model the meters priced with.
    (run / "backend.json").write_text(json.dumps({"model": model, "num_params": NUM_PARAMS,
                                                  "shape": {"num_params": NUM_PARAMS, **shape} if shape else None}))
    with open(run / "samples.jsonl", "w") as out:
        for i, p in enumerate(accuracies):
            candidates = []
            for _ in range(n):
                ok = rng.random() < p
                answer = "42" if ok else str(rng.randrange(wrong_answers))
                score = None if verifier is None else (float(ok) if uses_gold else rng.random())
                candidates.append({"text": "", "answer": answer, "num_tokens": tokens + i % 3, "finish_reason": "stop",
                                   "score": score, "step_scores": None, "correct": ok})
            c = sum(x["correct"] for x in candidates)
            generated = sum(x["num_tokens"] for x in candidates)
            flops = 2.0 * NUM_PARAMS * (20 + generated) + verifier_flops
            selections = {"majority": {"answer": None, "correct": False}}
            if verifier is not None:
                selections["max-score"] = {"answer": None, "correct": bool(c)}
            record = {
                "problem_id": f"p{i}", "n": n, "num_correct": c, "difficulty": None, "chosen_rule": "majority",
                "candidates": candidates, "selections": selections, "verifier": verifier, "verifier_uses_gold": uses_gold,
                "pass_at_k": {str(k): pass_at_k(n, c, k) for k in k_values(n)},
                "cost": {"calls": 1, "prompt_tokens": 20, "cached_prompt_tokens": 0, "generated_tokens": generated,
                         "flops": flops, "verifier_flops": verifier_flops, "structural_cached_prompt_tokens": 0,
                         "structural_flops": flops, "structural_eflops": flops, "structural_verifier_flops": verifier_flops},
            }
            out.write(json.dumps(record) + "\n")
    return run
