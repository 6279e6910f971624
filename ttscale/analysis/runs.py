"""The one layer over recorded runs: read, subsample, price, select; taint; interpolate.

Everything after generation (compare, report, fit, allocate fit and allocate eval) reads runs
through this module and nothing else:

- `load_run` reads a run directory once into typed records (`Run`, `Record`, `Sample`);
- `subsample` derives smaller budgets without new generation: best-of-N by sample (random
  ordered draws of k of the N samples, every one of them when there are at most `subsets`),
  DVTS by whole subtree; any other run gives its one recorded point;
- `price` prices a subset of a best-of-N problem with the one cost model (ttscale.cost);
- selection rules are ttscale.selection's, the functions the strategies themselves call;
- `uses_gold` says whether gold answers guided a run's result under a rule (upper bounds);
- `accuracy_at` and `cost_for` interpolate linearly in log cost, once, for every caller.

A subsample's accuracy is the mean over its drawn subsets. Its price does not depend on the
draws: it is the mean cost over every k-subset of the samples (all of them when there are at
most PRICE_SUBSETS, else the N cyclic windows of k, in which each sample appears equally often;
that mean is exact for every cost linear in the samples: FLOPs, tokens, wall time, verifier).
So every caller prices best-of-k of a run identically. Prices are cache-independent
(ttscale.cost.cache_independent_cost): they do not depend on what the prefix cache held.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ttscale.analysis.passk import pass_at_k
from ttscale.build import build_benchmark
from ttscale.config import RunConfig, build_config
from ttscale.cost import KINETICS_INTENSITY, CostModel, cache_independent_cost, flops_known, scaled_cost, subsample_costs
from ttscale.errors import ConfigError
from ttscale.modelshape import ModelShape, shape_for_model
from ttscale.code_exec import candidate_cpu_s, code_arrays, results_of
from ttscale.generated_tests import SELECTION_COST, arrays_of, generated_behaviour_of
from ttscale.selection import (
    CODE_RULES, GENERATED_BEHAVIOUR_RULE, GOLD_RULES, TEST_RULES, VERIFIER_RULES, answer_classes, chosen_positions,
)
from ttscale.store import SAMPLES, read_samples
from ttscale.thinking import FORCED_RULE
from ttscale.types import ORACLE_RULE, Problem

log = logging.getLogger(__name__)

COST_KEYS = ("flops", "eflops", "generated_tokens", "prompt_tokens", "wall_s", "exec_cpu_s")
# Strategies whose samples are N independent draws of one request, selected by a rule: a subset of
# them is a smaller run of the same strategy (program of thought is best-of-N on programs).
SAMPLING_STRATEGIES = ("best-of-n", "program-of-thought")
EXEC_CPU = "exec_cpu_s"  # sandbox CPU seconds per problem (ttscale.code_exec): a cost axis beside FLOPs, never in them
PRICE_SUBSETS = 256  # price by every k-subset up to this many, else by the N cyclic windows
RULE_ORDER = ("majority", "weighted-vote", "max-score", "codet", "test-vote", "behaviour-vote-generated", "behaviour-vote",
              "pass-examples", "first",
              "random", ORACLE_RULE)


# -- typed records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One recorded candidate: its answer, its grade, its verifier score and its length, and,
    when the strategy recorded logprobs, each token's confidence (ttscale.confidence); its text
    last (what a trained verifier learns from)."""

    answer: str | None
    correct: bool
    score: float | None
    num_tokens: int
    token_confidences: tuple[float, ...] | None = None
    mean_logprob: float | None = None
    text: str = ""


