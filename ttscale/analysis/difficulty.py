"""Difficulty bins (Snell et al.): 5 quantile bins of per-problem pass@1.

Bin 0 holds the lowest pass@1 (the hardest problems), bin 4 the highest. "Oracle" bins come
from graded samples; "predicted" bins from a cheap probe that needs no gold answer: the answer
agreement of k0 samples (the share of them in the largest group of equivalent answers), or their
mean verifier score. Both are binned by quantile edges learned on the fitting problems.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import numpy as np

from ttscale.strategies._selection import answer_groups
from ttscale.types import Candidate

NUM_BINS = 5
ProbeStatistic = Literal["agreement", "verifier"]


def quantile_edges(values: Sequence[float], num_bins: int = NUM_BINS) -> list[float]:
    """The num_bins - 1 inner edges that cut `values` into equal-count quantile bins."""
    if len(values) == 0:
        raise ValueError("no values to take quantiles of")
    return [float(q) for q in np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, num_bins + 1)[1:-1])]


def assign_bins(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """The bin of each value: how many edges lie strictly below it (ties go to the lower bin)."""
    return [int(b) for b in np.searchsorted(np.asarray(edges), np.asarray(values, dtype=float), side="left")]


def oracle_pass1(record: dict[str, Any]) -> float:
    """A problem's pass@1 from its graded samples: correct / n."""
    if not record["n"]:
        raise ValueError(f"problem {record['problem_id']!r} has no samples; pass@1 needs at least one")
    return record["num_correct"] / record["n"]


def oracle_bins(records: Sequence[dict[str, Any]], num_bins: int = NUM_BINS) -> tuple[list[float], dict[str, int]]:
    """Quantile edges of per-problem pass@1, and each problem's oracle bin."""
    pass1 = [oracle_pass1(r) for r in records]
    edges = quantile_edges(pass1, num_bins)
    return edges, dict(zip((r["problem_id"] for r in records), assign_bins(pass1, edges)))


def agreement(answers: Sequence[str | None], equivalent: Callable[[str, str], bool] = str.__eq__) -> float:
    """Self-agreement of a probe: the share of samples in the largest group of equal answers.

    Samples with no answer count in the denominator, so a probe that never answers scores 0.
    """
    if not answers:
        raise ValueError("a probe needs at least one sample")
    candidates = [Candidate(text="", answer=a, num_tokens=0, finish_reason="stop") for a in answers]
    groups = answer_groups(candidates, equivalent)
    return max((len(g) for g in groups), default=0) / len(answers)


def probe_statistic(candidates: Sequence[dict[str, Any]], statistic: ProbeStatistic) -> float:
    """The probe's difficulty signal from its candidates (records' candidate dicts); higher = easier."""
    if statistic == "agreement":
        return agreement([c["answer"] for c in candidates])
    scores = [c.get("score") for c in candidates]
    if any(s is None for s in scores):
        raise ValueError("probe statistic 'verifier' needs verifier scores on the candidates; use 'agreement' or a run with --verifier")
    return float(np.mean(scores))


def probe_of_record(record: dict[str, Any], k0: int, statistic: ProbeStatistic) -> float:
    """The probe a run's problem would have given: its statistic over the first k0 samples."""
    if record["n"] < k0:
        raise ValueError(f"problem {record['problem_id']!r} has {record['n']} samples; the probe needs k0={k0}")
    return probe_statistic(record["candidates"][:k0], statistic)


def bin_agreement(predicted: dict[str, int], oracle: dict[str, int]) -> float:
    """How often the predicted bin equals the oracle bin, over the problems both cover."""
    shared = predicted.keys() & oracle.keys()
    if not shared:
        raise ValueError("no problems have both a predicted and an oracle bin")
    return sum(predicted[p] == oracle[p] for p in shared) / len(shared)
