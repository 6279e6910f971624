"""Adaptive compute replayed from a recorded best-of-N run: no new generation, no gold at inference.

Sample i of best-of-N carries the seed s+i whichever request draws it (vLLM's parallel sampling),
so an adaptive run (`adaptive-consistency`, DeepConf online) draws a prefix of the recorded
samples, and cuts some of them short: what it would have answered and spent can be read off the
recorded run (tests/test_adaptive.py and tests/test_deepconf.py check both equalities on the
fake backend). The samples are exchangeable, so each method is replayed over the recorded order
and over random permutations of it, and the outcome averaged: less noise than one order.

Every replay is priced by the one cost model (`ttscale.cost.request_costs`, cache-independent)
as the live strategy sends its requests (`Outcome.requests`): adaptive-consistency a request per
batch, DeepConf online its warm-up then a request per streamed trace, a vote at k one request of
k. Each drawn sample's tokens count (a stopped trace's up to where it stopped), the prompt's
prefill once (later requests repeat it: structurally cached), and every request its own reading
of the prompt's KV cache (eFLOPs). tests/test_adaptive_replay.py checks tokens, FLOPs and eFLOPs
against live runs of every method.

Held-out protocol (`held_out`): the problems are split in halves by a stable hash of their id
(`ttscale.problems.split_of`). On half a, each method picks its cheapest setting that
reaches best-of-N majority's accuracy at the run's full N; on half b that setting is measured and
set against the best-of-N majority curve of half b: the compute best-of-N needs for the same
accuracy, over the compute the method spent. Bootstrap resampling of half b's problems gives the
interval. Nothing here reads gold except the grading of the answers the methods chose.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from ttscale.analysis.runs import Record, Run, subsample, unknown_as_nan
from ttscale.analysis.scaling import Curve, CurvePoint
from ttscale.cost import request_costs
from ttscale.errors import ConfigError
from ttscale.problems import split_of
from ttscale.confidence import DEFAULT_WINDOW, online_replay, topk_certainty, trace_score
from ttscale.selection import answer_classes, chosen_positions, filtered_positions
from ttscale.stopping import StoppingRule, leading_class, stop_index

AXES = ("flops", "eflops", "generated_tokens")  # compute at equal accuracy is reported on each


@dataclass(frozen=True, eq=False)  # hashed by identity: trace_scores caches per problem object
class ProblemSamples:
    """One recorded best-of-N problem as a method sees it: answers (as classes), lengths and each
    token's confidence; `correct` is only read to grade the method's choice afterwards."""

    record: Record
    classes: np.ndarray
    tokens: np.ndarray
    confidences: tuple[np.ndarray, ...] | None
    correct: np.ndarray
    k: int = 0  # the top-k the confidences were read from (the run's -S logprobs)

    @property
    def n(self) -> int:
        """How many samples were recorded."""
        return len(self.classes)


@dataclass(frozen=True)
class Outcome:
    """A method on one problem in one sample order: which samples it drew (in draw order), how
    many tokens each of them generated (a stopped trace: up to its stop), and its choice."""

    drawn: np.ndarray
    tokens: np.ndarray
    chosen: int  # the index of the sample whose answer it gives, -1 for none
    requests: tuple[int, ...]  # how many of the drawn samples each request held, as the live strategy sends them


class Method(Protocol):
    """An adaptive method replayed on recorded samples."""

    label: str

    def replay(self, problem: ProblemSamples, order: np.ndarray) -> Outcome: ...


@dataclass(frozen=True)
class AdaptiveConsistencyReplay:
    """`adaptive-consistency`: draw in batches until the stopping rule settles; the rule's answer
    (ESC: the unanimous window's, else the majority: `StoppingRule.answer_position`)."""

    rule: StoppingRule
    batch: int = 1
    label: str = ""

    def replay(self, problem: ProblemSamples, order: np.ndarray) -> Outcome:
        drawn = order[: stop_index(problem.classes[order], self.rule, self.batch)]
        position = self.rule.answer_position(problem.classes[drawn].tolist())
        requests = tuple(min(self.batch, len(drawn) - start) for start in range(0, len(drawn), self.batch))
        return Outcome(drawn, problem.tokens[drawn], int(drawn[position]) if position >= 0 else -1, requests)


@dataclass(frozen=True)
class DeepConfOnlineReplay:
    """DeepConf online: warm-up traces set the threshold, later traces stop when their group
    confidence falls below it, sampling stops at consensus (ttscale.confidence.online_replay,
    the function the strategy's test checks against a live online run). The warm-up is one
    request; every later trace is streamed as a request of its own."""

    n: int
    warmup: int
    eta: float
    consensus: float
    window: int = DEFAULT_WINDOW
    label: str = ""

    def replay(self, problem: ProblemSamples, order: np.ndarray) -> Outcome:
        result = online_replay([problem.confidences[i] for i in order], problem.classes[order], n=self.n,
                               warmup=self.warmup, eta=self.eta, window=self.window, consensus=self.consensus)
        drawn = order[: result.drawn]
        warmup = min(self.warmup, result.drawn)
        requests = (warmup,) * bool(warmup) + (1,) * (result.drawn - warmup)
        return Outcome(drawn, np.asarray(result.tokens, dtype=np.int64), int(order[result.winner]) if result.winner >= 0 else -1,
                       requests)


@dataclass(frozen=True)
class ScoredVoteReplay:
    """k full traces, then a vote weighted by each trace's own confidence: DeepConf offline's
    filtered vote (keep the top eta%), or best-of-N's verifier-free weighted vote (eta None).
    The k traces are one request, as DeepConf offline and best-of-N draw them."""

    k: int
    score: str  # a ttscale.confidence trace score, or "topk-certainty" / "mean-logprob"
    eta: float | None = None
    window: int = DEFAULT_WINDOW
    label: str = ""

    def replay(self, problem: ProblemSamples, order: np.ndarray) -> Outcome:
        drawn = order[: self.k]
        scores = trace_scores(problem, self.score, self.window)
        if self.eta is None:
            chosen = chosen_positions("weighted-vote", problem.classes, scores, drawn[None, :])[0]
        else:
            chosen = filtered_positions(problem.classes, scores, drawn[None, :], self.eta)[0]
        return Outcome(drawn, problem.tokens[drawn], int(chosen), (len(drawn),))



@functools.lru_cache(maxsize=65536)
def trace_scores(problem: ProblemSamples, score: str, window: int) -> np.ndarray:
    """Every sample's own confidence score (computed once per problem, whatever the order)."""
    return np.asarray([_score(problem, i, score, window) for i in range(problem.n)])


def _score(problem: ProblemSamples, index: int, score: str, window: int) -> float:
    if score == "mean-logprob":
        # exp: a positive vote weight (the per-token geometric-mean probability), ordered as the mean logprob
        value = problem.record.samples[index].mean_logprob
        return math.nan if value is None else math.exp(value)
    confidences = problem.confidences[index]
    if score == "topk-certainty":
        return topk_certainty(tuple(confidences), problem.k)
    return trace_score(confidences, score, window)


@dataclass
class Replayed:
    """A method's mean outcome per problem (over the sample orders): correctness, samples, cost,
    and its loss against full best-of-N majority in the same order (`full_best_of_n_loss`)."""

    label: str
    problem_ids: list[str]
    correct: np.ndarray
    samples: np.ndarray
    cost: dict[str, np.ndarray]
    lost: np.ndarray | None = None  # full best-of-N right, the method wrong (reads gold: calibration only)
    disagree: np.ndarray | None = None  # the method's answer differs from full best-of-N's (no gold)

    def mean(self, axis: str) -> float:
        """Mean cost per problem on one axis ("samples" for the samples drawn)."""
        return float((self.samples if axis == "samples" else self.cost[axis]).mean())


def problem_samples(run: Run, record: Record) -> ProblemSamples:
    """A record's samples as arrays, with their token confidences when all of them recorded some."""
    confidences = None
    if all(s.token_confidences is not None for s in record.samples):
        confidences = tuple(np.asarray(s.token_confidences, dtype=np.float64) for s in record.samples)
    return ProblemSamples(
        record,
        answer_classes([s.answer for s in record.samples], run.equivalent),
        np.asarray([s.num_tokens for s in record.samples], dtype=np.int64),
        confidences,
        np.asarray([s.correct for s in record.samples], dtype=bool),
        int(run.config.strategy_options.get("logprobs") or 0),
    )


def sample_orders(n: int, orders: int, seed: int) -> np.ndarray:
    """The recorded order first, then `orders - 1` seeded random permutations of it."""
    rng = np.random.default_rng(seed)
    return np.stack([np.arange(n)] + [rng.permutation(n) for _ in range(orders - 1)])


def replay(run: Run, problems: Sequence[ProblemSamples], method: Method, *, orders: int = 20, seed: int = 0) -> Replayed:
    """`method` on every problem, averaged over `orders` sample orders, priced by the cost model."""
    correct, samples, lost, disagree = (np.zeros(len(problems)) for _ in range(4))
    cost = {axis: np.zeros(len(problems)) for axis in AXES}
    for j, problem in enumerate(problems):
        for order in sample_orders(problem.n, orders, seed + j):
            outcome = method.replay(problem, order)
            priced = outcome_cost(run, problem, outcome)
            correct[j] += outcome.chosen >= 0 and bool(problem.correct[outcome.chosen])
            samples[j] += len(outcome.drawn)
            lost_here, differs = full_best_of_n_loss(problem, order, outcome.chosen)
            lost[j] += lost_here
            disagree[j] += differs
            for axis in AXES:
                cost[axis][j] += priced[axis]
    return Replayed(method.label, [p.record.problem_id for p in problems], correct / orders, samples / orders,
                    unknown_as_nan(run, {axis: values / orders for axis, values in cost.items()}),
                    lost / orders, disagree / orders)


def full_best_of_n_loss(problem: ProblemSamples, order: np.ndarray, chosen: int) -> tuple[bool, bool]:
    """A method's answer (sample index `chosen`, -1: none) against best-of-N majority over all the
    samples in the same order (ties: the class seen first): (full best-of-N right and the method
    wrong, the two answers differ). The calibration in ttscale.analysis.guarantee bounds either."""
    full = leading_class(problem.classes[order].tolist())
    full_right = full >= 0 and bool(problem.correct[order[problem.classes[order] == full][0]])
    method_class = int(problem.classes[chosen]) if chosen >= 0 else -1
    method_right = chosen >= 0 and bool(problem.correct[chosen])
    return full_right and not method_right, method_class != full


def outcome_cost(run: Run, problem: ProblemSamples, outcome: Outcome) -> dict[str, float]:
    """What a live run spends to reach `outcome`: its drawn samples' tokens, in its requests
    (cache-independent, as compare prices recorded runs)."""
    ends = np.cumsum(outcome.requests)
    if not len(ends) or ends[-1] != len(outcome.drawn):
        raise ValueError(f"requests {outcome.requests} do not hold the {len(outcome.drawn)} samples drawn")
    requests = [lengths.tolist() for lengths in np.split(outcome.tokens, ends[:-1])]
    return request_costs(run.cost_model, problem.record.cost, problem.tokens, requests)


# -- best-of-N, the baseline -----------------------------------------------------------------------


@dataclass
class Baseline:
    """Best-of-N majority at every k <= N on some problems: per-problem correctness and cost."""

    ks: list[int]
    correct: np.ndarray  # (k, problems)
    cost: dict[str, np.ndarray]  # axis -> (k, problems)

    def curve(self, axis: str, rows: np.ndarray | None = None) -> tuple[list[float], list[float]]:
        """(cost, accuracy) per k over the problems `rows` (all by default), accuracy made
        non-decreasing in cost: a larger budget may always spend less."""
        rows = np.arange(self.correct.shape[1]) if rows is None else rows
        costs = self.cost[axis][:, rows].mean(axis=1)
        accuracy = np.maximum.accumulate(self.correct[:, rows].mean(axis=1))
        return costs.tolist(), accuracy.tolist()


def baseline(run: Run, problem_ids: Sequence[str], *, subsets: int = 200, seed: int = 0) -> Baseline:
    """Best-of-k majority for k = 1..N on `problem_ids`, subsampled from the run."""
    table = subsample(run, rules=["majority"], problems=problem_ids, subsets=subsets, seed=seed)
    return Baseline([int(k) for k in table.n], table.correct["majority"],
                    {axis: table.cost[axis] for axis in AXES})


BELOW_BEST_OF_1 = math.nan  # bon_cost_at's answer for a target below best-of-1's accuracy


def bon_cost_at(costs: Sequence[float], accuracy: Sequence[float], target: float) -> float:
    """What best-of-N majority spends to reach `target` accuracy, linear in log cost between its
    points; inf when even its full N does not reach it; BELOW_BEST_OF_1 (nan) when the target is
    below best-of-1's accuracy. Best-of-N has no cheaper point than best-of-1, so pricing such a
    target at best-of-1's cost would credit a method worse than one sample with a saving (at half
    best-of-1's cost, 2x): there is no saving to report, only "below best-of-1"."""
    if target < accuracy[0]:
        return BELOW_BEST_OF_1
    if target == accuracy[0]:
        return float(costs[0])  # best-of-1 reaches it exactly: nothing cheaper to compare with
    for (c0, a0), (c1, a1) in zip(zip(costs, accuracy), zip(costs[1:], accuracy[1:])):
        if a1 >= target:
            t = (target - a0) / (a1 - a0) if a1 > a0 else 1.0
            return float(math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0))))
    return math.inf