@dataclass(frozen=True)
class Record:
    """One finished problem of a run, as the analysis reads it."""

    problem_id: str
    samples: tuple[Sample, ...]
    selections: Mapping[str, bool]  # rule -> whether its answer was graded correct
    chosen_rule: str
    cost: Mapping[str, float]
    difficulty: float | None = None  # the benchmark's own, higher = harder
    subtree: tuple[int, ...] | None = None  # DVTS: each candidate's subtree
    verifier_uses_gold: bool = False
    # Code rules (ttscale.code_exec): whether each sample passed every visible test, and its
    # behaviour class; None where the run executed nothing.
    passed: tuple[bool, ...] | None = None
    behaviour: tuple[int, ...] | None = None
    # Test rules (ttscale.generated_tests): each sample's pass row on the model-written tests and
    # each test's multiplicity; and the cost of the rule's own calls (tests, judge), which a
    # problem pays once however many samples it draws. None: no tests were written.
    test_passes: tuple[tuple[bool, ...], ...] | None = None
    test_counts: tuple[float, ...] | None = None
    generated_behaviour: tuple[int, ...] | None = None  # the class on visible and generated inputs
    selection_cost: Mapping[str, float] | None = None
    # Each sample's sandbox CPU seconds (code rules, program of thought); None: nothing executed.
    exec_cpu_s: tuple[float, ...] | None = None
    # Budget forcing (ttscale.thinking): each candidate's thinking budget, spans and the cost of a
    # run at that budget alone (trace metadata "thinking"); None for other strategies.
    thinking: tuple[Mapping[str, Any], ...] | None = None

    @property
    def n(self) -> int:
        """How many samples the problem recorded."""
        return len(self.samples)

    @property
    def sampling_calls(self) -> int:
        """Model calls that drew samples: every call but the selection rule's own (tests, judge)."""
        return self.cost.get("calls", 1) - (self.selection_cost or {}).get("calls", 0)

    @property
    def num_correct(self) -> int:
        """How many of them were graded correct."""
        return sum(s.correct for s in self.samples)

    @property
    def pass1(self) -> float:
        """pass@1 from the graded samples: correct / n."""
        if not self.samples:
            raise ConfigError(f"problem {self.problem_id!r} has no samples; pass@1 needs at least one")
        return self.num_correct / self.n

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Record":
        """A samples.jsonl line (already checked by ttscale.store) as a typed record."""
        samples = tuple(
            Sample(c.get("answer"), bool(c.get("correct")), None if c.get("score") is None else float(c["score"]),
                   int(c.get("num_tokens", 0)),
                   None if c.get("token_confidences") is None else tuple(c["token_confidences"]),
                   c.get("mean_logprob"), c.get("text") or "")
            for c in raw["candidates"]
        )
        meta = raw.get("trace_metadata") or {}
        subtree = meta.get("subtree")
        runs = results_of(meta)
        passed, behaviour = code_arrays(runs, filter_visible=meta.get("behaviour_filter") == "visible") if runs else (None, None)
        tests, generated_behaviour = arrays_of(meta), generated_behaviour_of(meta)
        return cls(
            problem_id=raw["problem_id"], samples=samples,
            selections={rule: bool(s.get("correct")) for rule, s in raw["selections"].items()},
            chosen_rule=raw["chosen_rule"], cost=dict(raw["cost"]), difficulty=raw.get("difficulty"),
            subtree=tuple(subtree) if subtree is not None else None,
            verifier_uses_gold=bool(raw.get("verifier_uses_gold")),
            passed=None if passed is None else tuple(passed.tolist()),
            behaviour=None if behaviour is None else tuple(behaviour.tolist()),
            test_passes=None if tests is None else tuple(map(tuple, tests[0].tolist())),
            test_counts=None if tests is None else tuple(tests[1].tolist()),
            generated_behaviour=None if generated_behaviour is None else tuple(generated_behaviour.tolist()),
            selection_cost=meta.get(SELECTION_COST),
            exec_cpu_s=None if (cpu := candidate_cpu_s(meta)) is None else tuple(cpu),
            thinking=None if meta.get("thinking") is None else tuple(meta["thinking"]),
        )


@dataclass
class Run:
    """One run directory, read: its config, records, cost model and answer equivalence."""

    dir: Path
    config: RunConfig
    records: list[Record]
    cost_model: CostModel
    equivalent: Callable[[str, str], bool]
    backend_info: dict[str, Any]

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
    def flops_known(self) -> bool:
        """Whether its FLOPs can be priced: a model of known size, every call's tokens counted and
        priced (a verifier's too). Unknown FLOPs are NaN in every price: never a 0 that reads as free."""
        return self.cost_model.priced and all(flops_known(r.cost) for r in self.records)

    @property
    def tokens_known(self) -> bool:
        """Whether every call's tokens were counted (cost.uncounted_calls)."""
        return not any(r.cost.get("uncounted_calls", 0) for r in self.records)

    @property
    def strategy(self) -> str:
        """The strategy, with its verifier when it used one."""
        verifier = self.config.verifier
        return f"{self.config.strategy}+{verifier}" if verifier else self.config.strategy

    @property
    def verifier_uses_gold(self) -> bool:
        """Whether the run's verifier read gold answers (e.g. oracle-orm)."""
        return any(r.verifier_uses_gold for r in self.records)

    @property
    def kind(self) -> str:
        """How smaller budgets are derived: 'dvts' (by subtree), 'best-of-n' (by sample),
        'thinking-budget' (budget forcing's recorded sweep: a point per thinking budget) or 'fixed'."""
        if self.records and all(r.thinking is not None for r in self.records):
            return "thinking-budget"
        if self.records and all(r.subtree is not None for r in self.records):
            return "dvts"
        if self.config.strategy in SAMPLING_STRATEGIES and all(r.sampling_calls <= 1 for r in self.records):
            return "best-of-n"
        return "fixed"

    def uses_gold(self, rule: str) -> bool:
        """Whether gold answers guided this run's result under `rule`: an upper bound."""
        return rule_uses_gold(rule, strategy=self.config.strategy, verifier_uses_gold=self.verifier_uses_gold)


