"""Scaling curves without new generation: a run at every budget it allows, per selection rule.

The subsampling, pricing, selection and gold taint are ttscale.analysis.runs'; this module
turns them into curves with bootstrap bands over problems, for compare, report and plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ttscale.analysis.passk import pass_at_k
from ttscale.analysis.runs import COST_KEYS, Run, subsample


@dataclass
class CurvePoint:
    """A budget on a curve: accuracy (with a bootstrap band) and mean cost per problem."""

    n: float  # samples per problem (DVTS: mean candidates kept)
    accuracy: float
    ci_low: float
    ci_high: float
    flops: float
    eflops: float
    generated_tokens: float
    prompt_tokens: float
    wall_s: float
    measured: bool = False  # the run's own budget, not a subsample
    exec_cpu_s: float = math.nan  # sandbox CPU seconds (NaN: the run executed nothing)

    def cost(self, axis: str) -> float:
        """The cost on one axis: flops, eflops, generated_tokens, wall_s or exec_cpu_s."""
        return float(getattr(self, axis))


@dataclass
class Curve:
    """Accuracy against cost of one strategy and selection rule from one run."""

    run: str
    strategy: str
    rule: str
    model: str
    num_params: int
    kind: str
    points: list[CurvePoint]
    problem_ids: list[str]
    per_problem: np.ndarray  # (points, problems): each problem's expected correctness
    difficulty: dict[str, float] = field(default_factory=dict)
    uses_gold: bool = False  # gold answers guided it (Run.uses_gold): an upper bound, never a winner

    @property
    def label(self) -> str:
        """A short legend entry: strategy · rule · model."""
        return f"{self.strategy} · {self.rule} · {self.model}"


UPPER_BOUND = "(upper bound: uses gold)"  # how every table and plot marks a curve that used gold


def scaling_curves(run: Run, *, subsets: int = 200, bootstrap: int = 1000, seed: int = 0,
                   ns: Sequence[int] | None = None, rules: Sequence[str] | None = None) -> list[Curve]:
    """One curve per selection rule of a run: every smaller N by subsampling, where the
    strategy allows it (best-of-N by sample, DVTS by subtree), else the run's one point."""
    table = subsample(run, ns=ns, rules=rules, subsets=subsets, seed=seed)
    problems = len(table.problem_ids)
    bootstrap_idx = np.random.default_rng(seed).integers(0, problems, size=(bootstrap, problems))
    difficulty = {r.problem_id: r.difficulty for r in run.records if r.difficulty is not None}
    curves = []
    for rule in table.rules:
        correct = table.correct[rule]
        points = []
        for i, n in enumerate(table.n):
            accuracy = float(correct[i].mean())
            low, high = _bootstrap_band(correct[i], bootstrap_idx) if bootstrap else (accuracy, accuracy)
            costs = {key: float(table.cost[key][i].mean()) for key in COST_KEYS}
            points.append(CurvePoint(n, accuracy, low, high, measured=table.measured[i], **costs))
        curves.append(Curve(run.name, run.strategy, rule, run.model, run.num_params, run.kind, points,
                            table.problem_ids, correct, difficulty, run.uses_gold(rule)))
    return curves


def _bootstrap_band(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    means = values[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def coverage_curve(run: Run) -> tuple[list[int], list[float]]:
    """Mean pass@k over problems for k = 1..N (exact, unbiased estimator): coverage vs k."""
    n_max = min(r.n for r in run.records)
    ks = list(range(1, n_max + 1))
    return ks, [float(np.mean([pass_at_k(r.n, r.num_correct, k) for r in run.records])) for k in ks]


def bin_ranges(bins: dict[str, int], values: dict[str, float]) -> dict[int, tuple[float, float]]:
    """The lowest and highest value in each bin."""
    ranges: dict[int, tuple[float, float]] = {}
    for pid, b in bins.items():
        lo, hi = ranges.get(b, (values[pid], values[pid]))
        ranges[b] = (min(lo, values[pid]), max(hi, values[pid]))
    return ranges