# -- held-out measurement --------------------------------------------------------------------------


@dataclass
class HeldOutResult:
    """One method family on half b, at the setting half a chose."""

    family: str
    setting: str
    accuracy: float
    accuracy_ci: tuple[float, float]
    bon_accuracy: float  # best-of-N majority at full N on half b
    samples: float
    cost: dict[str, float]
    bon_cost: dict[str, float]  # best-of-N's cost at the method's accuracy (inf: unreached)
    bon_full_cost: dict[str, float]  # best-of-N's cost at full N (the saving is above full/cost when unreached)
    saving: dict[str, float]  # bon_cost / cost (nan: the method is below best-of-1)
    saving_ci: dict[str, tuple[float, float]]
    curve: list[Replayed] = field(default_factory=list)  # every setting, on half b


def halves(run: Run, splits: tuple[str, str] = ("a", "b")) -> tuple[list[str], list[str]]:
    """The problem ids of the fitting and the held-out split, checked: a best-of-N run with FLOPs
    known and problems in both (a clear error otherwise)."""
    if run.kind != "best-of-n":
        raise ConfigError(f"{run.dir} is a {run.config.strategy} run; adaptive methods replay a best-of-N run's samples: "
                          "record one with `ttscale eval -s best-of-n --n 16 -S logprobs=10`")
    if not run.flops_known:
        raise ConfigError(f"{run.dir}: its FLOPs are unknown (a model of unknown size, or tokens nobody counted), and the "
                          "settings are chosen by their FLOPs; rerun `ttscale eval` with --backend-option num_params=N")
    fit_ids = [r.problem_id for r in run.records if split_of(r.problem_id) == splits[0]]
    eval_ids = [r.problem_id for r in run.records if split_of(r.problem_id) == splits[1]]
    if not fit_ids or not eval_ids:
        raise ConfigError(f"{run.dir}: needs problems in both halves ({len(fit_ids)} in a, {len(eval_ids)} in b)")
    return fit_ids, eval_ids