def rule_uses_gold(rule: str, *, strategy: str, verifier_uses_gold: bool) -> bool:
    """Whether gold answers guided a run's result under `rule`: an upper bound.

    The oracle rule reads gold; a gold-reading verifier taints whatever read its scores: the
    verifier rules of best-of-N, and every rule of a strategy it guided (a search, revision).
    """
    if rule in GOLD_RULES:
        return True
    if not verifier_uses_gold:
        return False
    return rule in VERIFIER_RULES or strategy not in SAMPLING_STRATEGIES


def load_run(run_dir: str | Path, *, intensity: float = KINETICS_INTENSITY) -> Run:
    """Read a run directory once: config.json, samples.jsonl and (when there) backend.json."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file() or not (run_dir / SAMPLES).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (needs config.json and {SAMPLES}); pass runs/<id> as `ttscale eval` wrote it")
    config = build_config(json.loads(config_path.read_text()), where=str(config_path))
    records: dict[str, Record] = {}
    for raw in read_samples(run_dir / SAMPLES):
        records.setdefault(raw["problem_id"], Record.from_dict(raw))  # a repeated problem keeps its first line
    if not records:
        raise ConfigError(f"{run_dir} has no finished problems in {SAMPLES}; run `ttscale eval` first")
    backend_path = run_dir / "backend.json"
    backend_info = json.loads(backend_path.read_text()) if backend_path.is_file() else {}
    return Run(run_dir, config, list(records.values()), _cost_model(run_dir, config, backend_info, intensity),
               _equivalence(config), backend_info)


def run_prompts(run: Run, *, every: bool = False) -> dict[str, Problem]:
    """The recorded problems of a run (every=True: every problem of its benchmark, recorded or
    not) with the prompts its generation read: the benchmark rebuilt from config.json; only ids
    and prompts are used, never gold answers."""
    problems = {p.id: p for p in build_benchmark(run.config).load()}
    missing = [r.problem_id for r in run.records if r.problem_id not in problems]
    if missing:
        raise ConfigError(f"{run.dir}: problem {missing[0]!r} is not in benchmark {run.config.benchmark!r} as rebuilt from "
                          "its config.json, so its prompt is unknown; the prefill probe needs the benchmark the run used")
    if every:
        return problems
    return {r.problem_id: problems[r.problem_id] for r in run.records}


@dataclass(frozen=True)
class RecordedModel:
    """A run's model as its backend.json records it (ttscale.build.describe_backend): the ModelInfo
    its meters priced with."""

    name: str
    num_params: int
    shape: ModelShape | None


def _cost_model(run_dir: Path, config: RunConfig, backend_info: dict[str, Any], intensity: float) -> CostModel:
    """The cost model the run's meters used: its model's name, parameter count and shape as
    backend.json records them. A run from before backend.json recorded the shape is priced from
    config.json's model (its shape where the model is on this machine), with a warning."""
    if "shape" in backend_info:
        shape = ModelShape(**backend_info["shape"]) if backend_info["shape"] else None
        model = RecordedModel(backend_info.get("model") or config.model, int(backend_info.get("num_params") or 0), shape)
        return CostModel.for_model(model, intensity)
    shape = shape_for_model(config.model)
    num_params = int(backend_info.get("num_params") or (shape.num_params if shape else 0))
    if not num_params:
        raise ConfigError(f"cannot price {run_dir}: its backend.json records no model (num_params, shape) and the shape "
                          f"of {config.model!r} is not known here; rerun it with `ttscale eval`") from None
    log.warning("%s: backend.json records no model shape (a run from before it did); pricing %s from %s",
                run_dir, config.model, "its config.json" if shape else "backend.json's num_params, 2·P per token")
    return CostModel(shape, num_params, intensity, config.model)


