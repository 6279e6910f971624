"""Held-out evaluation of an AllocationPolicy against best-of-N majority at equal FLOPs.

Held out by construction: the policy records the problems it was fitted on, and evaluation
refuses any of them. Every number comes from the one analysis layer, as in fitting: the same
subsamples, prices (the probe's included for every setting planned after it) and log-FLOPs
interpolation (ttscale.analysis.runs.accuracy_at / cost_for).

The report also says how well the probe ranks and bins the held-out problems against their
oracle bins (agreement, confusion matrix, Spearman of the probe's value with pass@1) and what
the probe costs per problem next to one sample.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ttscale.allocation.fit import FitData, bins_of, load_fit_data, predict_prefill
from ttscale.allocation.policy import (
    AllocationError, AllocationPolicy, BinSource, Entry, check_budget, describe_setting,
)
from ttscale.analysis import difficulty as diff
from ttscale.analysis.runs import accuracy_at, cost_for
from ttscale.probe import PromptReader, spearman, spearman_interval
from ttscale.problems import Split

ORACLE_MODE = "oracle (upper bound: bins from gold)"  # the oracle policy: bins from graded samples


def refuse_fitted_problems(policy: AllocationPolicy, problems: Sequence[str], split: Split) -> None:
    """Raise, in one line that says how to refit, if any problem to evaluate was fitted on."""
    seen = set(policy.problem_ids).intersection(problems)
    if seen:
        other = {"a": "b", "b": "a"}.get(policy.split)
        hint = f"evaluate with --split {other}, or " if other else ""
        raise AllocationError(
            f"{len(seen)} of the {len(problems)} problems in split {split!r} were fitted on (policy split {policy.split!r}), "
            f"so this is not held out; {hint}refit on one half: `ttscale allocate fit RUN_DIR... --split a -o policy.json`, "
            "then evaluate with --split b"
        )


def bon_curve(data: FitData) -> list[tuple[int, float, float]]:
    """Best-of-n majority on these problems, no gold: (n, mean FLOPs, mean accuracy), by n."""
    points = []
    for setting, outcomes in data.outcomes.values():
        if setting.reuses_probe and not setting.uses_gold and setting.options["selection"] in ("majority", "first"):
            values = [outcomes[p] for p in data.problems]
            points.append((setting.samples, float(np.mean([v[1] for v in values])), float(np.mean([v[0] for v in values]))))
    return sorted(points)


def bon_accuracy_at(curve: Sequence[tuple[int, float, float]], flops: float) -> float:
    """Best-of-N accuracy at `flops` (clamped to the measured n); a larger budget can always
    rerun a smaller n, so the curve is its running maximum."""
    costs = [p[1] for p in curve]
    best = np.maximum.accumulate([p[2] for p in curve])
    return float(accuracy_at(costs, list(best), float(np.clip(flops, costs[0], costs[-1]))))


def bon_flops_for(curve: Sequence[tuple[int, float, float]], accuracy: float) -> float | None:
    """The FLOPs best-of-N needs to reach `accuracy`; None if it never does."""
    return cost_for([p[1] for p in curve], list(np.maximum.accumulate([p[2] for p in curve])), accuracy)


def default_budgets(policy: AllocationPolicy, ns: Sequence[int] = (2, 4, 8)) -> list[float]:
    """Per-prompt FLOP budgets equal to best-of-n majority's mean cost on the fitting problems."""
    budgets = []
    for n in ns:
        costs = [(e.flops, e.problems) for t in policy.oracle_tables for e in t.entries
                 if e.setting.reuses_probe and e.setting.samples == n and e.setting.options.get("selection") == "majority"]
        if costs:
            budgets.append(sum(f * k for f, k in costs) / sum(k for _, k in costs))
    return budgets