def held_out(run: Run, families: Mapping[str, Sequence[Method]], *, orders: int = 20, bootstrap: int = 1000, seed: int = 0, splits: tuple[str, str] = ("a", "b")) -> tuple[Baseline, list[HeldOutResult]]:
    """Each family's setting chosen on split a, measured on split b against best-of-N majority."""
    fit_ids, eval_ids = halves(run, splits)
    by_id = {r.problem_id: r for r in run.records}

    def arrays(ids: Sequence[str]) -> list[ProblemSamples]:
        return [problem_samples(run, by_id[pid]) for pid in ids]

    fit_problems, eval_problems = arrays(fit_ids), arrays(eval_ids)
    fit_base, eval_base = baseline(run, fit_ids, seed=seed), baseline(run, eval_ids, seed=seed)
    target = float(fit_base.correct[-1].mean())
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(eval_ids), size=(bootstrap, len(eval_ids)))
    results = []
    for family, methods in families.items():
        if not methods:
            continue
        fitted = [replay(run, fit_problems, m, orders=orders, seed=seed) for m in methods]
        reaching = [i for i, r in enumerate(fitted) if r.correct.mean() >= target - 1e-12]
        pick = min(reaching, key=lambda i: fitted[i].mean("flops")) if reaching else max(
            range(len(fitted)), key=lambda i: fitted[i].correct.mean())
        measured = [replay(run, eval_problems, m, orders=orders, seed=seed) for m in methods]
        results.append(_measure(family, methods[pick].label, measured[pick], eval_base, resamples, measured))
    return eval_base, results


