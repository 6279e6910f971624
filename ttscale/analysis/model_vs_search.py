"""A small model with test-time compute vs a larger model answering once, at matched FLOPs
(Snell et al. 2024, §7 "exchanging pretraining and test-time compute").

Pretraining costs X = 6·P·D_pretrain and inference Y = 2·P·D_inference. A model M times larger
costs M·(X + Y) in all. The small model matches that total by spending k times its inference
budget: X + k·Y = M·(X + Y), so

    k = M + (M − 1)·X/Y = M + 3·(D_pretrain/D_inference)·(M − 1) = M + 3·(M − 1)/R

with R = D_inference/D_pretrain (the paper uses 0.16, 0.79 and 22). The question per difficulty
bin: does the small model's best strategy at k times its one-sample FLOPs reach the larger
model's pass@1 there?
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ttscale.analysis.compare import unique_labels
from ttscale.analysis.scaling import Curve

SNELL_RATIOS = (0.16, 0.79, 22.0)


def pretraining_flops(num_params: float, pretrain_tokens: float) -> float:
    """X = 6·P·D_pretrain."""
    return 6.0 * num_params * pretrain_tokens


def inference_flops(num_params: float, inference_tokens: float) -> float:
    """Y = 2·P·D_inference."""
    return 2.0 * num_params * inference_tokens


def scaled_model_flops(multiplier: float, pretrain: float, inference: float) -> float:
    """Total FLOPs of a model with M times the parameters: M·(X + Y)."""
    return multiplier * (pretrain + inference)


def matched_multiplier(multiplier: float, ratio: float) -> float:
    """k = M + 3·(M − 1)/R: the small model's test-time FLOPs multiplier that matches a model
    M times larger, for R = D_inference/D_pretrain."""
    if multiplier < 1 or ratio <= 0:
        raise ValueError(f"need M >= 1 and R > 0, got M={multiplier}, R={ratio}")
    return multiplier + 3.0 * (multiplier - 1.0) / ratio


@dataclass
class MatchRow:
    """One (R, difficulty bin) cell of the small-vs-large comparison."""

    ratio: float
    bin: str
    multiplier: float  # M: parameter ratio
    matched: float  # k: the small model's matched test-time multiplier
    large_accuracy: float
    small_accuracy: float | None  # the best small-model strategy within k times one sample's FLOPs
    small_strategy: str | None
    reaches_at: float | None  # the least multiplier at which the small model reaches the large one
    available: float  # the largest multiplier the small model's runs measured
    verdict: str


def _bin_accuracy(curve: Curve, point: int, problems: set[str] | None) -> float | None:
    values = [v for pid, v in zip(curve.problem_ids, curve.per_problem[point]) if problems is None or pid in problems]
    return sum(values) / len(values) if values else None


def _multipliers(curve: Curve, one_sample_flops: float) -> list[float]:
    return [p.flops / one_sample_flops for p in curve.points]


def best_within(curves: Sequence[Curve], one_sample_flops: float, budget: float,
                problems: set[str] | None = None) -> tuple[float | None, str | None]:
    """The best accuracy (and its curve) any small-model curve reaches within `budget` times
    one sample's FLOPs: its points up to the budget, and its value interpolated (linear in log
    FLOPs) at the budget. A strategy can always spend less, so cheaper points count."""
    labels = unique_labels(curves)
    best: tuple[float | None, str | None] = (None, None)
    for curve in curves:
        mults = _multipliers(curve, one_sample_flops)
        accs = [_bin_accuracy(curve, i, problems) for i in range(len(curve.points))]
        candidates = [a for m, a in zip(mults, accs) if a is not None and m <= budget * (1 + 1e-9)]
        for (m0, a0), (m1, a1) in zip(zip(mults, accs), zip(mults[1:], accs[1:])):
            if a0 is not None and a1 is not None and m0 < budget < m1:
                t = (math.log(budget) - math.log(m0)) / (math.log(m1) - math.log(m0))
                candidates.append(a0 + t * (a1 - a0))
        if candidates and (best[0] is None or max(candidates) > best[0]):
            best = (max(candidates), labels[id(curve)])
    return best


def reaches_at(curves: Sequence[Curve], one_sample_flops: float, target: float,
               problems: set[str] | None = None) -> float | None:
    """The least multiplier at which some small-model curve reaches `target` accuracy
    (interpolated linearly in log FLOPs), or None if none does within its measured budgets."""
    found: list[float] = []
    for curve in curves:
        mults = _multipliers(curve, one_sample_flops)
        accs = [_bin_accuracy(curve, i, problems) for i in range(len(curve.points))]
        if accs and accs[0] is not None and accs[0] >= target:
            found.append(mults[0])
            continue
        for (m0, a0), (m1, a1) in zip(zip(mults, accs), zip(mults[1:], accs[1:])):
            if a0 is None or a1 is None:
                continue
            if a0 < target <= a1:
                t = (target - a0) / (a1 - a0)
                found.append(math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0))))
                break
    return min(found) if found else None


def small_vs_large(
    small: Sequence[Curve],
    large_accuracy: dict[str, float],
    *,
    multiplier: float,
    one_sample_flops: float,
    bins: dict[str, set[str] | None],
    ratios: Sequence[float] = SNELL_RATIOS,
) -> list[MatchRow]:
    """For each R and difficulty bin: the small model's best accuracy at its matched multiplier
    k = M + 3(M−1)/R against the larger model's pass@1, and who wins.

    `small` are the small model's curves that need no gold answer; `large_accuracy` maps each
    bin name to the larger model's pass@1; `bins` maps each bin name to its problem ids (None
    for all problems); `one_sample_flops` is the small model's FLOPs per problem for one sample.
    """
    small = [c for c in small if not c.uses_gold]
    available = max((m for c in small for m in _multipliers(c, one_sample_flops)), default=0.0)
    rows = []
    for ratio in ratios:
        k = matched_multiplier(multiplier, ratio)
        for name, problems in bins.items():
            target = large_accuracy[name]
            accuracy, strategy = best_within(small, one_sample_flops, k, problems)
            at = reaches_at(small, one_sample_flops, target, problems)
            if accuracy is not None and accuracy >= target:
                verdict = "small model + search"
            elif k <= available * (1 + 1e-9):
                verdict = "larger model"
            else:
                verdict = f"undecided: k={k:.3g} exceeds the measured {available:.3g}"
            rows.append(MatchRow(ratio, name, multiplier, k, target, accuracy, strategy, at, available, verdict))
    return rows
