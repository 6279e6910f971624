"""Difficulty bins (Snell et al.): 5 quantile bins. The one binning, with one numbering:

    bin 0 holds the hardest problems, bin NUM_BINS - 1 the easiest.

Every table, plot, policy and CLI message uses it (NUMBERING says it in words). A value binned
is an *ease*: higher = easier. "Oracle" bins bin per-problem pass@1 of graded samples (or, in
compare, a benchmark's own difficulty, negated); "predicted" bins bin a cheap probe that needs no
gold answer: the answer agreement of k0 samples (the share of them in the largest group of
equivalent answers), or their mean verifier score; or, costing one prefill and no samples, the
pass@1 that a regressor predicts from the model's hidden states of the prompt (ttscale.probe). Edges are quantiles learned on the fitting
problems; ties go to the lower (harder) bin.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np

from ttscale.selection import answer_classes

NUM_BINS = 5
NUMBERING = "bin 0 = hardest"
ProbeStatistic = Literal["agreement", "verifier", "prefill"]
SAMPLE_STATISTICS = ("agreement", "verifier")  # statistics of k0 samples; "prefill" reads the prompt (ttscale.probe)


def quantile_edges(values: Sequence[float], num_bins: int = NUM_BINS) -> list[float]:
    """The num_bins - 1 inner edges that cut `values` into equal-count quantile bins."""
    if len(values) == 0:
        raise ValueError("no values to take quantiles of")
    return [float(q) for q in np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, num_bins + 1)[1:-1])]


def assign_bins(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """The bin of each ease value: how many edges lie strictly below it (ties go to the lower bin)."""
    return [int(b) for b in np.searchsorted(np.asarray(edges), np.asarray(values, dtype=float), side="left")]


def bin_values(values: dict[str, float], num_bins: int = NUM_BINS) -> tuple[list[float], dict[str, int]]:
    """Quantile edges of per-problem ease values, and each problem's bin (0 = hardest)."""
    edges = quantile_edges(list(values.values()), num_bins)
    return edges, dict(zip(values, assign_bins(list(values.values()), edges)))


def oracle_bins(records: Sequence, num_bins: int = NUM_BINS) -> tuple[list[float], dict[str, int]]:
    """Quantile edges of per-problem pass@1, and each problem's oracle bin (records: analysis.runs.Record)."""
    return bin_values({r.problem_id: r.pass1 for r in records}, num_bins)


def compare_bins(records: Sequence, num_bins: int = NUM_BINS) -> tuple[dict[str, int], dict[str, float], str]:
    """The bins compare and report show: (bins, each problem's ease, what the ease is).

    The benchmark's own difficulty when every record has one and it takes several values (few
    distinct values: one bin each), else oracle bins of pass@1 over the run's samples.
    """
    given = [r.difficulty for r in records]
    if all(d is not None for d in given) and len(set(given)) > 1:
        ease = {r.problem_id: -float(r.difficulty) for r in records}
        source = "the benchmark's difficulty"
    else:
        ease = {r.problem_id: r.pass1 for r in records}
        source = "quantiles of pass@1 over the run's samples"
    distinct = sorted(set(ease.values()))
    if len(distinct) <= num_bins:
        return {pid: distinct.index(v) for pid, v in ease.items()}, ease, source
    return bin_values(ease, num_bins)[1], ease, source


def agreement(answers: Sequence[str | None], equivalent: Callable[[str, str], bool] = str.__eq__) -> float:
    """Self-agreement of a probe: the share of samples in the largest group of equal answers.

    Samples with no answer count in the denominator, so a probe that never answers scores 0.
    """
    if not answers:
        raise ValueError("a probe needs at least one sample")
    classes = answer_classes(answers, equivalent)
    answered = classes[classes >= 0]
    return float(np.bincount(answered).max()) / len(answers) if len(answered) else 0.0


def probe_statistic(answers: Sequence[str | None], scores: Sequence[float | None], statistic: ProbeStatistic) -> float:
    """The probe's difficulty signal from its samples' answers and scores; higher = easier."""
    if statistic == "agreement":
        return agreement(answers)
    if statistic == "prefill":
        raise ValueError("the prefill probe reads the prompt, not samples: predict with ttscale.probe.PrefillRegressor")
    if not scores or any(s is None for s in scores):
        raise ValueError("probe statistic 'verifier' needs verifier scores on the samples; "
                         "use 'agreement', or a run (and a plan) with a verifier")
    return float(np.mean(scores))


def probe_of_record(record, k0: int, statistic: ProbeStatistic) -> float:
    """The probe a run's problem would have given: its statistic over the first k0 samples."""
    if record.n < k0:
        raise ValueError(f"problem {record.problem_id!r} has {record.n} samples; the probe needs k0={k0}")
    probe = record.samples[:k0]
    return probe_statistic([s.answer for s in probe], [s.score for s in probe], statistic)


def bin_agreement(predicted: dict[str, int], oracle: dict[str, int]) -> float:
    """How often the predicted bin equals the oracle bin, over the problems both cover."""
    shared = predicted.keys() & oracle.keys()
    if not shared:
        raise ValueError("no problems have both a predicted and an oracle bin")
    return sum(predicted[p] == oracle[p] for p in shared) / len(shared)


def confusion(predicted: dict[str, int], oracle: dict[str, int], num_bins: int = NUM_BINS) -> list[list[int]]:
    """Counts of problems by oracle bin (rows) and predicted bin (columns), over the problems both cover."""
    matrix = np.zeros((num_bins, num_bins), dtype=int)
    for p in predicted.keys() & oracle.keys():
        matrix[oracle[p], predicted[p]] += 1
    return matrix.tolist()