def _measure(family: str, setting: str, chosen: Replayed, base: Baseline, resamples: np.ndarray,
             curve: list[Replayed]) -> HeldOutResult:
    accuracy = float(chosen.correct.mean())
    cost = {axis: chosen.mean(axis) for axis in AXES}
    bon_cost, bon_full_cost, saving, saving_ci = {}, {}, {}, {}
    for axis in AXES:
        costs, acc = base.curve(axis)
        bon_full_cost[axis] = costs[-1]
        bon_cost[axis] = bon_cost_at(costs, acc, accuracy)
        saving[axis] = bon_cost[axis] / cost[axis]
        draws = []
        for rows in resamples:
            b_costs, b_acc = base.curve(axis, rows)
            draws.append(bon_cost_at(b_costs, b_acc, chosen.correct[rows].mean()) / chosen.cost[axis][rows].mean())
        # A resample where the method falls below best-of-1 earns no saving: 0, never a credit.
        saving_ci[axis] = _interval(np.nan_to_num(np.asarray(draws, dtype=np.float64), nan=0.0, posinf=np.inf))
    acc_draws = [chosen.correct[rows].mean() for rows in resamples]
    return HeldOutResult(family, setting, accuracy, _interval(acc_draws), float(base.correct[-1].mean()),
                         chosen.mean("samples"), cost, bon_cost, bon_full_cost, saving, saving_ci, curve)


