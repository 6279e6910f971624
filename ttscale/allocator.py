"""AllocationPolicy: compute-optimal test-time settings per difficulty bin (Snell et al. 2024).

Fitting reads finished runs (runs/<id>/samples.jsonl). Every run is one candidate setting; a
best-of-N run with N samples also stands for best-of-n at every smaller n (and every selection
rule its candidates allow), by subsampling its samples. For each difficulty bin the policy keeps
the settings on the accuracy-versus-cost frontier; for a (bin, budget) it picks the most
accurate setting that fits the budget, so a larger budget never picks a worse expected accuracy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ttscale.analysis import difficulty as diff
from ttscale.errors import ConfigError, TtscaleError
from ttscale.store import read_samples
from ttscale.strategies._selection import first_answer, majority_vote, max_score, weighted_vote
from ttscale.types import Candidate, Problem, SampleParams, Trace

if TYPE_CHECKING:
    from ttscale.protocols import Backend, Verifier

POLICY_VERSION = 1
BinSource = Literal["oracle", "predicted"]
Split = Literal["all", "a", "b"]
# Subsampled best-of-n accuracy is averaged over this many random subsets per problem and n.
SUBSETS = 64


class AllocationError(TtscaleError):
    """A policy cannot serve this request: budget too small, wrong model, unknown bin."""


class Setting(BaseModel):
    """One runnable configuration: a registered strategy, its options, and its verifier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: str
    options: dict[str, Any] = Field(default_factory=dict)
    verifier: str | None = None
    verifier_options: dict[str, Any] = Field(default_factory=dict)

    @property
    def samples(self) -> int:
        """N: the samples (or particles) the setting draws per problem."""
        return int(self.options.get("n", 1))

    def label(self) -> str:
        """A short readable name, e.g. "best-of-n n=4 selection=majority"."""
        options = " ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        verifier = f" +{self.verifier}" if self.verifier else ""
        return f"{self.strategy} {options}{verifier}".strip()

    def key(self) -> str:
        """A canonical string that identifies the setting."""
        return json.dumps(self.model_dump(), sort_keys=True)


class Entry(BaseModel):
    """A setting's expected accuracy and mean cost on the fitting problems of one bin."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    setting: Setting
    accuracy: float
    flops: float
    samples: int  # samples drawn per prompt, the probe's included
    problems: int  # fitting problems in the bin (0: an empty bin borrowing a neighbour's)


class BinTable(BaseModel):
    """For one bin: every setting measured, and the smoothed frontier that `choose` picks from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bin: int
    entries: list[Entry]
    frontier_flops: list[Entry]
    frontier_samples: list[Entry]


class Probe(BaseModel):
    """The cheap difficulty probe: k0 samples, a statistic, and its quantile edges."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k0: int = Field(ge=1)
    statistic: diff.ProbeStatistic = "agreement"
    edges: list[float]
    mean_flops: float  # its mean cost on the fitting problems


def frontier(entries: Sequence[Entry], cost: str = "flops", min_gain: float = 0.0) -> list[Entry]:
    """The entries that beat every cheaper one by more than min_gain, cheapest first.

    Picking the last frontier entry within a budget is the smoothing: the feasible set only
    grows with the budget, so the expected accuracy picked never falls.
    """
    cost_of = (lambda e: e.flops) if cost == "flops" else (lambda e: e.samples)
    kept: list[Entry] = []
    for entry in sorted(entries, key=lambda e: (cost_of(e), -e.accuracy)):
        if not kept or entry.accuracy > kept[-1].accuracy + min_gain:
            kept.append(entry)
    return kept


@dataclass
class Run:
    """A finished run read back: its config, its records, and the model's parameter count."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    num_params: int

    @property
    def model(self) -> str:
        """The model the run sampled from, as named in its config."""
        return self.config.get("model", "")


def load_run(path: Path | str) -> Run:
    """Read a run directory (config.json, samples.jsonl, backend.json), naming what is missing."""
    path = Path(path)
    config_file, samples_file = path / "config.json", path / "samples.jsonl"
    if not config_file.exists() or not samples_file.exists():
        raise ConfigError(f"{path}: not a run directory (needs config.json and samples.jsonl); pass runs/<id>")
    config = json.loads(config_file.read_text())
    records = list(read_samples(samples_file))
    if not records:
        raise ConfigError(f"{samples_file}: no finished problems; run `ttscale eval` first")
    backend_file = path / "backend.json"
    num_params = json.loads(backend_file.read_text())["num_params"] if backend_file.exists() else 0
    if not num_params:
        raise ConfigError(f"{path}: backend.json with num_params is missing; FLOPs cannot be recomputed")
    return Run(path, config, records, int(num_params))


def split_of(problem_id: str) -> str:
    """A problem's half, "a" or "b", from a stable hash of its id (the same on every machine)."""
    return "ab"[hashlib.sha256(problem_id.encode()).digest()[0] & 1]


def in_split(problem_id: str, split: Split) -> bool:
    """Whether a problem belongs to the split ("all" holds every problem)."""
    return split == "all" or split_of(problem_id) == split