def _equivalence(config: RunConfig) -> Callable[[str, str], bool]:
    try:
        return build_benchmark(config).equivalent
    except Exception as error:
        log.warning("cannot rebuild benchmark %r (%s): majority vote pools identical answers only", config.benchmark, error)
        return lambda a, b: a == b


# -- pricing ---------------------------------------------------------------------------------------


def pricing_subsets(n: int, k: int, fixed: int = 0) -> np.ndarray:
    """The subsets a best-of-k subsample of n samples is priced over (see the module docstring).

    With `fixed` = k0 every subset holds the first k0 samples (a probe's, reused) and k - k0 of
    the others.
    """
    rest, extra = n - fixed, max(k - fixed, 0)
    head = np.arange(min(fixed, n))
    if extra == 0 or extra >= rest:
        return np.concatenate([head, np.arange(fixed, fixed + min(extra, rest))])[None, :]
    if math.comb(rest, extra) <= PRICE_SUBSETS:
        tails = np.asarray(list(itertools.combinations(range(fixed, n), extra)), dtype=np.int64)
    else:
        tails = fixed + (np.arange(rest)[:, None] + np.arange(extra)[None, :]) % rest
    return np.concatenate([np.broadcast_to(head, (len(tails), len(head))), tails], axis=1)


def price(run: Run, record: Record, subsets: np.ndarray, *, verifier: bool = True) -> dict[str, float]:
    """Mean cost of a best-of-N problem's subsets (rows of sample indices), by ttscale.cost.

    verifier=False leaves the verifier out (a probe that reads answers only).
    """
    cost = record.cost if verifier else {**record.cost, "verifier_flops": 0.0, "structural_verifier_flops": 0.0}
    fixed = {}
    if record.selection_cost:  # the rule's own calls: paid once per problem, whatever the subset
        cost = {key: value - record.selection_cost.get(key, 0) if isinstance(value, (int, float)) else value
                for key, value in cost.items()}
        fixed = cache_independent_cost(record.selection_cost)
    tokens = [s.num_tokens for s in record.samples]
    priced = subsample_costs(run.cost_model, cost, tokens, subsets)
    costs = {key: float(np.mean(priced[key])) + float(fixed.get(key, 0.0)) for key in COST_KEYS if key != EXEC_CPU}
    return unknown_as_nan(run, {**costs, EXEC_CPU: execution_price(record, subsets)})


def execution_price(record: Record, subsets: np.ndarray | None = None) -> float:
    """Mean sandbox CPU seconds of a problem's subsets (rows of sample indices): each sample's own
    run, pro-rated as FLOPs are; all samples without `subsets`. NaN: the run executed nothing."""
    if record.exec_cpu_s is None:
        return math.nan
    cpu = np.asarray(record.exec_cpu_s, dtype=float)
    return float(cpu.sum() if subsets is None else cpu[subsets].sum(axis=1).mean())


def unknown_as_nan(run: Run, costs: dict[str, Any]) -> dict[str, Any]:
    """`costs` (numbers or arrays by cost key) with what the run could not count or price as NaN."""
    unknown = ([] if run.flops_known else ["flops", "eflops"]) + ([] if run.tokens_known else ["generated_tokens", "prompt_tokens"])
    for key in (k for k in unknown if k in costs):
        costs[key] = np.full_like(costs[key], np.nan) if isinstance(costs[key], np.ndarray) else float("nan")
    return costs


def probe_price(run: Run, record: Record, k0: int, *, verifier: bool) -> dict[str, float]:
    """What a probe of the first k0 samples costs on a problem: its prompt once, their decoding,
    and the verifier's share when the probe reads verifier scores."""
    return price(run, record, np.arange(k0)[None, :], verifier=verifier)


# -- subsampling -----------------------------------------------------------------------------------


