"""Per-depth accuracy, cost and answer flips of sequential-revision runs, from samples.jsonl.

Depth d is a chain's d-th attempt (depth 1: the first answer, before any revision). The flip
rates follow Snell et al. (2024): of the attempts that were correct, the share whose next
revision is incorrect (they report about 38% for their revision model), and the converse.
"""

from __future__ import annotations

from typing import Any, Iterable

DEPTH_COST_FIELDS = ("calls", "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "flops")


def revision_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Accuracy and cost per depth, and flip rates between consecutive attempts (None if no revision records)."""
    records = [r for r in records if "depth" in (r.get("trace_metadata") or {})]
    if not records:
        return None
    correct_at: dict[int, list[bool]] = {}
    cost_at: dict[int, dict[str, float]] = {}
    flips = {"correct": 0, "correct_to_incorrect": 0, "incorrect": 0, "incorrect_to_correct": 0}
    for record in records:
        meta = record["trace_metadata"]
        chains: dict[int, list[tuple[int, bool]]] = {}
        for depth, chain, candidate in zip(meta["depth"], meta["chain"], record["candidates"]):
            correct_at.setdefault(depth, []).append(bool(candidate["correct"]))
            chains.setdefault(chain, []).append((depth, bool(candidate["correct"])))
        for depth, cost in enumerate(meta.get("depth_cost", []), 1):
            totals = cost_at.setdefault(depth, dict.fromkeys(DEPTH_COST_FIELDS, 0))
            for name in DEPTH_COST_FIELDS:
                totals[name] += cost.get(name, 0)
        for attempts in chains.values():
            attempts.sort()
            for (_, before), (_, after) in zip(attempts, attempts[1:]):
                key = "correct" if before else "incorrect"
                flips[key] += 1
                flips[f"{key}_to_{'incorrect' if before else 'correct'}"] += int(before != after)
    depths = [
        {"depth": d, "attempts": len(correct_at[d]), "accuracy": sum(correct_at[d]) / len(correct_at[d]), **cost_at.get(d, {})}
        for d in sorted(correct_at)
    ]
    return {
        "depths": depths,
        "flips": {
            "correct_to_incorrect": _rate(flips["correct_to_incorrect"], flips["correct"]),
            "incorrect_to_correct": _rate(flips["incorrect_to_correct"], flips["incorrect"]),
            "pairs_from_correct": flips["correct"],
            "pairs_from_incorrect": flips["incorrect"],
        },
    }


def _rate(count: int, total: int) -> float | None:
    return count / total if total else None