# -- per-problem outcomes of every setting -------------------------------------------------------


def _candidates(record: dict[str, Any]) -> tuple[list[Candidate], set[str]]:
    """Candidates rebuilt from a record, and the answers graded correct."""
    candidates = [
        Candidate(text="", answer=c["answer"], num_tokens=c["num_tokens"], finish_reason=c.get("finish_reason", "stop"), score=c.get("score"))
        for c in record["candidates"]
    ]
    correct = {c["answer"] for c in record["candidates"] if c["correct"] and c["answer"] is not None}
    return candidates, correct


def _rule_correct(rule: str, subset: Sequence[Candidate], correct: set[str]) -> bool:
    # Answers graded correct are all equivalent to the gold, hence to each other; others
    # are pooled only when written identically (the runner's grader already ran on them).
    def equivalent(a: str, b: str) -> bool:
        return a == b or (a in correct and b in correct)

    answer = {
        "majority": lambda: majority_vote(subset, equivalent),
        "first": lambda: first_answer(subset),
        "max-score": lambda: max_score(subset),
        "weighted-vote": lambda: weighted_vote(subset, equivalent),
    }[rule]()
    return answer is not None and answer in correct


def subsample_outcome(record: dict[str, Any], n: int, rule: str, rng: random.Random, probe: int = 0) -> tuple[float, float]:
    """Expected (accuracy, FLOPs) of best-of-n with `rule` on n of a record's N samples.

    Accuracy averages SUBSETS random subsets (exact for n = N); FLOPs are the prompt's once
    plus the sampled tokens, and the verifier's share pro rata. With `probe` = k0 the first k0
    samples are the probe's, reused: every subset holds them (so at least k0 samples are voted
    on), and only the other n - k0 are drawn at random.
    """
    candidates, correct = _candidates(record)
    fixed, rest = candidates[:probe], candidates[probe:]
    extra = max(n - probe, 0)
    size = len(fixed) + extra
    if size > 1 and rule == "first":
        rule = "majority"  # a reused probe already gives several samples; vote over them
    if extra in (0, len(rest)):  # one possible set: the samples as drawn, in their order
        hits, draws = _rule_correct(rule, fixed + rest[:extra], correct), 1
    else:
        draws = SUBSETS
        hits = sum(_rule_correct(rule, fixed + rng.sample(rest, extra), correct) for _ in range(draws))
    rest_tokens = sum(c.num_tokens for c in rest) / len(rest) if rest else 0.0
    tokens = sum(c.num_tokens for c in fixed) + extra * rest_tokens
    return hits / draws, share_flops(record, tokens, size)


def share_flops(record: dict[str, Any], sample_tokens: float, samples: int) -> float:
    """A best-of-N record's recorded FLOPs pro rata for `samples` of its samples with
    `sample_tokens` generated tokens: the prompt once, decoding by tokens, the verifier by samples.

    Exact under 2·P per token and exact at the full set under any cost model; with an
    attention term it is off by the few percent that later positions cost more.
    """
    cost = record["cost"]
    verifier = cost.get("verifier_flops", 0.0)
    prompt = cost["prompt_tokens"] - cost["cached_prompt_tokens"]
    generated = sum(c["num_tokens"] for c in record["candidates"])
    generator = (cost["flops"] - verifier) * (prompt + sample_tokens) / max(prompt + generated, 1)
    return generator + verifier * samples / max(len(record["candidates"]), 1)


Outcomes = dict[str, tuple[Setting, dict[str, tuple[float, float]]]]


def run_outcomes(run: Run, problem_ids: set[str], seed: int = 0, probe: int = 0,
                 probe_cost: dict[str, float] | None = None) -> Outcomes:
    """Every setting a run stands for, keyed by Setting.key(): {problem id: (accuracy, FLOPs)}.

    A best-of-n run yields n = 1, 2, 4, ... N and each selection rule its candidates allow;
    any other run yields its own setting, scored by its chosen rule and its recorded cost.
    With a probe of k0 samples: best-of-n reuses the probe's samples (see subsample_outcome)
    and other settings pay `probe_cost` on top of their own.
    """
    config = run.config
    records = [r for r in run.records if r["problem_id"] in problem_ids]
    out: dict[str, tuple[Setting, dict[str, tuple[float, float]]]] = {}
    verifier = config.get("verifier")
    if config["strategy"] == "best-of-n":
        n_max = min(r["n"] for r in records)
        scored = all(c.get("score") is not None for r in records for c in r["candidates"])
        rules = ["majority"] + (["max-score", "weighted-vote"] if scored else [])
        ns = [k for k in (1 << i for i in range(n_max.bit_length())) if k <= n_max]
        for rule in rules:
            for n in ns:
                if n == 1 and rule != "majority":
                    continue  # one sample: every rule picks it, so majority stands for all
                uses_verifier = rule in ("max-score", "weighted-vote")
                setting = Setting(
                    strategy="best-of-n",
                    options={"n": n, "selection": "first" if n == 1 else rule},
                    verifier=verifier if uses_verifier else None,
                    verifier_options=config.get("verifier_options", {}) if uses_verifier else {},
                )
                rng = random.Random(f"{seed}|{n}|{rule}")
                outcomes = {r["problem_id"]: subsample_outcome(r, n, rule, rng, probe) for r in records}
                out[setting.key()] = (setting, outcomes)
        return out
    setting = Setting(
        strategy=config["strategy"], options=config.get("strategy_options", {}),
        verifier=verifier, verifier_options=config.get("verifier_options", {}) if verifier else {},
    )
    extra = probe_cost or {}
    outcomes = {
        r["problem_id"]: (float(r["selections"][r["chosen_rule"]]["correct"]), float(r["cost"]["flops"]) + extra.get(r["problem_id"], 0.0))
        for r in records
    }
    out[setting.key()] = (setting, outcomes)
    return out


