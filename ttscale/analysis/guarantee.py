"""Adaptive compute with a guarantee: Learn then Test over each adaptive method's threshold.

`ttscale adaptive --epsilon E --delta D` calibrates a threshold on half a of a recorded best-of-N
run so that, with probability at least 1 - D over the calibration problems, the expected loss
against full best-of-N on new problems is at most E (Angelopoulos, Bates, Candes, Jordan, Lei
2021, "Learn then Test: Calibrating predictive algorithms to achieve risk control"):

- Loss per problem (`LOSSES`). "gold" (the default): 1 when full best-of-N majority's answer is
  right and the method's is not. Its mean bounds the accuracy the method loses against full
  best-of-N (acc(full) - acc(method) = P(full right, method wrong) - P(full wrong, method right)).
  It reads gold on the calibration problems only, as the paper's risk does; at inference the
  method reads none. "disagreement": 1 when the method's answer differs from full best-of-N's:
  no gold at all, so any unlabelled prompts calibrate it (run full best-of-N on them), and it
  bounds the gold loss from above (a method that agrees with full best-of-N loses nothing), at
  the price of counting every change of a wrong answer as a loss.
- Each problem's loss is its mean over the sample orders the replay averages (the recorded one
  and random permutations: exchangeable samples, so the mean's expectation is a new problem's
  risk), a number in [0, 1]; problems are assumed exchangeable with new ones.
- p-value of H_j: "risk of setting j > E", from the empirical risk R on n problems: the
  paper's Hoeffding-Bentkus p-value (as its reference code and MAPIE compute it),
  min(exp(-n h(min(R, E), E)), e P(Binomial(n, E) <= ceil(n R))), h the Bernoulli relative
  entropy. Bentkus' factor e is for losses in [0, 1]; when every loss is 0 or 1 (one sample
  order) the binomial tail is exact and the factor is 1 (the paper's binary-loss variant).
- Fixed-sequence testing (the paper's procedure for a parameter with a natural order): each
  method's settings are ordered from the most to the least conservative by its parameter,
  fixed before the data are seen (`threshold_paths`);
  H_1, H_2, ... are rejected at level D while p_j <= D, and testing stops at the first p_j > D.
  This controls the family-wise error at D, so every certified setting has risk <= E at once
  with probability >= 1 - D, and choosing the cheapest of them on half a (mean FLOPs) keeps the
  guarantee. Nothing certified: the method falls back to full best-of-N (risk 0, no saving).
- The guarantee is per method: choosing the best method after seeing half a would need D split
  among them (Bonferroni), which `guaranteed` does not do.

Half b then measures the chosen setting as a new deployment would meet it: its realised loss,
accuracy, and compute against full best-of-N's (FLOPs, eFLOPs and tokens priced by the replay
layer, ttscale.analysis.adaptive, through the one cost model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import special, stats

from ttscale.analysis.adaptive import (
    AXES,
    AdaptiveConsistencyReplay,
    DeepConfOnlineReplay,
    Method,
    Outcome,
    ProblemSamples,
    Replayed,
    baseline,
    halves,
    problem_samples,
    replay,
)
from ttscale.analysis.runs import Run
from ttscale.errors import ConfigError
from ttscale.selection import chosen_positions
from ttscale.stopping import StoppingRule

Loss = Literal["gold", "disagreement"]
LOSSES: tuple[Loss, ...] = ("gold", "disagreement")

# Each path runs from the most to the least conservative setting; the grids are fixed here, before
# any data are seen, as fixed-sequence testing requires.
POSTERIOR_THRESHOLDS = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)
CONSENSUS_PATH = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)  # DeepConf online tau: a higher share needed draws more
ETA_PATH = (100.0, 90.0, 75.0, 50.0, 25.0, 10.0)  # DeepConf online eta: more warm-up traces passing stops fewer traces
DEEPCONF_WARMUP = 4  # the strategy's default N_init
DEEPCONF_WINDOW = 16  # the strategy's default group window (ttscale.confidence.DEFAULT_WINDOW)
DEEPCONF_TAU = 0.95  # the paper's tau, where eta is swept
GIVE_UP = 4


def check_levels(epsilons: Sequence[float], delta: float) -> None:
    """A clear error for a risk level or an error rate outside (0, 1)."""
    for epsilon in epsilons:
        if not 0.0 < epsilon < 1.0:
            raise ConfigError(f"--epsilon {epsilon}: the accuracy loss allowed must lie in (0, 1), e.g. --epsilon 0.02")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"--delta {delta}: the chance the guarantee may fail must lie in (0, 1), e.g. --delta 0.1")


# -- the statistics -------------------------------------------------------------------------------


def hb_p_value(risk: float, n: int, epsilon: float, *, binary: bool = False) -> float:
    """The Hoeffding-Bentkus p-value of "the risk exceeds epsilon" from an empirical risk on n
    problems (losses in [0, 1]; `binary`: all 0 or 1, where the binomial tail is exact)."""
    clipped = min(risk, epsilon)
    hoeffding = math.exp(-n * (special.rel_entr(clipped, epsilon) + special.rel_entr(1.0 - clipped, 1.0 - epsilon)))
    losses = math.ceil(round(n * risk, 9))  # round: n * mean should be whole for 0/1 losses, not 3.0000000004
    bentkus = (1.0 if binary else math.e) * float(stats.binom.cdf(losses, n, epsilon))
    return float(min(hoeffding, bentkus, 1.0))


def fixed_sequence(p_values: Sequence[float], delta: float) -> int:
    """How many hypotheses, tested in their fixed order, are rejected at level delta: testing
    stops at the first p-value above delta (later small ones are never reached)."""
    for j, p in enumerate(p_values):
        if p > delta:
            return j
    return len(p_values)


def required_n(risk: float, epsilon: float, delta: float, *, binary: bool = False, limit: int = 1_000_000) -> int | None:
    """The fewest calibration problems at which an empirical risk of `risk` would be certified
    (p-value <= delta), were the risk the same at every n; None when risk >= epsilon or beyond `limit`."""
    if risk >= epsilon:
        return None
    start = 1
    while start <= limit:  # in growing blocks: most answers are small, a few need 10^5
        end = min(start * 10, limit)
        n = np.arange(start, end + 1, dtype=np.float64)
        hoeffding = np.exp(-n * (special.rel_entr(risk, epsilon) + special.rel_entr(1.0 - risk, 1.0 - epsilon)))
        bentkus = (1.0 if binary else math.e) * stats.binom.cdf(np.ceil(np.round(n * risk, 9)), n, epsilon)
        passing = np.flatnonzero(np.minimum(hoeffding, bentkus) <= delta)
        if passing.size:
            return int(n[passing[0]])
        start = end + 1
    return None


@dataclass
class Calibration:
    """Learn then Test over one path of settings (most conservative first) on n problems."""

    risks: np.ndarray  # empirical risk of each setting
    p_values: np.ndarray
    certified: int  # settings 0..certified-1 are certified (risk <= epsilon, jointly, w.p. >= 1 - delta)
    chosen: int | None  # the cheapest certified setting, None when none is
    binary: bool  # every loss was 0 or 1 (the exact binomial tail was used)

    def needed(self, epsilon: float, delta: float) -> list[int | None]:
        """Per setting: the fewest problems that would certify it and every setting before it,
        were the empirical risks the same at that n (None: a risk on the way is >= epsilon)."""
        needed: list[int | None] = []
        for risk in self.risks:
            own = required_n(float(risk), epsilon, delta, binary=self.binary)
            before = needed[-1] if needed else 0
            needed.append(None if own is None or before is None else max(own, before))
        return needed

    def needed_for_saving(self, epsilon: float, delta: float, costs: Sequence[float], full_cost: float) -> tuple[int, int] | None:
        """The fewest calibration problems that would certify a setting cheaper than `full_cost`
        (at the same empirical risks), and the cheapest setting then certified; None when no
        setting cheaper than full best-of-N can be certified at any n."""
        needed = self.needed(epsilon, delta)
        saving = [n for n, cost in zip(needed, costs) if n is not None and cost < full_cost * (1 - 1e-9)]
        if not saving:
            return None
        n = min(saving)
        return n, min((j for j, m in enumerate(needed) if m is not None and m <= n), key=lambda j: costs[j])


def calibrate(losses: np.ndarray, costs: Sequence[float], epsilon: float, delta: float) -> Calibration:
    """Fixed-sequence Learn then Test: `losses` (settings x problems, in [0, 1], settings most
    conservative first), `costs` each setting's mean cost on the same problems."""
    losses = np.asarray(losses, dtype=np.float64)
    n = losses.shape[1]
    binary = bool(np.isin(losses, (0.0, 1.0)).all())
    risks = losses.mean(axis=1)
    p_values = np.asarray([hb_p_value(float(r), n, epsilon, binary=binary) for r in risks])
    certified = fixed_sequence(p_values, delta)
    chosen = min(range(certified), key=lambda j: costs[j]) if certified else None
    return Calibration(risks, p_values, certified, chosen, binary)


