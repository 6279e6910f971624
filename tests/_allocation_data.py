"""Synthetic finished runs for allocator tests: problems with known per-sample accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ttscale.analysis.passk import k_values, pass_at_k


def write_run(root: Path, name: str, accuracies: list[float], *, n: int = 16, seed: int = 0,
              model: str = "fake", strategy: str = "best-of-n", tokens: int = 10, wrong_answers: int = 3) -> Path:
    """A run directory whose problem i draws correct answers with probability accuracies[i].

    Wrong answers come from `wrong_answers` distinct values, so majority vote can lose.
    """
    rng = random.Random(seed)
    run = root / name
    run.mkdir(parents=True)
    config = {"benchmark": "arithmetic", "benchmark_options": {}, "strategy": strategy,
              "strategy_options": {"n": n}, "model": model, "verifier": None, "verifier_options": {},
              "sampling": {"n": 1, "max_tokens": 64, "temperature": 0.8, "top_p": 1.0}}
    (run / "config.json").write_text(json.dumps(config))
    (run / "backend.json").write_text(json.dumps({"model": model, "num_params": 1000}))
    with open(run / "samples.jsonl", "w") as out:
        for i, p in enumerate(accuracies):
            candidates = []
            for _ in range(n):
                ok = rng.random() < p
                answer = "42" if ok else str(rng.randrange(wrong_answers))
                candidates.append({"text": "", "answer": answer, "num_tokens": tokens + i % 3, "finish_reason": "stop",
                                   "score": None, "step_scores": None, "correct": ok})
            c = sum(x["correct"] for x in candidates)
            generated = sum(x["num_tokens"] for x in candidates)
            record = {
                "problem_id": f"p{i}", "n": n, "num_correct": c, "difficulty": None, "chosen_rule": "majority",
                "candidates": candidates, "selections": {"majority": {"answer": None, "correct": False}},
                "pass_at_k": {str(k): pass_at_k(n, c, k) for k in k_values(n)},
                "cost": {"prompt_tokens": 20, "cached_prompt_tokens": 0, "generated_tokens": generated,
                         "flops": 2.0 * 1000 * (20 + generated), "verifier_flops": 0.0},
            }
            out.write(json.dumps(record) + "\n")
    return run