@dataclass
class FitData:
    """Runs read for fitting or evaluating, restricted to one split's shared problems."""

    runs: list[Run]  # as read, before pooling
    reference: Run  # the best-of-n run (pooled) with the most samples: oracle difficulty and the probe
    problems: list[str]
    outcomes: Outcomes = field(default_factory=dict)  # settings run cold
    probed: Outcomes = field(default_factory=dict)  # settings run after the probe, reusing its samples

    @property
    def reference_records(self) -> dict[str, dict[str, Any]]:
        """The reference run's records of these problems, by problem id."""
        return {r["problem_id"]: r for r in self.reference.records if r["problem_id"] in set(self.problems)}


# Config fields that make two runs the same setting; runs that share them pool their problems.
SETTING_FIELDS = ("model", "strategy", "strategy_options", "verifier", "verifier_options", "sampling", "speculative", "seed")


def pool_runs(runs: Sequence[Run]) -> list[Run]:
    """Runs of one setting over different problems (e.g. other benchmark options) as one run.

    A problem found in several of them keeps its first record.
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: run.config.get(k) for k in SETTING_FIELDS}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    pooled = []
    for members in groups.values():
        records: dict[str, dict[str, Any]] = {}
        for member in members:
            for record in member.records:
                records.setdefault(record["problem_id"], record)
        first = members[0]
        pooled.append(Run(first.path, first.config, list(records.values()), first.num_params))
    return pooled


def load_fit_data(run_dirs: Iterable[Path | str], split: Split = "all", seed: int = 0, k0: int = 4) -> FitData:
    """Read runs of one model and benchmark, keep the problems they share in the split, and
    score every setting cold and after a probe of k0 samples.

    Runs of the same setting over different problems pool their problems (pool_runs).
    """
    loaded = [load_run(p) for p in run_dirs]
    if not loaded:
        raise ConfigError("no run directories given; pass one or more runs/<id>")
    for key in ("model", "benchmark"):
        values = {r.config.get(key) for r in loaded}
        if len(values) > 1:
            raise ConfigError(f"runs differ in {key} ({', '.join(map(str, sorted(values)))}); fit one policy per {key}")
    runs = pool_runs(loaded)
    bon = [r for r in runs if r.config["strategy"] == "best-of-n"]
    if not bon:
        raise ConfigError("no best-of-n run among the runs; one (with many samples) sets the difficulty bins")
    reference = max(bon, key=lambda r: min(rec["n"] for rec in r.records))
    shared = set.intersection(*({rec["problem_id"] for rec in r.records} for r in runs))
    problems = sorted(p for p in shared if in_split(p, split))
    if len(problems) < diff.NUM_BINS:
        raise ConfigError(f"only {len(problems)} problems are shared by the runs in split {split!r}; need at least {diff.NUM_BINS}")
    if min(rec["n"] for rec in reference.records) < k0:
        raise ConfigError(f"{reference.path}: the probe needs k0={k0} samples per problem; pass --k0 up to its n")
    data = FitData(loaded, reference, problems)
    probe_cost = {p: probe_flops(r, k0) for p, r in data.reference_records.items()}
    # The reference first: a setting that several runs stand for keeps its numbers, and only
    # the reference run's samples are the probe's, so only its settings reuse them.
    for run in [reference] + [r for r in runs if r is not reference]:
        reuse = k0 if run is reference else 0
        for key, value in run_outcomes(run, set(problems), seed).items():
            data.outcomes.setdefault(key, value)
        for key, value in run_outcomes(run, set(problems), seed, reuse, probe_cost if run is not reference else None).items():
            data.probed.setdefault(key, value)
    return data


def data_hash(runs: Sequence[Run], problems: Sequence[str]) -> str:
    """sha256 over every run's samples.jsonl and config, and the problem ids fitted on."""
    digest = hashlib.sha256()
    for run in sorted(runs, key=lambda r: str(r.path)):
        digest.update((run.path / "config.json").read_bytes())
        digest.update((run.path / "samples.jsonl").read_bytes())
    digest.update("\n".join(problems).encode())
    return digest.hexdigest()


