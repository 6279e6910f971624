"""Compare strategies at matched compute: accuracy-vs-cost tables and the winner per budget.

Each curve's accuracy at a budget is interpolated linearly in log FLOPs between its two nearest
points; outside a curve's own range it has no value (no extrapolation). The winner at a budget
is the most accurate curve there, among those that gold answers did not guide (a curve's
`uses_gold`: the oracle rule, or a verifier that read gold): those are upper bounds, shown but
never winners. The interpolation is ttscale.analysis.runs.accuracy_at, the one every caller uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ttscale.analysis.runs import accuracy_at
from ttscale.analysis.scaling import Curve, CurvePoint

COST_AXES = ("flops", "eflops", "generated_tokens", "wall_s", "exec_cpu_s")
# How tables name each axis. exec_cpu_s: sandbox CPU seconds per problem (code rules, program of
# thought; ttscale.code_exec), a second cost beside FLOPs; a run that executed nothing has none.
AXIS_NAMES = {"flops": "FLOPs", "eflops": "eFLOPs", "generated_tokens": "generated tokens", "wall_s": "wall seconds",
              "exec_cpu_s": "execution CPU seconds"}


def cost_known(curve: Curve, axis: str = "flops") -> bool:
    """Whether every point of the curve has a cost on `axis` (NaN: its run could not count or
    price it, e.g. a model of unknown size). A curve without one is left out of the matched view."""
    return all(math.isfinite(p.cost(axis)) for p in curve.points)


def interpolate(curve: Curve, budget: float, axis: str = "flops") -> float | None:
    """The curve's accuracy at `budget` on a cost axis, linear in log cost; None out of range."""
    points = sorted(curve.points, key=lambda p: p.cost(axis))
    return accuracy_at([p.cost(axis) for p in points], [p.accuracy for p in points], budget)


def budget_grid(curves: Sequence[Curve], count: int = 8, axis: str = "flops") -> list[float]:
    """`count` log-spaced budgets from the cheapest to the most expensive point of the curves
    that compete (no gold), rounded to 3 significant digits."""
    costs = [p.cost(axis) for c in curves if not c.uses_gold for p in c.points if p.cost(axis) > 0]
    if not costs:
        return []
    low, high = min(costs), max(costs)
    if count <= 1 or low == high:
        return [_round3(high)]
    grid = np.exp(np.linspace(math.log(low), math.log(high), count))
    grid[0], grid[-1] = low, high  # keep the ends inside every range they came from
    return [float(g) if i in (0, count - 1) else _round3(float(g)) for i, g in enumerate(grid)]


def _round3(value: float) -> float:
    return float(f"{value:.3g}")


@dataclass
class BudgetRow:
    """One budget of the matched view: each curve's accuracy there, and who wins."""

    budget: float
    accuracy: dict[str, float | None]  # by curve label
    winners: list[str]  # labels of the most accurate non-gold curves (several on a tie)
    upper_bound: dict[str, float | None]  # curves that used gold (upper bounds), by label

    @property
    def winner(self) -> str:
        """The winner's label, ties joined by ' = ', or '—' when no curve reaches this budget."""
        return " = ".join(self.winners) if self.winners else "—"


def matched_budgets(
    curves: Sequence[Curve], budgets: Sequence[float] | None = None, *, count: int = 8, axis: str = "flops",
    tolerance: float = 1e-9,
) -> list[BudgetRow]:
    """Every competing curve's accuracy at the same budgets, and the winner at each."""
    budgets = list(budgets) if budgets else budget_grid(curves, count, axis)
    labels = unique_labels(curves)
    rows = []
    for budget in budgets:
        known = [c for c in curves if cost_known(c, axis)]
        accuracy = {labels[id(c)]: interpolate(c, budget, axis) for c in known if not c.uses_gold}
        upper = {labels[id(c)]: interpolate(c, budget, axis) for c in known if c.uses_gold}
        reached = {label: a for label, a in accuracy.items() if a is not None}
        best = max(reached.values()) if reached else None
        winners = [label for label, a in reached.items() if best is not None and a >= best - tolerance]
        rows.append(BudgetRow(budget, accuracy, winners, upper))
    return rows


def unique_labels(curves: Sequence[Curve]) -> dict[int, str]:
    """Each curve's label: its rule, plus whichever of strategy and model differ between the
    curves (see `common_label` for the rest), plus the run id where two would still match."""
    varying = [i for i in range(2) if len({_parts(c)[i] for c in curves}) > 1]
    short = {id(c): " · ".join([_parts(c)[i] for i in varying] + [c.rule]) for c in curves}
    counts: dict[str, int] = {}
    for label in short.values():
        counts[label] = counts.get(label, 0) + 1
    return {id(c): short[id(c)] if counts[short[id(c)]] == 1 else f"{short[id(c)]} [{c.run}]" for c in curves}


def common_label(curves: Sequence[Curve]) -> str:
    """What every curve shares (strategy, model), for titles: e.g. 'best-of-n · smollm2-135m'."""
    return " · ".join(values.pop() for i in range(2) if len(values := {_parts(c)[i] for c in curves}) == 1)


def _parts(curve: Curve) -> tuple[str, str]:
    return curve.strategy, curve.model


def table_points(curve: Curve, max_rows: int = 12) -> list[CurvePoint]:
    """The points worth a table row: N = 1, 2, 4, ... and the run's own N (all, if few)."""
    if len(curve.points) <= max_rows:
        return list(curve.points)
    keep = [p for p in curve.points if float(p.n).is_integer() and (int(p.n) & (int(p.n) - 1)) == 0]
    last = curve.points[-1]
    return keep + ([last] if last not in keep else [])
