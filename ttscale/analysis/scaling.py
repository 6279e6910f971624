"""Scaling curves without new generation: subsample a run at large N into every smaller N.

A best-of-N run records every candidate (answer, correct, score, num_tokens) and its cost, so
best-of-k for k < N is the same rule applied to k of the N samples. Accuracy at k is averaged
over random ordered draws of k samples (every draw when there are few enough), per problem,
then over problems; confidence bands come from a bootstrap over problems. A subset costs the prompt once
plus its own samples, priced by ttscale.cost (nothing here counts tokens).

DVTS runs record each candidate's subtree (trace_metadata["subtree"], in candidate order):
DVTS with fewer subtrees is subsampled by whole subtrees, and costs the recorded cost pro rata.
Runs of any other strategy give one point: their recorded accuracy and cost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ttscale.analysis.passk import pass_at_k
from ttscale.config import RunConfig, build_config
from ttscale.cost import KINETICS_INTENSITY, CostModel, scaled_cost, subsample_costs
from ttscale.errors import TtscaleError
from ttscale.store import SAMPLES, read_samples
from ttscale.types import ORACLE_RULE

log = logging.getLogger(__name__)

COST_KEYS = ("flops", "eflops", "generated_tokens", "prompt_tokens", "wall_s")
SUBSAMPLED_STRATEGIES = {"best-of-n"}  # one request of N independent samples per problem
RULE_ORDER = ("majority", "weighted-vote", "max-score", "first", ORACLE_RULE)
GOLD_RULES = {ORACLE_RULE}
VERIFIER_RULES = {"max-score", "weighted-vote"}


@dataclass
class Run:
    """One run directory, loaded: its config, records, cost model and answer equivalence."""

    dir: Path
    config: RunConfig
    records: list[dict[str, Any]]
    cost_model: CostModel
    equivalent: Callable[[str, str], bool]
    backend_info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run directory's name (its run id)."""
        return self.dir.name

    @property
    def model(self) -> str:
        """The policy model's name."""
        return self.backend_info.get("model") or self.config.model

    @property
    def num_params(self) -> int:
        """The policy model's parameter count."""
        return self.cost_model.num_params

    @property
    def strategy(self) -> str:
        """The strategy, with its verifier when it used one."""
        verifier = self.config.verifier
        return f"{self.config.strategy}+{verifier}" if verifier else self.config.strategy

    @property
    def kind(self) -> str:
        """How smaller budgets are derived: 'dvts' (by subtree), 'best-of-n' (by sample) or 'fixed'."""
        if self.records and all("subtree" in (r.get("trace_metadata") or {}) for r in self.records):
            return "dvts"
        if self.config.strategy in SUBSAMPLED_STRATEGIES and all(r["cost"].get("calls", 1) <= 1 for r in self.records):
            return "best-of-n"
        return "fixed"


def load_run(run_dir: str | Path, *, intensity: float = KINETICS_INTENSITY) -> Run:
    """Read a run directory: config.json, samples.jsonl and (when there) backend.json."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise TtscaleError(f"{run_dir} is not a run directory (no config.json); pass a directory that `ttscale eval` wrote")
    config = build_config(json.loads(config_path.read_text()), where=str(config_path))
    records: dict[str, dict[str, Any]] = {}
    for record in read_samples(run_dir / SAMPLES):
        records.setdefault(record["problem_id"], record)
    if not records:
        raise TtscaleError(f"{run_dir} has no finished problems in {SAMPLES}; run `ttscale eval` first")
    backend_path = run_dir / "backend.json"
    backend_info = json.loads(backend_path.read_text()) if backend_path.is_file() else {}
    return Run(run_dir, config, list(records.values()), _cost_model(config, backend_info, intensity),
               _equivalence(config), backend_info)


def _cost_model(config: RunConfig, backend_info: dict[str, Any], intensity: float) -> CostModel:
    """The cost model of the run's backend: the backend is built (never started) for its model
    info, so the shape is the one its meters used; else config.json's model, else backend.json."""
    from ttscale.runner import build_backend

    try:
        backend = build_backend(config)
        _close_quietly(backend)
        return CostModel.for_model(backend.model, intensity)
    except Exception as error:  # e.g. a hub model not on this machine
        from ttscale.modelshape import shape_for_model

        shape = shape_for_model(config.model)
        num_params = int(backend_info.get("num_params") or (shape.num_params if shape else 0))
        log.warning("could not rebuild the %s backend of this run (%s); pricing %s from %s",
                    config.backend, error, config.model, "its config.json" if shape else "backend.json")
        return CostModel(shape, num_params, intensity, config.model)