def probe_flops(record: dict[str, Any], k0: int) -> float:
    """What the probe costs on a problem: its prompt once and the first k0 samples' decoding."""
    probe = record["candidates"][:k0]
    return share_flops(record, sum(c["num_tokens"] for c in probe), len(probe)) - _verifier_share(record, len(probe))


def _verifier_share(record: dict[str, Any], samples: int) -> float:
    # The agreement probe reads answers only; no verifier scores it.
    return record["cost"].get("verifier_flops", 0.0) * samples / max(len(record["candidates"]), 1)


def bins_of(data: FitData, oracle_edges: Sequence[float], probe: Probe) -> dict[BinSource, dict[str, int]]:
    """Each problem's oracle bin (pass@1 of all its samples) and predicted bin (the probe)."""
    records = data.reference_records
    ids = list(records)
    pass1 = [diff.oracle_pass1(records[p]) for p in ids]
    stats = [diff.probe_of_record(records[p], probe.k0, probe.statistic) for p in ids]
    return {
        "oracle": dict(zip(ids, diff.assign_bins(pass1, oracle_edges))),
        "predicted": dict(zip(ids, diff.assign_bins(stats, probe.edges))),
    }


def drawn_samples(setting: Setting, probe_k0: int = 0) -> int:
    """Samples a setting draws per prompt; after a probe, best-of-n reuses the probe's."""
    if setting.strategy == "best-of-n" and not setting.verifier:
        return max(setting.samples, probe_k0)
    return setting.samples + probe_k0


def bin_tables(data: FitData, bins: dict[str, int], num_bins: int, min_gain: float, outcomes: Outcomes,
               probe_k0: int = 0) -> list[BinTable]:
    """Mean accuracy and cost of every setting in every bin, and the bins' frontiers.

    A bin with no fitting problems (quantile edges tie where many problems share a pass@1)
    borrows the problems of the nearest bin that has some (the harder one on a tie).
    """
    members = {b: [p for p in data.problems if bins[p] == b] for b in range(num_bins)}
    filled = [b for b in range(num_bins) if members[b]]
    tables = []
    for b in range(num_bins):
        own = members[b] or members[min(filled, key=lambda f: (abs(f - b), f))]
        entries = [
            Entry(
                setting=setting,
                accuracy=float(np.mean([per_problem[p][0] for p in own])),
                flops=float(np.mean([per_problem[p][1] for p in own])),
                samples=drawn_samples(setting, probe_k0),
                problems=len(members[b]),
            )
            for setting, per_problem in outcomes.values()
        ]
        tables.append(BinTable(
            bin=b, entries=entries,
            frontier_flops=frontier(entries, "flops", min_gain), frontier_samples=frontier(entries, "samples", min_gain),
        ))
    return tables


# -- the policy ----------------------------------------------------------------------------------