# -- the methods' threshold paths -------------------------------------------------------------------


@dataclass(frozen=True)
class MajorityReplay:
    """Best-of-k majority (no adaptivity): the first k samples as one request, their majority."""

    k: int
    label: str = ""

    def replay(self, problem: ProblemSamples, order: np.ndarray) -> Outcome:
        drawn = order[: self.k]
        chosen = chosen_positions("majority", problem.classes, np.ones(problem.n), drawn[None, :])[0]
        return Outcome(drawn, problem.tokens[drawn], int(chosen), (len(drawn),))


@dataclass(frozen=True)
class ThresholdPath:
    """One method's settings, from the most to the least conservative by its parameter."""

    family: str
    parameter: str
    methods: tuple[Method, ...]


def threshold_paths(run: Run) -> list[ThresholdPath]:
    """Every adaptive method with a threshold that the replay supports, each along its natural
    order (DeepConf only when the run recorded token confidences), and best-of-k majority's k as
    the non-adaptive reference."""
    n = min(r.n for r in run.records)

    def posterior(rule: str, give_up: int | None = None) -> tuple[Method, ...]:
        suffix = f", give up at {give_up}" if give_up else ""
        return tuple(AdaptiveConsistencyReplay(StoppingRule(rule=rule, threshold=t, give_up=give_up), 1, f"{rule} p>={t}{suffix}")
                     for t in POSTERIOR_THRESHOLDS)

    paths = [
        ThresholdPath("adaptive-consistency (beta)", "threshold 0.999 down to 0.5", posterior("beta")),
        ThresholdPath("adaptive-consistency (beta, give up)", "threshold 0.999 down to 0.5", posterior("beta", GIVE_UP)),
        ThresholdPath("adaptive-consistency (dirichlet)", "threshold 0.999 down to 0.5", posterior("dirichlet")),
        ThresholdPath("ESC", f"window {n} down to 2", tuple(
            AdaptiveConsistencyReplay(StoppingRule(rule="esc", window=w), w, f"window {w}") for w in range(n, 1, -1))),
    ]
    if all(s.token_confidences is not None for r in run.records for s in r.samples):
        def online(eta: float, tau: float, label: str) -> DeepConfOnlineReplay:
            return DeepConfOnlineReplay(n, DEEPCONF_WARMUP, eta, tau, DEEPCONF_WINDOW, label=label)

        fixed = f"warm-up {DEEPCONF_WARMUP}, window {DEEPCONF_WINDOW}"
        for eta, name in ((90.0, "high"), (10.0, "low")):
            paths.append(ThresholdPath(f"DeepConf online ({name}, eta={eta:g})", f"tau 1.0 down to 0.5; {fixed}",
                                       tuple(online(eta, tau, f"tau {tau}") for tau in CONSENSUS_PATH)))
        paths.append(ThresholdPath(f"DeepConf online (tau={DEEPCONF_TAU})", f"eta 100 down to 10; {fixed}",
                                   tuple(online(eta, DEEPCONF_TAU, f"eta {eta:g}") for eta in ETA_PATH)))
    paths.append(ThresholdPath("best-of-k majority (not adaptive)", f"k {n - 1} down to 1",
                               tuple(MajorityReplay(k, f"k={k}") for k in range(n - 1, 0, -1))))
    return paths