@dataclass
class Subsample:
    """A run at several budgets: per point its N, and per problem the expected correctness of
    each rule and the expected cost of each cost key (arrays of shape points × problems)."""

    n: list[float]
    measured: list[bool]  # the run's own budget, not a subsample
    correct: dict[str, np.ndarray]
    cost: dict[str, np.ndarray]
    problem_ids: list[str]

    @property
    def rules(self) -> list[str]:
        """The rules, in the order tables show them."""
        known = [rule for rule in RULE_ORDER if rule in self.correct]
        return known + sorted(set(self.correct) - set(known))


def subsample(run: Run, *, ns: Sequence[int] | None = None, rules: Sequence[str] | None = None, subsets: int = 200,
              seed: int = 0, reuse: int = 0, problems: Sequence[str] | None = None) -> Subsample:
    """The run at budgets ns (default: every one it allows), by its kind (see `Run.kind`).

    `reuse` = k0: best-of-N subsets always hold the first k0 samples (a probe's), so best-of-k
    there means max(k, k0) samples. `problems` restricts (and orders) the problems.
    """
    records = _records(run, problems)
    if run.kind == "best-of-n":
        table = _best_of_n(run, records, ns, rules, subsets, seed, reuse)
    elif run.kind == "dvts":
        table = _dvts(run, records, ns, rules, subsets, seed)
    elif run.kind == "thinking-budget":
        table = _thinking_budgets(run, records, ns, rules)
    else:
        table = _fixed(run, records, rules)
    unknown_as_nan(run, table.cost)
    return table


def _records(run: Run, problems: Sequence[str] | None) -> list[Record]:
    if problems is None:
        return list(run.records)
    by_id = {r.problem_id: r for r in run.records}
    missing = [p for p in problems if p not in by_id]
    if missing:
        raise ConfigError(f"{run.dir}: no record of problem {missing[0]!r}; pass runs over the same problems")
    return [by_id[p] for p in problems]


@dataclass
class _Arrays:
    """A record's samples as arrays for ttscale.selection.chosen_positions."""

    classes: np.ndarray
    correct: np.ndarray
    scores: np.ndarray
    passed: np.ndarray | None = None
    behaviour: np.ndarray | None = None
    test_passes: np.ndarray | None = None
    test_counts: np.ndarray | None = None
    generated_behaviour: np.ndarray | None = None

    @classmethod
    def of(cls, record: Record, equivalent: Callable[[str, str], bool]) -> "_Arrays":
        return cls(answer_classes([s.answer for s in record.samples], equivalent),
                   np.asarray([s.correct for s in record.samples], dtype=bool),
                   np.asarray([np.nan if s.score is None else s.score for s in record.samples], dtype=np.float64),
                   None if record.passed is None else np.asarray(record.passed, dtype=bool),
                   None if record.behaviour is None else np.asarray(record.behaviour, dtype=np.int64),
                   None if record.test_passes is None
                   else np.asarray(record.test_passes, dtype=bool).reshape(record.n, len(record.test_counts)),
                   None if record.test_counts is None else np.asarray(record.test_counts, dtype=np.float64),
                   None if record.generated_behaviour is None else np.asarray(record.generated_behaviour, dtype=np.int64))

    def rule_correct(self, rule: str, subsets: np.ndarray) -> np.ndarray:
        """Whether `rule` on each subset picks a correct answer (oracle: whether any is correct)."""
        subsets = np.asarray(subsets, dtype=np.int64)
        if rule == ORACLE_RULE:
            return self.correct[subsets].any(axis=1)
        picked = chosen_positions(rule, self.classes, self.scores, subsets, passed=self.passed, behaviour=self.behaviour,
                                  test_passes=self.test_passes, test_counts=self.test_counts,
                                  generated_behaviour=self.generated_behaviour)
        return (picked >= 0) & self.correct[np.maximum(picked, 0)]


def _rules_of(records: Sequence[Record], wanted: Sequence[str] | None) -> list[str]:
    rules = {"majority", "first", ORACLE_RULE}
    if any(s.score is not None for r in records for s in r.samples):
        rules |= VERIFIER_RULES
    if any(r.passed is not None for r in records):
        rules |= CODE_RULES | {"random"}
    if records and all(r.test_passes is not None for r in records):
        rules |= TEST_RULES  # test-vote-judge is not here: its judge's choice on a subset would need a new call
    if records and all(r.generated_behaviour is not None for r in records):
        rules.add(GENERATED_BEHAVIOUR_RULE)
    return [rule for rule in RULE_ORDER if rule in rules and (wanted is None or rule in wanted)]