def _close_quietly(backend: Any) -> None:
    """Close a backend that was built but never started (an HTTP client may hold a pool)."""
    close = getattr(backend, "close", None)
    if close is None:
        return
    coroutine = close()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    coroutine.close()  # inside a running loop (e.g. a test): nothing was started, so nothing leaks


def _equivalence(config: RunConfig) -> Callable[[str, str], bool]:
    from ttscale.runner import build_benchmark

    try:
        return build_benchmark(config).equivalent
    except Exception as error:
        log.warning("cannot rebuild benchmark %r (%s): majority vote pools identical answers only", config.benchmark, error)
        return lambda a, b: a == b


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

    def cost(self, axis: str) -> float:
        """The cost on one axis: flops, eflops, generated_tokens or wall_s."""
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
    gold_verifier: bool = False  # the run's verifier read gold answers (e.g. oracle-orm)

    @property
    def uses_gold(self) -> bool:
        """Oracle selection, or a verifier's rule where the verifier read gold answers: an
        upper bound, not a usable strategy."""
        return self.rule in GOLD_RULES or (self.gold_verifier and self.rule in VERIFIER_RULES)

    @property
    def label(self) -> str:
        """A short legend entry: strategy · rule · model."""
        return f"{self.strategy} · {self.rule} · {self.model}"


def scaling_curves(
    run: Run,
    *,
    subsets: int = 200,
    bootstrap: int = 1000,
    seed: int = 0,
    ns: Sequence[int] | None = None,
    rules: Sequence[str] | None = None,
) -> list[Curve]:
    """One curve per selection rule of a run: every smaller N by subsampling, where the
    strategy allows it (best-of-N by sample, DVTS by subtree), else the run's one point."""
    kind = run.kind
    if kind == "best-of-n":
        table = _subsample_best_of_n(run, subsets, seed, ns)
    elif kind == "dvts":
        table = _subsample_dvts(run, subsets, seed, ns)
    else:
        table = _fixed(run)
    bootstrap_idx = np.random.default_rng(seed).integers(0, len(run.records), size=(bootstrap, len(run.records)))
    difficulty = {r["problem_id"]: r["difficulty"] for r in run.records if r.get("difficulty") is not None}
    curves = []
    wanted = [rule for rule in _ordered(table["rules"]) if rules is None or rule in rules]
    for rule in wanted:
        correct = table["correct"][rule]  # (points, problems)
        points = []
        for i, n in enumerate(table["n"]):
            accuracy = float(correct[i].mean())
            low, high = _bootstrap_band(correct[i], bootstrap_idx) if bootstrap else (accuracy, accuracy)
            costs = {key: float(table["cost"][key][i].mean()) for key in COST_KEYS}
            points.append(CurvePoint(n, accuracy, low, high, measured=bool(table["measured"][i]), **costs))
        curves.append(Curve(run.name, run.strategy, rule, run.model, run.num_params, kind, points,
                            [r["problem_id"] for r in run.records], correct, difficulty,
                            any(r.get("verifier_uses_gold") for r in run.records)))
    return curves


def _ordered(rules: Sequence[str]) -> list[str]:
    known = [rule for rule in RULE_ORDER if rule in rules]
    return known + sorted(set(rules) - set(known))


