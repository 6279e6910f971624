"""Summaries of a run, computed from its samples.jsonl records alone."""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import Any, Iterable

from ttscale.analysis.revision import revision_summary
from ttscale.analysis.speculative import speculative_summary
from ttscale.code_exec import execution_summary
from ttscale.cost import STRUCTURAL_FIELDS, exact_total, flops_known
from ttscale.types import Cost

COST_FIELDS = tuple(Cost.model_fields)
# The totals that are FLOPs: null in summary.json when unknown (never a 0 that reads as free).
FLOPS_FIELDS = ("flops", "eflops", "verifier_flops", "draft_flops",
                *(STRUCTURAL_FIELDS[name] for name in ("flops", "eflops", "verifier_flops")))


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per selection rule, mean pass@k per k, and total cost over every problem once."""
    records = list(records)
    accuracy: dict[str, list[float]] = defaultdict(list)
    pass_at_k: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for rule, selection in record["selections"].items():
            accuracy[rule].append(float(selection["correct"]))
        for k, value in record["pass_at_k"].items():
            pass_at_k[k].append(value)
    chosen_rules = {record["chosen_rule"] for record in records}
    summary = {
        "problems": len(records),
        "chosen_rule": chosen_rules.pop() if len(chosen_rules) == 1 else sorted(chosen_rules),
        "accuracy": {rule: fmean(values) for rule, values in sorted(accuracy.items())},
        # pass@k is averaged over the problems that drew at least k samples.
        "pass_at_k": {k: fmean(v) for k, v in sorted(pass_at_k.items(), key=lambda kv: int(kv[0]))},
        "pass_at_k_problems": {k: len(v) for k, v in sorted(pass_at_k.items(), key=lambda kv: int(kv[0]))},
        # Summed in any order to the same total: a resumed run lists its problems in another order.
        "cost": {name: exact_total(r["cost"].get(name, 0) for r in records) for name in COST_FIELDS},
        # False when some calls' tokens could not be counted (cost.uncounted_calls) or priced
        # (cost.unpriced_calls: the model's size is unknown): those totals are unknown.
        "cost_known": all(flops_known(r["cost"]) for r in records),
        "samples": sum(len(r["candidates"]) for r in records),
        # Oracle verifiers score with gold answers: their selections are upper bounds.
        "verifier_uses_gold": any(r.get("verifier_uses_gold") for r in records),
    }
    # Sections only some runs have: per-depth figures of revision, speculative decoding metrics.
    # Code rules' sandbox runs: execution cost, beside FLOPs (never priced into them).
    optional = {"revision": revision_summary(records), "speculative": speculative_summary(summary["cost"]),
                "execution": execution_summary(records)}
    summary.update({name: section for name, section in optional.items() if section is not None})
    if not summary["cost_known"]:
        summary["cost"].update(dict.fromkeys(FLOPS_FIELDS))
        for row in summary.get("revision", {}).get("depths", []):
            row["flops"] = None
        if "speculative" in summary:
            summary["speculative"]["draft_flops"] = None
    return summary