def draw_subsets(n: int, k: int, count: int, rng: np.random.Generator, fixed: int = 0) -> np.ndarray:
    """Ordered draws of k of range(n) without replacement: every one if there are at most
    `count`, else `count` random ones. Order matters: it decides "first" and vote ties, and the
    samples are exchangeable, so a subset's first sample must be a random one of them. With
    `fixed` = k0 each draw is the first k0 samples, in order, then k - k0 of the others."""
    rest, extra = n - fixed, max(k - fixed, 0)
    head = np.arange(fixed)
    if extra == 0:  # the fixed samples alone
        tails = np.zeros((1, 0), dtype=np.int64)
    elif math.perm(rest, extra) <= count:
        tails = np.asarray(list(itertools.permutations(range(fixed, n), extra)), dtype=np.int64)
    else:
        tails = fixed + np.argsort(rng.random((count, rest)), axis=1)[:, :extra]
    return np.concatenate([np.broadcast_to(head, (len(tails), fixed)), tails], axis=1)


def _best_of_n(run: Run, records: list[Record], ns, wanted, count: int, seed: int, reuse: int) -> Subsample:
    n_max = min(r.n for r in records)
    if n_max == 0:
        raise ConfigError(f"{run.dir}: a problem has no candidates; nothing to subsample")
    if reuse > n_max:
        raise ConfigError(f"{run.dir}: the probe needs k0={reuse} samples per problem, the run has {n_max}; pass --k0 up to {n_max}")
    ks = sorted({k for k in (ns or range(1, n_max + 1)) if 1 <= k <= n_max})
    rules = _rules_of(records, wanted)
    correct = {rule: np.zeros((len(ks), len(records))) for rule in rules}
    cost = {key: np.zeros((len(ks), len(records))) for key in COST_KEYS}
    for j, record in enumerate(records):
        arrays = _Arrays.of(record, run.equivalent)
        c = int(arrays.correct.sum())
        for i, k in enumerate(ks):
            rng = np.random.default_rng([seed, j, k])  # per problem and k: the same draws whatever else is asked
            draws = draw_subsets(record.n, max(k, reuse), count, rng, reuse)
            for rule in rules:
                correct[rule][i, j] = arrays.rule_correct(rule, draws).mean()
            if not reuse:  # closed forms where there are: no subsampling noise on these two
                if "first" in correct:
                    correct["first"][i, j] = c / record.n  # the first of a random draw is a random sample
                if ORACLE_RULE in correct:
                    correct[ORACLE_RULE][i, j] = pass_at_k(record.n, c, k)
            priced = price(run, record, pricing_subsets(record.n, max(k, reuse), reuse))
            for key in COST_KEYS:
                cost[key][i, j] = priced[key]
    return Subsample([float(k) for k in ks], [k == n_max for k in ks], correct, cost, [r.problem_id for r in records])


def _dvts(run: Run, records: list[Record], ns, wanted, count: int, seed: int) -> Subsample:
    """DVTS with fewer subtrees: whole subtrees drawn, the recorded cost scaled by their share
    (each subtree is an equal, independent search)."""
    subtrees = [np.asarray(r.subtree) for r in records]
    for record, tree in zip(records, subtrees):
        if len(tree) != record.n:
            raise ConfigError(f"{run.dir}: problem {record.problem_id} has {record.n} candidates but {len(tree)} subtree labels")
    s_max = min(len(np.unique(t)) for t in subtrees)
    sizes = sorted({s for s in (ns or range(1, s_max + 1)) if 1 <= s <= s_max})
    rules = _rules_of(records, wanted)
    correct = {rule: np.zeros((len(sizes), len(records))) for rule in rules}
    cost = {key: np.zeros((len(sizes), len(records))) for key in COST_KEYS}
    kept = np.zeros((len(sizes), len(records)))
    for j, (record, tree) in enumerate(zip(records, subtrees)):
        arrays = _Arrays.of(record, run.equivalent)
        ids = np.unique(tree)
        for i, s in enumerate(sizes):
            chosen = draw_subsets(len(ids), s, count, np.random.default_rng([seed, j, s]))
            hits = {rule: [] for rule in rules}
            for row in chosen:  # subtrees in draw order, each subtree's candidates in their own order
                members = np.concatenate([np.flatnonzero(tree == ids[t]) for t in row])[None, :]
                kept[i, j] += members.shape[1] / len(chosen)
                for rule in rules:
                    hits[rule].append(bool(arrays.rule_correct(rule, members)[0]))
            for rule in rules:
                correct[rule][i, j] = float(np.mean(hits[rule]))
            scaled = {**scaled_cost(record.cost, s / len(ids)), EXEC_CPU: execution_price(record) * s / len(ids)}
            for key in COST_KEYS:
                cost[key][i, j] = scaled[key]
    return Subsample([round(float(x), 6) for x in kept.mean(axis=1)], [s == s_max for s in sizes], correct, cost,
                     [r.problem_id for r in records])