def _bootstrap_band(values: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    means = values[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@dataclass
class _Problem:
    """A record's candidates as arrays: equivalence class, correctness, score."""

    classes: np.ndarray  # -1: no answer
    correct: np.ndarray
    scores: np.ndarray  # nan: no score
    tokens: np.ndarray

    @classmethod
    def from_record(cls, record: dict[str, Any], equivalent: Callable[[str, str], bool]) -> "_Problem":
        representatives: list[str] = []
        classes = []
        for candidate in record["candidates"]:
            answer = candidate.get("answer")
            if answer is None:
                classes.append(-1)
                continue
            match = next((i for i, rep in enumerate(representatives) if rep == answer or equivalent(rep, answer)), None)
            if match is None:
                representatives.append(answer)
                match = len(representatives) - 1
            classes.append(match)
        scores = [c.get("score") for c in record["candidates"]]
        return cls(
            np.asarray(classes, dtype=np.int64),
            np.asarray([bool(c.get("correct")) for c in record["candidates"]]),
            np.asarray([np.nan if s is None else float(s) for s in scores]),
            np.asarray([c.get("num_tokens", 0) for c in record["candidates"]], dtype=np.int64),
        )

    @property
    def has_scores(self) -> bool:
        return bool(len(self.scores)) and not np.isnan(self.scores).all()


def select_correct(problem: _Problem, subsets: np.ndarray, rule: str) -> np.ndarray:
    """Whether `rule` applied to each subset (rows of candidate indices, in draw order)
    picks a correct answer. Mirrors ttscale.strategies._selection: ties go to the answer seen
    first, candidates without an answer never win."""
    subsets = np.asarray(subsets, dtype=np.int64)
    rows, k = subsets.shape
    correct = problem.correct[subsets]
    if rule == "first":
        return correct[:, 0]
    if rule == ORACLE_RULE:
        return correct.any(axis=1)
    if rule == "max-score":
        scores = problem.scores[subsets]
        usable = (problem.classes[subsets] >= 0) & ~np.isnan(scores)
        keyed = np.where(usable, scores, -np.inf)
        best = keyed.argmax(axis=1)  # the first of equal maxima
        return usable.any(axis=1) & correct[np.arange(rows), best]
    classes = problem.classes[subsets]
    num_classes = max(int(problem.classes.max()) + 1, 1)
    onehot = classes[:, :, None] == np.arange(num_classes)[None, None, :]  # (rows, k, classes)
    present = onehot.any(axis=1)
    first_pos = np.where(present, onehot.argmax(axis=1), k)
    if rule == "majority":
        weight = onehot.sum(axis=1).astype(np.float64)
    elif rule == "weighted-vote":
        scores = np.nan_to_num(problem.scores[subsets], nan=0.0)
        weight = (onehot * scores[:, :, None]).sum(axis=1)
    else:
        raise ValueError(f"unknown selection rule {rule!r}")
    weight = np.where(present, weight, -np.inf)
    top = weight == weight.max(axis=1, keepdims=True)
    chosen = np.where(top & present, first_pos, k + 1).argmin(axis=1)
    position = first_pos[np.arange(rows), chosen]
    answered = present.any(axis=1)
    return answered & correct[np.arange(rows), np.minimum(position, k - 1)]


def _index_subsets(n: int, k: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Ordered draws of k of range(n) without replacement: every one if there are at most
    `count`, else `count` random ones. Order matters: it decides "first" and vote ties, and the
    samples are exchangeable, so a subset's first sample must be a random one of them."""
    if math.perm(n, k) <= count:
        return np.asarray(list(itertools.permutations(range(n), k)), dtype=np.int64).reshape(-1, k)
    return np.argsort(rng.random((count, n)), axis=1)[:, :k]


def _rules_of(problems: Sequence[_Problem]) -> list[str]:
    rules = {"majority", "first", ORACLE_RULE}
    if any(p.has_scores for p in problems):
        rules |= {"max-score", "weighted-vote"}
    return sorted(rules)


def _subsample_best_of_n(run: Run, count: int, seed: int, ns: Sequence[int] | None) -> dict[str, Any]:
    problems = [_Problem.from_record(r, run.equivalent) for r in run.records]
    n_max = min(len(p.correct) for p in problems)
    if n_max == 0:
        raise TtscaleError(f"{run.dir}: a problem has no candidates; nothing to subsample")
    ks = sorted({k for k in (ns or range(1, n_max + 1)) if 1 <= k <= n_max})
    rules = _rules_of(problems)
    correct = {rule: np.zeros((len(ks), len(problems))) for rule in rules}
    cost = {key: np.zeros((len(ks), len(problems))) for key in COST_KEYS}
    rng = np.random.default_rng(seed)
    for j, (problem, record) in enumerate(zip(problems, run.records)):
        n = len(problem.correct)
        for i, k in enumerate(ks):
            subsets = _index_subsets(n, k, count, rng)
            for rule in rules:
                correct[rule][i, j] = select_correct(problem, subsets, rule).mean()
            # Closed forms where there are: no subsampling noise on these two.
            c = int(problem.correct.sum())
            correct["first"][i, j] = c / n  # the first of a random draw is a random sample
            correct[ORACLE_RULE][i, j] = pass_at_k(n, c, k)
            priced = subsample_costs(run.cost_model, record["cost"], problem.tokens, subsets)
            for key in COST_KEYS:
                cost[key][i, j] = float(np.mean(priced[key]))
    return {"n": ks, "rules": rules, "correct": correct, "cost": cost, "measured": [k == n_max for k in ks]}


def _subsample_dvts(run: Run, count: int, seed: int, ns: Sequence[int] | None) -> dict[str, Any]:
    problems = [_Problem.from_record(r, run.equivalent) for r in run.records]
    subtrees = [np.asarray(r["trace_metadata"]["subtree"]) for r in run.records]
    for record, tree, problem in zip(run.records, subtrees, problems):
        if len(tree) != len(problem.correct):
            raise TtscaleError(f"{run.dir}: problem {record['problem_id']} has {len(problem.correct)} candidates "
                               f"but {len(tree)} subtree labels")
    s_max = min(len(np.unique(t)) for t in subtrees)
    sizes = sorted({s for s in (ns or range(1, s_max + 1)) if 1 <= s <= s_max})
    rules = _rules_of(problems)
    correct = {rule: np.zeros((len(sizes), len(problems))) for rule in rules}
    cost = {key: np.zeros((len(sizes), len(problems))) for key in COST_KEYS}
    kept_n = np.zeros((len(sizes), len(problems)))
    rng = np.random.default_rng(seed)
    for j, (problem, record, tree) in enumerate(zip(problems, run.records, subtrees)):
        ids = np.unique(tree)
        for i, s in enumerate(sizes):
            chosen = _index_subsets(len(ids), s, count, rng)
            hits = {rule: [] for rule in rules}
            for row in chosen:  # subtrees in draw order, each subtree's candidates in their own order
                members = np.concatenate([np.flatnonzero(tree == ids[t]) for t in row])[None, :]
                kept_n[i, j] += members.shape[1] / len(chosen)
                for rule in rules:
                    hits[rule].append(bool(select_correct(problem, members, rule)[0]))
            for rule in rules:
                correct[rule][i, j] = float(np.mean(hits[rule]))
            scaled = scaled_cost(record["cost"], s / len(ids))
            for key in COST_KEYS:
                cost[key][i, j] = scaled[key]
    return {"n": [round(float(x), 6) for x in kept_n.mean(axis=1)], "rules": rules, "correct": correct, "cost": cost,
            "measured": [s == s_max for s in sizes]}


def _fixed(run: Run) -> dict[str, Any]:
    rules = sorted({rule for r in run.records for rule in r["selections"]})
    correct = {rule: np.asarray([[float(r["selections"].get(rule, {}).get("correct", False)) for r in run.records]])
               for rule in rules}
    cost = {key: np.asarray([[float(r["cost"].get(key, 0.0)) for r in run.records]]) for key in COST_KEYS}
    n = float(np.mean([len(r["candidates"]) for r in run.records]))
    return {"n": [n], "rules": rules, "correct": correct, "cost": cost, "measured": [True]}


def coverage_curve(run: Run) -> tuple[list[int], list[float]]:
    """Mean pass@k over problems for k = 1..N (exact, unbiased estimator): coverage vs k."""
    counts = [(len(r["candidates"]), sum(bool(c.get("correct")) for c in r["candidates"])) for r in run.records]
    n_max = min(n for n, _ in counts)
    ks = list(range(1, n_max + 1))
    return ks, [float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in ks]


def difficulty_values(run: Run) -> tuple[dict[str, float], str]:
    """Each problem's difficulty, higher = harder, and what it is (see `difficulty_bins`)."""
    given = [r.get("difficulty") for r in run.records]
    if all(d is not None for d in given) and len(set(given)) > 1:
        return {r["problem_id"]: float(r["difficulty"]) for r in run.records}, "the benchmark's difficulty"
    values = {r["problem_id"]: 1.0 - float(np.mean([bool(c.get("correct")) for c in r["candidates"]] or [0.0]))
              for r in run.records}
    return values, f"quantiles of 1 − pass@1 over the samples of {run.name}"


def bin_ranges(bins: dict[str, int], values: dict[str, float]) -> dict[int, tuple[float, float]]:
    """The lowest and highest difficulty in each bin."""
    ranges: dict[int, tuple[float, float]] = {}
    for pid, b in bins.items():
        lo, hi = ranges.get(b, (values[pid], values[pid]))
        ranges[b] = (min(lo, values[pid]), max(hi, values[pid]))
    return ranges


def difficulty_bins(run: Run, num_bins: int = 5) -> tuple[dict[str, int], str]:
    """Each problem's difficulty bin (0 = easiest) and what the bins are of.

    The benchmark's own difficulty when every record has one and it takes several values
    (few distinct values: one bin each); else Snell et al.'s oracle bins, quantiles of 1 − pass@1
    over the run's samples.
    """
    values, source = difficulty_values(run)
    distinct = sorted(set(values.values()))
    if len(distinct) <= num_bins:
        return {pid: distinct.index(v) for pid, v in values.items()}, source
    edges = np.unique(np.quantile(list(values.values()), np.linspace(0, 1, num_bins + 1)[1:-1]))
    return {pid: int(np.searchsorted(edges, v, side="left")) for pid, v in values.items()}, source