# -- calibrate on half a, measure on half b ---------------------------------------------------------


@dataclass
class GuaranteeResult:
    """One method at one (epsilon, delta): what half a certified, what half b then saw."""

    family: str
    parameter: str
    epsilon: float
    delta: float
    loss: Loss
    n_fit: int
    settings: list[str]
    calibration: Calibration
    setting: str  # the chosen setting, or "full best-of-N" when none is certified
    fit_risk: float  # its empirical risk on half a (0 for full best-of-N)
    p_value: float  # its p-value (nan for full best-of-N)
    realised_loss: float  # half b: full best-of-N right, the method wrong (gold)
    realised_disagreement: float  # half b: the answers differ
    accuracy: float  # half b
    full_accuracy: float  # full best-of-N majority on half b
    samples: float
    cost: dict[str, float]
    full_cost: dict[str, float]
    needed_for_saving: tuple[int, str] | None  # the fewest problems that would certify a saving, and the setting then

    @property
    def saving(self) -> dict[str, float]:
        """Full best-of-N's cost over the method's, on half b, per axis."""
        return {axis: self.full_cost[axis] / self.cost[axis] for axis in AXES}



def guaranteed(run: Run, epsilons: Sequence[float], delta: float, *, loss: Loss = "gold", orders: int = 20, seed: int = 0,
               paths: Sequence[ThresholdPath] | None = None) -> list[GuaranteeResult]:
    """Each path calibrated on half a at every epsilon (one replay serves them all), the chosen
    setting measured on half b against full best-of-N majority."""
    check_levels(epsilons, delta)
    if loss not in LOSSES:
        raise ConfigError(f"--loss {loss!r}: choose one of {', '.join(LOSSES)}")
    fit_ids, eval_ids = halves(run)
    by_id = {r.problem_id: r for r in run.records}
    fit_problems = [problem_samples(run, by_id[pid]) for pid in fit_ids]
    eval_problems = [problem_samples(run, by_id[pid]) for pid in eval_ids]
    full = baseline(run, eval_ids, seed=seed)
    full_cost = {axis: float(full.cost[axis][-1].mean()) for axis in AXES}
    fit_full_flops = float(baseline(run, fit_ids, seed=seed).cost["flops"][-1].mean())
    full_accuracy = float(full.correct[-1].mean())
    results = []
    for path in paths if paths is not None else threshold_paths(run):
        fitted = [replay(run, fit_problems, m, orders=orders, seed=seed) for m in path.methods]
        losses = np.stack([r.lost if loss == "gold" else r.disagree for r in fitted])
        costs = [r.mean("flops") for r in fitted]
        measured: dict[int, Replayed] = {}
        for epsilon in epsilons:
            calibration = calibrate(losses, costs, epsilon, delta)
            needed = calibration.needed_for_saving(epsilon, delta, costs, fit_full_flops)
            needed_setting = None if needed is None else (needed[0], path.methods[needed[1]].label)
            j = calibration.chosen
            if j is None:
                results.append(GuaranteeResult(path.family, path.parameter, epsilon, delta, loss, len(fit_ids),
                                               [m.label for m in path.methods], calibration, "full best-of-N", 0.0,
                                               math.nan, 0.0, 0.0, full_accuracy, full_accuracy, float(full.ks[-1]),
                                               dict(full_cost), full_cost, needed_setting))
                continue
            if j not in measured:
                measured[j] = replay(run, eval_problems, path.methods[j], orders=orders, seed=seed)
            held = measured[j]
            results.append(GuaranteeResult(
                path.family, path.parameter, epsilon, delta, loss, len(fit_ids), [m.label for m in path.methods],
                calibration, path.methods[j].label, float(calibration.risks[j]), float(calibration.p_values[j]),
                float(held.lost.mean()), float(held.disagree.mean()), float(held.correct.mean()), full_accuracy,
                held.mean("samples"), {axis: held.mean(axis) for axis in AXES}, full_cost, needed_setting))
    return results