def _thinking_budgets(run: Run, records: list[Record], ns, wanted) -> Subsample:
    """Budget forcing's sweep (ttscale.strategies.budget_forcing): one candidate per thinking budget,
    each recorded with the cost of a run at that budget alone; a point per budget (its N) that
    every problem recorded, under the forced rule (the oracle over budgets is no run's result)."""
    budgets = sorted(set.intersection(*({int(t["budget"]) for t in r.thinking} for r in records)))
    budgets = [b for b in budgets if ns is None or b in ns]
    if not budgets:
        raise ConfigError(f"{run.dir}: its problems share no thinking budget; pass runs that swept the same budgets")
    rules = [FORCED_RULE] if wanted is None or FORCED_RULE in wanted else []
    correct = np.zeros((len(budgets), len(records)))
    cost = {key: np.zeros((len(budgets), len(records))) for key in COST_KEYS}
    for j, record in enumerate(records):
        position = {int(t["budget"]): k for k, t in enumerate(record.thinking)}
        for i, budget in enumerate(budgets):
            k = position[budget]
            correct[i, j] = record.samples[k].correct
            priced = {**cache_independent_cost(record.thinking[k]["cost"]), EXEC_CPU: math.nan}  # nothing executed
            for key in COST_KEYS:
                cost[key][i, j] = float(priced.get(key, 0.0))
    return Subsample([float(b) for b in budgets], [True] * len(budgets), {rule: correct for rule in rules},  # each generated, none subsampled
                     cost, [r.problem_id for r in records])


def _fixed(run: Run, records: list[Record], wanted) -> Subsample:
    """A run that cannot be subsampled: its one recorded point, under each rule it recorded."""
    rules = sorted({rule for r in records for rule in r.selections if wanted is None or rule in wanted})
    correct = {rule: np.asarray([[float(r.selections.get(rule, False)) for r in records]]) for rule in rules}
    priced = [cache_independent_cost(r.cost) for r in records]  # as every other price: ttscale.cost's
    priced = [{**c, EXEC_CPU: execution_price(r)} for c, r in zip(priced, records)]
    cost = {key: np.asarray([[float(c.get(key, 0.0)) for c in priced]]) for key in COST_KEYS}
    n = float(np.mean([r.n for r in records]))
    return Subsample([n], [True], correct, cost, [r.problem_id for r in records])


# -- matched budgets -------------------------------------------------------------------------------


def accuracy_at(costs: Sequence[float], values: Sequence[float], budget: float) -> float | None:
    """The value at `budget`, linear in log cost between the two nearest points (costs
    ascending); None outside the points' range (no extrapolation) or for a budget <= 0."""
    if budget <= 0 or not len(costs) or costs[0] <= 0:
        return None
    if not costs[0] * (1 - 1e-9) <= budget <= costs[-1] * (1 + 1e-9):
        return None
    for (c0, v0), (c1, v1) in zip(zip(costs, values), zip(costs[1:], values[1:])):
        if c0 <= budget <= c1:
            if c1 == c0:
                return max(v0, v1)
            t = (math.log(budget) - math.log(c0)) / (math.log(c1) - math.log(c0))
            return v0 + t * (v1 - v0)
    return float(values[0] if budget <= costs[0] else values[-1])


def cost_for(costs: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The inverse of `accuracy_at` on a non-decreasing curve: the least cost that reaches
    `target`, linear in log cost between points; None if no point reaches it."""
    if target <= values[0]:
        return float(costs[0])
    for (c0, v0), (c1, v1) in zip(zip(costs, values), zip(costs[1:], values[1:])):
        if v1 >= target:
            t = (target - v0) / (v1 - v0)
            return float(math.exp(math.log(c0) + t * (math.log(c1) - math.log(c0))))
    return None