def _interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% percentile interval; draws are never interpolated, so an end may be inf (in that
    many resamples best-of-N never reached the method's accuracy)."""
    if not len(values):
        return (math.nan, math.nan)
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [0.025, 0.975], method="inverted_cdf")
    return float(low), float(high)


def as_curve(run: Run, replays: Sequence[Replayed], strategy: str) -> Curve:
    """Replayed settings as one compare curve, a point per setting (its threshold), by cost."""
    ordered = sorted(replays, key=lambda r: r.mean("flops"))
    points = [
        CurvePoint(round(r.mean("samples"), 2), float(r.correct.mean()), float(r.correct.mean()), float(r.correct.mean()),
                   r.mean("flops"), r.mean("eflops"), r.mean("generated_tokens"), 0.0, 0.0)
        for r in ordered
    ]
    per_problem = np.stack([r.correct for r in ordered])
    return Curve(run.name, strategy, "replayed", run.model, run.num_params, "adaptive", points,
                 ordered[0].problem_ids, per_problem)


def default_families(run: Run) -> dict[str, list[Method]]:
    """The settings `ttscale adaptive` sweeps: each stopping rule over its thresholds (batch 1,
    the strategy's default: a request per sample, each reading the prompt's KV), ESC over its
    windows (a batch per window, as the strategy draws them), and the
    DeepConf variants when the run recorded token confidences."""
    n = min(r.n for r in run.records)
    families: dict[str, list[Method]] = {
        "adaptive-consistency (beta)": [
            AdaptiveConsistencyReplay(StoppingRule(rule="beta", threshold=t), 1, f"beta p>={t}") for t in BETA_THRESHOLDS],
        "adaptive-consistency (beta, give up)": [
            AdaptiveConsistencyReplay(StoppingRule(rule="beta", threshold=t, give_up=GIVE_UP), 1, f"beta p>={t}, give up at {GIVE_UP}")
            for t in BETA_THRESHOLDS],
        "adaptive-consistency (dirichlet)": [
            AdaptiveConsistencyReplay(StoppingRule(rule="dirichlet", threshold=t), 1, f"dirichlet p>={t}") for t in BETA_THRESHOLDS],
        "ESC": [AdaptiveConsistencyReplay(StoppingRule(rule="esc", window=w), w, f"window {w}") for w in range(2, n // 2 + 1)],
    }
    if all(s.token_confidences is not None for r in run.records for s in r.samples):
        ks = range(2, n + 1)
        families["DeepConf online (low, eta=10)"] = [
            DeepConfOnlineReplay(n, w, 10.0, tau, g, label=f"warm-up {w}, tau {tau}, window {g}")
            for w in WARMUPS if w < n for tau in CONSENSUS for g in WINDOWS]
        families["DeepConf online (high, eta=90)"] = [
            DeepConfOnlineReplay(n, w, 90.0, tau, g, label=f"warm-up {w}, tau {tau}, window {g}")
            for w in WARMUPS if w < n for tau in CONSENSUS for g in WINDOWS]
        families["DeepConf offline (filtered vote, eta=10)"] = [
            ScoredVoteReplay(k, "lowest-group", 10.0, label=f"k={k}") for k in ks]
        families["DeepConf offline (filtered vote, eta=90)"] = [
            ScoredVoteReplay(k, "lowest-group", 90.0, label=f"k={k}") for k in ks]
        families["best-of-N weighted vote (topk-certainty)"] = [ScoredVoteReplay(k, "topk-certainty", label=f"k={k}") for k in ks]
        families["best-of-N weighted vote (mean logprob)"] = [ScoredVoteReplay(k, "mean-logprob", label=f"k={k}") for k in ks]
    return families


WARMUPS = (2, 4)  # >= 2: with one warm-up trace the threshold is its own score, whatever eta
WINDOWS = (8, 16, 32)  # DeepConf online's group window, in tokens (DEFAULT_WINDOW = 16)
CONSENSUS = (0.6, 0.8, 0.95)
BETA_THRESHOLDS = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
GIVE_UP = 4  # the variant: stop when the first 4 samples all disagree


def adaptive_curves(run: Run, *, orders: int = 5, seed: int = 0) -> list[Curve]:
    """For `ttscale compare --adaptive`: each adaptive family replayed on all of a best-of-N run's
    problems, as one curve whose points are its settings (thresholds), by cost."""
    if run.kind != "best-of-n":
        return []
    problems = [problem_samples(run, r) for r in run.records]
    return [as_curve(run, [replay(run, problems, m, orders=orders, seed=seed) for m in methods], family)
            for family, methods in default_families(run).items() if methods]