def evaluate_policy(policy: AllocationPolicy, run_dirs: Sequence[Path | str], *, split: Split = "all",
                    budgets: Sequence[float] | None = None, seed: int = 1, prompts: "PromptReader | None" = None) -> dict[str, Any]:
    """The policy on held-out problems against best-of-N majority, at several per-prompt budgets.

    For each budget and bin source (oracle bins: an upper bound; or predicted by the probe, its
    cost added), and for batch allocation of the same total: accuracy, mean FLOPs, best-of-N's
    accuracy at those FLOPs, and best-of-N's FLOPs for that accuracy over the policy's (the saving).
    A prefill probe's features come from `prompts` (ttscale.probe.PromptReader; the cache written at fit time).
    """
    for budget in budgets or ():
        check_budget(budget, "--budget")
    if policy.probe.is_prefill and prompts is None:
        raise AllocationError("this policy's probe reads the prompts' hidden states: pass prompts=PromptReader(cache) "
                              "(the CLI uses the cache next to the policy)")
    data = load_fit_data(run_dirs, split, seed, policy.probe.k0, policy.probe.statistic, prompts)
    refuse_fitted_problems(policy, data.problems, split)
    policy.check_model(data.reference.model)
    if policy.probe.is_prefill:
        predict_prefill(data, policy.probe)
    if data.reference.config.benchmark != policy.benchmark:
        raise AllocationError(f"policy fitted on benchmark {policy.benchmark!r}, runs are {data.reference.config.benchmark!r}")
    bins = bins_of(data, policy.oracle_edges, policy.probe)
    curve = bon_curve(data)
    budgets = list(budgets or default_budgets(policy))

    def outcome(entry: Entry, p: str, source: BinSource) -> tuple[float, float]:
        outcomes = data.outcomes if source == "oracle" else data.probed  # predicted: the probe's cost is in
        key = entry.setting.key()
        if key not in outcomes:
            raise AllocationError(f"the runs evaluated hold no results for {entry.setting.label()}; pass the runs it was fitted on")
        return outcomes[key][1][p]

    rows = []
    for budget in budgets:
        for mode in (ORACLE_MODE, "predicted", "predicted-batch"):
            source: BinSource = "oracle" if mode == ORACLE_MODE else "predicted"
            if source == "predicted" and not policy.probe_pays(budget_flops=budget):
                if mode == "predicted-batch":
                    continue  # no probe, so no bins to spread a batch over: the same as "predicted"
                entries = [policy.choose_unprobed(budget_flops=budget, strict=False)] * len(data.problems)
                values = [outcome(e, p, "oracle") for e, p in zip(entries, data.problems)]
                rows.append(_row(budget, mode + " (probe does not pay: none run)", values, curve,
                                 [e.setting.label() for e in entries]))
                continue
            if mode == "predicted-batch":
                try:
                    entries = policy.allocate_batch([bins[source][p] for p in data.problems], total_flops=budget * len(data.problems), source=source)
                except AllocationError:
                    continue  # the batch total is below the cheapest settings: no plan to evaluate
            else:
                entries = [policy.choose(bins[source][p], budget_flops=budget, source=source, strict=False) for p in data.problems]
            values = [outcome(e, p, source) for e, p in zip(entries, data.problems)]
            labels = [_label(policy, e, source) for e in entries]
            rows.append(_row(budget, mode, values, curve, labels, upper_bound=source == "oracle"))
    return {
        "problems": len(data.problems),
        "split": split,
        "bin_numbering": diff.NUMBERING,
        "bin_agreement": diff.bin_agreement(bins["predicted"], bins["oracle"]),
        "probe": probe_report(policy, data, bins),
        "oracle_bin_counts": _count(bins["oracle"].values()),
        "predicted_bin_counts": _count(bins["predicted"].values()),
        "best_of_n": [{"n": n, "flops": f, "accuracy": a} for n, f, a in curve],
        "rows": rows,
    }


def probe_report(policy: AllocationPolicy, data: FitData, bins: dict[str, dict[str, int]]) -> dict[str, Any]:
    """How the probe does on these problems: its cost next to one sample's, and its agreement with
    the oracle bins (confusion: oracle bin rows, predicted bin columns; Spearman of its value with pass@1)."""
    records = data.records()
    ids = list(records)
    if policy.probe.is_prefill:
        values = [data.probe_values[p] for p in ids]
    else:
        values = [diff.probe_of_record(records[p], policy.probe.k0, policy.probe.statistic) for p in ids]
    one = [v for s, v in data.outcomes.values() if s.reuses_probe and s.samples == 1 and not s.uses_gold]
    one_flops = float(np.mean([one[0][p][1] for p in ids])) if one else None
    probe_flops = float(np.mean([data.probe_flops[p] for p in ids]))
    off = [abs(bins["predicted"][p] - bins["oracle"][p]) for p in ids]
    return {
        "kind": policy.probe.describe(),
        "mean_flops": probe_flops,
        "best_of_1_flops": one_flops,
        "flops_vs_one_sample": probe_flops / one_flops if one_flops else None,
        "spearman_with_pass1": spearman(values, [records[p].pass1 for p in ids]),
        "spearman_95ci": spearman_interval(values, [records[p].pass1 for p in ids]),  # bootstrap over problems
        "within_one_bin": float(np.mean([d <= 1 for d in off])),
        "confusion": diff.confusion(bins["predicted"], bins["oracle"], policy.num_bins),
    }


def _row(budget: float, mode: str, values: Sequence[tuple[float, float]], curve, labels: Sequence[str],
         upper_bound: bool = False) -> dict[str, Any]:
    """One evaluation row: the policy's accuracy and FLOPs against best-of-N's."""
    accuracy = float(np.mean([v[0] for v in values]))
    flops = float(np.mean([v[1] for v in values]))
    needed = bon_flops_for(curve, accuracy)
    return {
        "budget_flops": budget, "mode": mode, "upper_bound": upper_bound, "accuracy": accuracy, "flops": flops,
        "bon_accuracy_at_flops": bon_accuracy_at(curve, flops),
        "bon_flops_for_accuracy": needed,
        "saving": needed / flops if needed is not None else None,
        "settings": dict(sorted(_count(labels).items())),
    }


def _label(policy: AllocationPolicy, entry: Entry, source: BinSource) -> str:
    """What a planned setting does, after the probe where there was one."""
    if source == "predicted" and policy.probe.is_prefill:
        return f"prefill probe + {entry.setting.label()}"
    return describe_setting(entry.setting, policy.probe.k0 if source == "predicted" else 0)


def _count(values: Iterable[Any]) -> dict[Any, int]:
    return dict(sorted(Counter(values).items()))