class AllocationPolicy(BaseModel):
    """A fitted allocation policy: per difficulty bin, the best setting for each budget.

    Load it with `AllocationPolicy.load(path)`, then `allocate(prompt, budget_flops=...)`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = POLICY_VERSION
    model: str
    num_params: int
    benchmark: str
    benchmark_options: dict[str, Any] = Field(default_factory=dict)
    verifier: str | None = None
    prompt_template: str | None = None  # wraps a bare prompt the way the fitting runs did
    sampling: SampleParams
    data_hash: str
    runs: list[str]
    split: Split
    problems: int
    num_bins: int
    oracle_edges: list[float]
    probe: Probe
    oracle_tables: list[BinTable]
    predicted_tables: list[BinTable]
    unprobed: BinTable  # every fitting problem, no probe: for budgets where probing does not pay

    # -- persistence --

    def save(self, path: Path | str) -> Path:
        """Write the policy as indented JSON."""
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def load(cls, path: Path | str) -> "AllocationPolicy":
        """Read a policy file, with errors that name the file and the bad field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"policy file {path} does not exist; fit one with `ttscale allocate fit RUN_DIR -o {path}`") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not JSON ({error.msg}); refit the policy") from None
        if isinstance(data, dict) and data.get("version") != POLICY_VERSION:
            raise ConfigError(f"{path}: policy version {data.get('version')!r}, this ttscale reads version {POLICY_VERSION}; refit it")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            from ttscale.errors import describe_validation_error

            raise ConfigError(describe_validation_error(error, str(path))) from None

    # -- choosing --

    def table(self, bin: int, source: BinSource = "oracle") -> BinTable:
        """The bin's table, or a clear error for a bin this policy does not have."""
        if not isinstance(bin, (int, np.integer)) or not 0 <= bin < self.num_bins:
            raise AllocationError(f"unknown difficulty bin {bin!r}; this policy has bins 0-{self.num_bins - 1} (0 = hardest)")
        return (self.oracle_tables if source == "oracle" else self.predicted_tables)[int(bin)]

    def choose(self, bin: int, *, budget_flops: float | None = None, budget_samples: int | None = None,
               source: BinSource = "oracle", strict: bool = True) -> Entry:
        """The most accurate setting of the bin within the budget (FLOPs or samples per prompt).

        strict=False returns the cheapest setting when the budget is below it, instead of raising.
        """
        return _pick(self.table(bin, source), f"bin {bin}", budget_flops, budget_samples, strict)

    def choose_unprobed(self, *, budget_flops: float | None = None, budget_samples: int | None = None,
                        strict: bool = True) -> Entry:
        """The most accurate setting within the budget for a prompt of unknown difficulty."""
        return _pick(self.unprobed, "a prompt with no probe", budget_flops, budget_samples, strict)

    def probe_pays(self, *, budget_flops: float | None = None, budget_samples: int | None = None) -> bool:
        """Whether probing, then planning per predicted bin, beats the best unprobed setting at
        this per-prompt budget, in expected accuracy on the fitting problems (the probe's cost
        counts against the budget, so at small budgets it rarely pays)."""
        budget = dict(budget_flops=budget_flops, budget_samples=budget_samples)
        tables = [t for t in self.predicted_tables if t.entries and t.entries[0].problems]
        try:
            picks = [(t.entries[0].problems, self.choose(t.bin, source="predicted", **budget)) for t in tables]
            cold = self.choose_unprobed(**budget).accuracy
        except AllocationError:  # the probe alone, or every setting, is over this budget
            return False
        probed = sum(w * e.accuracy for w, e in picks) / sum(w for w, _ in picks)
        return probed > cold

    def check_model(self, name: str) -> None:
        """Raise unless `name` is the model this policy was fitted for."""
        if name != self.model:
            raise AllocationError(
                f"this policy was fitted for model {self.model!r}, not {name!r}; "
                "refit it on runs of this model with `ttscale allocate fit`"
            )

    def problem(self, prompt: str | Problem) -> Problem:
        """A bare prompt wrapped in the fitting runs' template (a Problem passes through)."""
        from ttscale.solve import as_problem

        return as_problem(prompt, self.prompt_template)

    def allocate(self, prompt: str | Problem, *, budget_flops: float | None = None, budget_samples: int | None = None,
                 difficulty: int | None = None, backend: "Backend | None" = None, model: str | None = None,
                 probe: bool | None = None) -> "Plan":
        """A Plan for one prompt. With `difficulty` (an oracle bin) this is cheap: no probe runs.

        Without it the probe runs on `backend` (k0 samples; their cost goes into the Plan) where
        it pays at this budget (probe=None), or always (True), or never (False).
        Inside a running event loop use `await policy.allocate_async(...)` instead.
        """
        if difficulty is None:
            if backend is None:
                raise AllocationError("pass difficulty=BIN, or backend=... so the probe can predict the bin")
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self.allocate_async(prompt, backend, budget_flops=budget_flops, budget_samples=budget_samples, probe=probe))
            raise AllocationError("allocate() with a probe cannot run inside an event loop; use `await policy.allocate_async(...)`")
        if model is not None or backend is not None:
            self.check_model(model if model is not None else backend.model.name)
        entry = self.choose(difficulty, budget_flops=budget_flops, budget_samples=budget_samples, source="oracle")
        return Plan(self, self.problem(prompt), entry, difficulty, "given")

    async def allocate_async(self, prompt: str | Problem, backend: "Backend", *, budget_flops: float | None = None,
                             budget_samples: int | None = None, probe: bool | None = None) -> "Plan":
        """Run the probe on `backend`, predict the bin, and plan for the budget.

        Where the probe does not pay at this budget (probe_pays), plan without it.
        """
        from ttscale.solve import solve

        self.check_model(backend.model.name)
        problem = self.problem(prompt)
        if probe is False or (probe is None and not self.probe_pays(budget_flops=budget_flops, budget_samples=budget_samples)):
            entry = self.choose_unprobed(budget_flops=budget_flops, budget_samples=budget_samples)
            return Plan(self, problem, entry, None, "unprobed")
        probe_trace = await solve(problem, backend=backend, options={"n": self.probe.k0}, params=self.sampling, answers=self._answers())
        stat = diff.probe_statistic([c.model_dump() for c in probe_trace.candidates], self.probe.statistic)
        bin = diff.assign_bins([stat], self.probe.edges)[0]
        entry = self.choose(bin, budget_flops=budget_flops, budget_samples=budget_samples, source="predicted")
        return Plan(self, problem, entry, bin, "predicted", probe_trace)

    def _answers(self):
        from ttscale import registry

        return registry.benchmarks.factory(self.benchmark)(**self.benchmark_options)

    # -- batches --

    def allocate_batch(self, bins: Sequence[int], *, total_flops: float | None = None, total_samples: int | None = None,
                       source: BinSource = "oracle") -> list[Entry]:
        """Spread a total budget over prompts (given their bins) by greedy marginal gain.

        Each prompt's curve is its bin's frontier; prompts whose bin gains nothing from more
        compute (hopeless or trivially easy) keep the cheapest setting.
        """
        if (total_flops is None) == (total_samples is None):
            raise AllocationError("give exactly one total budget: total_flops=... or total_samples=...")
        tables = [self.table(b, source) for b in bins]
        if total_flops is not None:
            steps = [t.frontier_flops for t in tables]
            curves = [[(e.flops, e.accuracy) for e in s] for s in steps]
        else:
            steps = [t.frontier_samples for t in tables]
            curves = [[(float(e.samples), e.accuracy) for e in s] for s in steps]
        picks = greedy_allocation(curves, total_flops if total_flops is not None else total_samples)
        return [s[i] for s, i in zip(steps, picks)]


def upper_hull(curve: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the concave upper hull of a cost-sorted (cost, value) curve, from its first point."""
    hull = [0]
    for i in range(1, len(curve)):
        if curve[i][1] <= curve[hull[-1]][1]:
            continue
        while len(hull) >= 2:
            (c0, v0), (c1, v1), (c2, v2) = curve[hull[-2]], curve[hull[-1]], curve[i]
            if (v1 - v0) * (c2 - c0) <= (v2 - v0) * (c1 - c0):  # hull[-1] lies under the chord
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def greedy_allocation(curves: Sequence[Sequence[tuple[float, float]]], total: float) -> list[int]:
    """For each curve, the index of its chosen point: greedy by marginal gain per unit cost.

    Every curve starts at its cheapest point; then the affordable hull step with the largest
    gain per cost is taken until none fits. On concave curves in unit steps this is optimal
    (the classic result for separable concave allocation); on others it walks their hulls.
    """
    if not curves or any(not c for c in curves):
        raise AllocationError("every prompt needs at least one setting to allocate among")
    spent = sum(c[0][0] for c in curves)
    if spent > total:
        raise AllocationError(f"total budget {total:.4g} is below the cheapest settings' sum {spent:.4g}; raise it")
    hulls = [upper_hull(c) for c in curves]
    position = [0] * len(curves)  # index into each hull
    while True:
        best, best_rate = None, 0.0
        for i, (curve, hull) in enumerate(zip(curves, hulls)):
            if position[i] + 1 >= len(hull):
                continue
            (c0, v0), (c1, v1) = curve[hull[position[i]]], curve[hull[position[i] + 1]]
            rate = (v1 - v0) / (c1 - c0) if c1 > c0 else np.inf
            if spent + c1 - c0 <= total and rate > best_rate:
                best, best_rate = i, rate
        if best is None:
            break
        curve, hull = curves[best], hulls[best]
        spent += curve[hull[position[best] + 1]][0] - curve[hull[position[best]]][0]
        position[best] += 1
    return [hull[p] for hull, p in zip(hulls, position)]


def _pick(table: BinTable, what: str, budget_flops: float | None, budget_samples: int | None, strict: bool) -> Entry:
    """The last frontier entry within the budget (see `frontier`), or the cheapest if not strict."""
    if (budget_flops is None) == (budget_samples is None):
        raise AllocationError("give exactly one budget: budget_flops=... or budget_samples=...")
    steps = table.frontier_flops if budget_flops is not None else table.frontier_samples
    if not steps:
        raise AllocationError(f"{what} had no fitting problems; refit on more problems")
    cost = (lambda e: e.flops) if budget_flops is not None else (lambda e: e.samples)
    budget = budget_flops if budget_flops is not None else budget_samples
    fitting = [e for e in steps if cost(e) <= budget]
    if fitting:
        return fitting[-1]
    if not strict:
        return steps[0]
    unit = "FLOPs" if budget_flops is not None else "samples"
    raise AllocationError(
        f"budget {budget:.4g} {unit} is below the cheapest setting for {what} "
        f"({steps[0].setting.label()}: {cost(steps[0]):.4g} {unit}); raise the budget"
    )


@dataclass
class Plan:
    """What the policy chose for one prompt; `await plan.run(backend)` carries it out."""

    policy: AllocationPolicy
    problem: Problem
    entry: Entry
    bin: int | None
    bin_source: str  # "given" (difficulty=), "predicted" (the probe) or "unprobed" (probe did not pay)
    probe: Trace | None = None

    @property
    def setting(self) -> Setting:
        """The chosen strategy, options and verifier."""
        return self.entry.setting

    def config(self) -> dict[str, Any]:
        """The chosen setting as run-config fields (strategy, strategy_options, verifier...)."""
        s = self.setting
        return {"strategy": s.strategy, "strategy_options": s.options, "verifier": s.verifier, "verifier_options": s.verifier_options}

    def describe(self) -> str:
        """The plan in words, including the probe's reuse where there was one."""
        return describe_setting(self.setting, self.policy.probe.k0 if self.probe is not None else 0)

    async def run(self, backend: "Backend", verifier: "Verifier | None" = None, *, seed: int = 0) -> Trace:
        """Solve the prompt with the chosen setting; metadata["cost"] includes the probe's cost.

        After a probe, plain best-of-n reuses the probe's k0 samples and draws only n - k0 more
        (the same accounting the policy was fitted with); other settings run in full.
        """
        from ttscale.solve import solve
        from ttscale.types import Cost

        self.policy.check_model(backend.model.name)
        if self.setting.verifier and verifier is None:
            raise AllocationError(f"the chosen setting {self.setting.label()} needs a verifier; pass plan.run(backend, verifier)")
        answers = self.policy._answers()
        if self.probe is None:
            return await solve(self.problem, backend=backend, strategy=self.setting.strategy, options=self.setting.options,
                               verifier=verifier, answers=answers, params=self.policy.sampling, seed=seed)
        probe_cost = Cost(**self.probe.metadata["cost"])
        if self.setting.strategy == "best-of-n" and not self.setting.verifier:
            candidates, cost = list(self.probe.candidates), probe_cost
            extra = self.setting.samples - len(candidates)
            if extra > 0:  # seed + 1: the continuation must not redraw the probe's samples
                more = await solve(self.problem, backend=backend, options={"n": extra}, answers=answers, params=self.policy.sampling, seed=seed + 1)
                candidates += more.candidates
                cost = cost + Cost(**more.metadata["cost"])
            selections = {"majority": majority_vote(candidates, answers.equivalent), "first": first_answer(candidates)}
            metadata = {"cost": cost.model_dump(), "probe_cost": probe_cost.model_dump(), "probe_reused": len(self.probe.candidates)}
            return Trace(candidates=tuple(candidates), selections=selections, chosen_rule="majority", metadata=metadata)
        trace = await solve(self.problem, backend=backend, strategy=self.setting.strategy, options=self.setting.options,
                            verifier=verifier, answers=answers, params=self.policy.sampling, seed=seed + 1)
        cost = Cost(**trace.metadata["cost"]) + probe_cost
        return trace.model_copy(update={"metadata": {**trace.metadata, "cost": cost.model_dump(), "probe_cost": probe_cost.model_dump()}})


def describe_setting(setting: Setting, probe_k0: int = 0) -> str:
    """A setting's label; after a probe of k0 samples, what best-of-n then really does."""
    if not probe_k0:
        return setting.label()
    if setting.strategy == "best-of-n" and not setting.verifier:
        if setting.samples <= probe_k0:
            return f"probe only (majority of its {probe_k0})"
        return f"best-of-n n={setting.samples} majority (probe's {probe_k0} + {setting.samples - probe_k0})"
    return f"probe + {setting.label()}"


def fit_policy(run_dirs: Sequence[Path | str], *, split: Split = "all", num_bins: int = diff.NUM_BINS, k0: int = 4,
               statistic: diff.ProbeStatistic = "agreement", min_gain: float = 0.0, seed: int = 0) -> AllocationPolicy:
    """Fit a policy from finished runs of one model and benchmark (problems in `split` only)."""
    data = load_fit_data(run_dirs, split, seed, k0)
    records = data.reference_records
    ids = list(records)
    oracle_edges = diff.quantile_edges([diff.oracle_pass1(records[p]) for p in ids], num_bins)
    probe_edges = diff.quantile_edges([diff.probe_of_record(records[p], k0, statistic) for p in ids], num_bins)
    probe = Probe(k0=k0, statistic=statistic, edges=probe_edges,
                  mean_flops=float(np.mean([probe_flops(records[p], k0) for p in ids])))
    bins = bins_of(data, oracle_edges, probe)
    config = data.reference.config
    from ttscale import registry

    benchmark = registry.benchmarks.factory(config["benchmark"])(**config.get("benchmark_options", {}))
    verifiers = sorted({s.verifier for s, _ in data.outcomes.values() if s.verifier})
    return AllocationPolicy(
        model=data.reference.model,
        num_params=data.reference.num_params,
        benchmark=config["benchmark"],
        benchmark_options=config.get("benchmark_options", {}),
        verifier=", ".join(verifiers) or None,
        prompt_template=getattr(benchmark, "prompt_template", None) or getattr(benchmark, "default_template", None),
        sampling=SampleParams(**config.get("sampling", {})).model_copy(update={"seed": None, "n": 1}),
        data_hash=data_hash(data.runs, data.problems),
        runs=[str(r.path) for r in data.runs],
        split=split,
        problems=len(data.problems),
        num_bins=num_bins,
        oracle_edges=oracle_edges,
        probe=probe,
        oracle_tables=bin_tables(data, bins["oracle"], num_bins, min_gain, data.outcomes),
        predicted_tables=bin_tables(data, bins["predicted"], num_bins, min_gain, data.probed, k0),
        unprobed=bin_tables(data, {p: 0 for p in data.problems}, 1, min_gain, data.outcomes)[0].model_copy(update={"bin": -1}),
    )


# -- held-out evaluation -------------------------------------------------------------------------


def _bon_curve(data: FitData) -> list[tuple[int, float, float]]:
    """Best-of-n majority on these problems: (n, mean FLOPs, mean accuracy), by n."""
    points = []
    for setting, outcomes in data.outcomes.values():
        if setting.strategy == "best-of-n" and setting.options["selection"] in ("majority", "first") and not setting.verifier:
            values = [outcomes[p] for p in data.problems]
            points.append((setting.samples, float(np.mean([v[1] for v in values])), float(np.mean([v[0] for v in values]))))
    return sorted(points)


def bon_accuracy_at(curve: Sequence[tuple[int, float, float]], flops: float) -> float:
    """Best-of-N accuracy at `flops`, linear in log FLOPs between measured n (clamped at the ends)."""
    best = np.maximum.accumulate([p[2] for p in curve])  # a larger budget can always rerun a smaller n
    return float(np.interp(np.log(flops), np.log([p[1] for p in curve]), best))


def bon_flops_for(curve: Sequence[tuple[int, float, float]], accuracy: float) -> float | None:
    """The FLOPs best-of-N needs to reach `accuracy` (log-linear between n); None if it never does."""
    best = np.maximum.accumulate([p[2] for p in curve])
    log_flops = np.log([p[1] for p in curve])
    if accuracy <= best[0]:
        return float(curve[0][1])
    for i in range(1, len(curve)):
        if best[i] >= accuracy:
            t = (accuracy - best[i - 1]) / (best[i] - best[i - 1])
            return float(np.exp(log_flops[i - 1] + t * (log_flops[i] - log_flops[i - 1])))
    return None


def default_budgets(policy: AllocationPolicy, ns: Sequence[int] = (2, 4, 8)) -> list[float]:
    """Per-prompt FLOP budgets equal to best-of-n majority's mean cost on the fitting problems."""
    budgets = []
    for n in ns:
        costs = [(e.flops, e.problems) for t in policy.oracle_tables for e in t.entries
                 if e.setting.strategy == "best-of-n" and e.setting.samples == n and e.setting.options.get("selection") == "majority" and not e.setting.verifier]
        if costs:
            budgets.append(sum(f * k for f, k in costs) / sum(k for _, k in costs))
    return budgets


def evaluate_policy(policy: AllocationPolicy, run_dirs: Sequence[Path | str], *, split: Split = "all",
                    budgets: Sequence[float] | None = None, seed: int = 1) -> dict[str, Any]:
    """The policy on held-out problems against best-of-N majority, at several per-prompt budgets.

    For each budget and bin source (oracle, or predicted by the probe with its cost added), and
    for batch allocation of the same total: accuracy, mean FLOPs, best-of-N's accuracy at those
    FLOPs, and best-of-N's FLOPs for that accuracy over the policy's (the compute saving).
    """
    data = load_fit_data(run_dirs, split, seed, policy.probe.k0)
    policy.check_model(data.reference.model)
    if data.reference.config["benchmark"] != policy.benchmark:
        raise AllocationError(f"policy fitted on benchmark {policy.benchmark!r}, runs are {data.reference.config['benchmark']!r}")
    bins = bins_of(data, policy.oracle_edges, policy.probe)
    curve = _bon_curve(data)
    budgets = list(budgets or default_budgets(policy))

    def outcome(entry: Entry, p: str, source: BinSource) -> tuple[float, float]:
        outcomes = data.outcomes if source == "oracle" else data.probed  # predicted: the probe's cost is in
        key = entry.setting.key()
        if key not in outcomes:
            raise AllocationError(f"the runs evaluated hold no results for {entry.setting.label()}; pass the runs it was fitted on")
        return outcomes[key][1][p]

    rows = []
    for budget in budgets:
        for mode in ("oracle", "predicted", "predicted-batch"):
            source: BinSource = "oracle" if mode == "oracle" else "predicted"
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
            labels = [describe_setting(e.setting, policy.probe.k0 if source == "predicted" else 0) for e in entries]
            rows.append(_row(budget, mode, values, curve, labels))
    return {
        "problems": len(data.problems),
        "split": split,
        "bin_agreement": diff.bin_agreement(bins["predicted"], bins["oracle"]),
        "oracle_bin_counts": _count(bins["oracle"].values()),
        "predicted_bin_counts": _count(bins["predicted"].values()),
        "best_of_n": [{"n": n, "flops": f, "accuracy": a} for n, f, a in curve],
        "rows": rows,
    }


def _row(budget: float, mode: str, values: Sequence[tuple[float, float]], curve, labels: Sequence[str]) -> dict[str, Any]:
    """One evaluation row: the policy's accuracy and FLOPs against best-of-N's."""
    accuracy = float(np.mean([v[0] for v in values]))
    flops = float(np.mean([v[1] for v in values]))
    needed = bon_flops_for(curve, accuracy)
    return {
        "budget_flops": budget, "mode": mode, "accuracy": accuracy, "flops": flops,
        "bon_accuracy_at_flops": bon_accuracy_at(curve, flops),
        "bon_flops_for_accuracy": needed,
        "saving": needed / flops if needed is not None else None,
        "settings": dict(sorted(_count(labels).items())),
    }


def _count(values: Iterable[Any]) -> dict[Any, int]:
    counts: dict[Any, int] = defaultdict(int)
    for v in values:
        counts[v] += 1
    return dict(sorted(counts.items()))
