"""Fitting an AllocationPolicy from finished runs (Snell et al. 2024), through the one analysis layer.

Every run is one candidate setting; a best-of-N run with N samples also stands for best-of-n at
every n = 1, 2, 4, ... <= N and each selection rule its candidates allow, by subsampling its
samples (ttscale.analysis.runs: the same subsampler, prices and selection rules as compare).
Per difficulty bin the policy keeps every setting and the accuracy-versus-cost frontier.

A setting that gold answers guided (Run.uses_gold) is measured and kept, labelled, but never
put on a frontier. With a probe of k0 samples (predicted bins), plain best-of-n reuses the
probe's samples, and every other setting pays the probe's cost on top of its own.

The prefill probe (statistic "prefill", ttscale.probe) draws no samples: every setting pays one
prefill of the prompt on top of its own cost. Its regressor is trained on the fitting split's
problems only, and the fitting problems are binned by its out-of-fold predictions (as a new
prompt would be), not by in-sample ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ttscale.allocation.policy import (
    POLICY_VERSION, PREFILL_POLICY_VERSION, AllocationPolicy, BinSource, BinTable, Entry, Probe, Setting, drawn_samples,
)
from ttscale.analysis import difficulty as diff
from ttscale.analysis.runs import Run, load_run, probe_price, subsample
from ttscale.build import build_benchmark
from ttscale.errors import ConfigError
from ttscale.hidden_states import PromptFeatures
from ttscale.probe import PromptReader, fit_regressor
from ttscale.problems import Split, in_split
from ttscale.protocols import prompt_template_of
from ttscale.selection import VERIFIER_RULES

SUBSETS = 200  # random ordered draws per problem and n (compare's default too)

# A setting's results on the problems: {problem id: (expected accuracy, expected FLOPs)}.
Outcomes = dict[str, tuple[Setting, dict[str, tuple[float, float]]]]


def frontier(entries: Sequence[Entry], cost: str = "flops", min_gain: float = 0.0) -> list[Entry]:
    """The deployable entries that beat every cheaper one by more than min_gain, cheapest first.

    Picking the last frontier entry within a budget is the smoothing: the feasible set only
    grows with the budget, so the expected accuracy picked never falls. Settings that gold
    answers guided are left out: they are upper bounds, never choices.
    """
    cost_of = (lambda e: e.flops) if cost == "flops" else (lambda e: e.samples)
    kept: list[Entry] = []
    for entry in sorted((e for e in entries if not e.setting.uses_gold), key=lambda e: (cost_of(e), -e.accuracy)):
        if not kept or entry.accuracy > kept[-1].accuracy + min_gain:
            kept.append(entry)
    return kept


def run_outcomes(run: Run, problems: Sequence[str], *, seed: int = 0, reuse: int = 0,
                 extra_flops: dict[str, float] | None = None) -> Outcomes:
    """Every setting a run stands for, keyed by Setting.key().

    best-of-N: n = 1, 2, 4, ... N under majority (n = 1 is "first") and, when scored, the
    verifier rules; with `reuse` = k0 only plain best-of-n (it keeps the probe's samples).
    Any other run: its own setting at its recorded budget under its chosen rule.
    `extra_flops` (the probe's, per problem) is added to every setting's cost.
    """
    extra = extra_flops or {}
    config = run.config
    out: Outcomes = {}

    def add(setting: Setting, correct: np.ndarray, flops: np.ndarray, ids: Sequence[str]) -> None:
        out[setting.key()] = (setting, {p: (float(a), float(f) + extra.get(p, 0.0)) for p, a, f in zip(ids, correct, flops)})

    if run.kind == "best-of-n":
        n_max = min(r.n for r in run.records if r.problem_id in set(problems))
        ns = [1 << i for i in range(n_max.bit_length()) if 1 << i <= n_max]
        rules = ["majority"] if reuse else ["majority", *sorted(VERIFIER_RULES)]
        table = subsample(run, ns=ns, rules=rules, subsets=SUBSETS, seed=seed, reuse=reuse, problems=problems)
        for rule in table.rules:
            for i, n in enumerate(table.n):
                if n == 1 and rule != "majority":
                    continue  # one sample: every rule picks it, so majority stands for all
                scored = rule in VERIFIER_RULES
                setting = Setting(
                    strategy="best-of-n", options={"n": int(n), "selection": "first" if n == 1 else rule},
                    verifier=config.verifier if scored else None,
                    verifier_options=config.verifier_options if scored else {}, uses_gold=run.uses_gold(rule),
                )
                add(setting, table.correct[rule][i], table.cost["flops"][i], table.problem_ids)
        return out
    rule = run.records[0].chosen_rule
    table = subsample(run, rules=[rule], seed=seed, problems=problems)
    last = len(table.n) - 1  # the run's own budget
    setting = Setting(strategy=config.strategy, options=config.strategy_options, verifier=config.verifier,
                      verifier_options=config.verifier_options if config.verifier else {}, uses_gold=run.uses_gold(rule))
    add(setting, table.correct[rule][last], table.cost["flops"][last], table.problem_ids)
    return out


@dataclass
class FitData:
    """Runs read for fitting or evaluating, restricted to one split's shared problems."""

    runs: list[Run]  # as read, before pooling
    reference: Run  # the best-of-n run (pooled) with the most samples: oracle difficulty and the probe
    problems: list[str]
    probe_flops: dict[str, float] = field(default_factory=dict)  # the probe's cost per problem
    outcomes: Outcomes = field(default_factory=dict)  # settings run cold
    probed: Outcomes = field(default_factory=dict)  # settings run after the probe (its cost included)
    features: dict[str, "PromptFeatures"] = field(default_factory=dict)  # prefill probe: every recorded problem's
    probe_values: dict[str, float] = field(default_factory=dict)  # prefill probe: predicted pass@1 per problem

    def records(self):
        """The reference run's records of these problems, by problem id."""
        wanted = set(self.problems)
        return {r.problem_id: r for r in self.reference.records if r.problem_id in wanted}


# Config fields that make two runs the same setting; runs that share them pool their problems.
SETTING_FIELDS = ("model", "strategy", "strategy_options", "verifier", "verifier_options", "sampling", "speculative", "seed")


def pool_runs(runs: Sequence[Run]) -> list[Run]:
    """Runs of one setting over different problems (e.g. other benchmark options) as one run.

    A problem found in several of them keeps its first record.
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        fields = run.config.model_dump(mode="json", include=set(SETTING_FIELDS))
        groups.setdefault(json.dumps(fields, sort_keys=True), []).append(run)
    pooled = []
    for members in groups.values():
        records = {}
        for member in members:
            for record in member.records:
                records.setdefault(record.problem_id, record)
        first = members[0]
        pooled.append(Run(first.dir, first.config, list(records.values()), first.cost_model, first.equivalent, first.backend_info))
    return pooled


def load_fit_data(run_dirs: Iterable[Path | str], split: Split = "all", seed: int = 0, k0: int = 4,
                  statistic: diff.ProbeStatistic = "agreement", prompts: "PromptReader | None" = None) -> FitData:
    """Read runs of one model and benchmark, keep the problems they share in the split, and
    measure every setting cold and after the probe: k0 samples, or (statistic "prefill", whose
    features `prompts` reads for every recorded problem, both splits: prompts only) one prefill."""
    loaded = [load_run(p) for p in run_dirs]
    if not loaded:
        raise ConfigError("no run directories given; pass one or more runs/<id>")
    unpriced = next((r for r in loaded if not r.flops_known), None)
    if unpriced is not None:
        raise ConfigError(f"{unpriced.dir}: its FLOPs are unknown (a model of unknown size, or tokens nobody counted), "
                          "and a policy spends FLOPs; rerun `ttscale eval` with --backend-option num_params=N")
    for key in ("model", "benchmark"):
        values = {getattr(r.config, key) for r in loaded}
        if len(values) > 1:
            raise ConfigError(f"runs differ in {key} ({', '.join(map(str, sorted(values)))}); fit one policy per {key}")
    runs = pool_runs(loaded)
    bon = [r for r in runs if r.kind == "best-of-n"]
    if not bon:
        raise ConfigError("no best-of-n run among the runs; one (with many samples) sets the difficulty bins")
    reference = max(bon, key=lambda r: min(rec.n for rec in r.records))
    shared = set.intersection(*({rec.problem_id for rec in r.records} for r in runs))
    problems = sorted(p for p in shared if in_split(p, split))
    if len(problems) < diff.NUM_BINS:
        raise ConfigError(f"only {len(problems)} problems are shared by the runs in split {split!r}; need at least {diff.NUM_BINS}")
    if statistic == "prefill":
        return _prefill_fit_data(loaded, runs, reference, problems, seed, prompts)
    if min(rec.n for rec in reference.records) < k0:
        raise ConfigError(f"{reference.dir}: the probe needs k0={k0} samples per problem; pass --k0 up to its n")
    if statistic == "verifier" and not reference.config.verifier:
        raise ConfigError(f"{reference.dir}: --probe verifier needs a best-of-n run whose samples a verifier scored; "
                          "rerun it with --verifier, or use --probe agreement")
    data = FitData(loaded, reference, problems)
    with_verifier = statistic == "verifier"
    data.probe_flops = {p: probe_price(reference, r, k0, verifier=with_verifier)["flops"] for p, r in data.records().items()}
    # The reference first: a setting that several runs stand for keeps the reference's numbers.
    # After the probe, the reference's plain best-of-n reuses the probe's samples (its cost is
    # in their price); every other setting pays the probe on top of its own cost.
    for run in [reference] + [r for r in runs if r is not reference]:
        for key, value in run_outcomes(run, problems, seed=seed).items():
            data.outcomes.setdefault(key, value)
        if run is reference:
            for key, value in run_outcomes(run, problems, seed=seed, reuse=k0).items():
                data.probed.setdefault(key, value)
        for key, value in run_outcomes(run, problems, seed=seed, extra_flops=data.probe_flops).items():
            data.probed.setdefault(key, value)
    return data


def _prefill_fit_data(loaded: list[Run], runs: list[Run], reference: Run, problems: list[str], seed: int,
                      prompts: "PromptReader | None") -> FitData:
    """FitData for the prefill probe: the prompts' features, and every setting with one prefill added."""
    if prompts is None:
        raise ConfigError("the prefill probe needs the prompts' features: pass prompts=PromptReader(cache_path)")
    data = FitData(loaded, reference, problems)
    data.features = prompts.features_for(*loaded)  # every run: pooled runs may come from several benchmark options
    # One prefill of the whole prompt, nothing cached: cache-independent, as every price here.
    data.probe_flops = {p: float(reference.cost_model.prefill(data.features[p].prompt_tokens, 0)) for p in problems}
    for run in [reference] + [r for r in runs if r is not reference]:
        for key, value in run_outcomes(run, problems, seed=seed).items():
            data.outcomes.setdefault(key, value)
        for key, value in run_outcomes(run, problems, seed=seed, extra_flops=data.probe_flops).items():
            data.probed.setdefault(key, value)
    return data


def fit_prefill_probe(data: FitData, split: Split, *, pooling: str = "auto", seed: int = 0,
                      num_bins: int = diff.NUM_BINS) -> Probe:
    """Train the prefill probe's regressor on the fitting problems' features and pass@1, and set
    its edges (and data.probe_values) from out-of-fold predictions. Refuses problems outside `split`."""
    outside = [p for p in data.problems if not in_split(p, split)]
    if outside:
        raise ConfigError(f"problem {outside[0]!r} is not in split {split!r}; the probe's regressor trains on the fitting split only")
    records = data.records()
    ids = list(records)
    regressor, held_out = fit_regressor(data.reference.model, [data.features[p] for p in ids], [records[p].pass1 for p in ids],
                                        pooling=pooling, seed=seed)
    data.probe_values = dict(zip(ids, map(float, held_out)))
    return Probe(k0=0, statistic="prefill", edges=diff.quantile_edges(list(data.probe_values.values()), num_bins),
                 mean_flops=float(np.mean([data.probe_flops[p] for p in ids])), regressor=regressor)


def predict_prefill(data: FitData, probe: Probe) -> None:
    """data.probe_values from a fitted prefill probe (evaluation: the regressor as trained)."""
    data.probe_values = {p: probe.regressor.predict(data.features[p]) for p in data.problems}


def data_hash(runs: Sequence[Run], problems: Sequence[str]) -> str:
    """sha256 over every run's samples.jsonl and config, and the problem ids fitted on."""
    digest = hashlib.sha256()
    for run in sorted(runs, key=lambda r: str(r.dir)):
        digest.update((run.dir / "config.json").read_bytes())
        digest.update((run.dir / "samples.jsonl").read_bytes())
    digest.update("\n".join(problems).encode())
    return digest.hexdigest()


def bins_of(data: FitData, oracle_edges: Sequence[float], probe: Probe) -> dict[BinSource, dict[str, int]]:
    """Each problem's oracle bin (pass@1 of all its samples) and predicted bin (the probe)."""
    records = data.records()
    ids = list(records)
    pass1 = [records[p].pass1 for p in ids]
    if probe.is_prefill:
        if set(ids) - set(data.probe_values):
            raise ConfigError("the prefill probe's predictions are missing: fit_prefill_probe or predict_prefill first")
        stats = [data.probe_values[p] for p in ids]
    else:
        stats = [diff.probe_of_record(records[p], probe.k0, probe.statistic) for p in ids]
    return {
        "oracle": dict(zip(ids, diff.assign_bins(pass1, oracle_edges))),
        "predicted": dict(zip(ids, diff.assign_bins(stats, probe.edges))),
    }


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


def fit_policy(run_dirs: Sequence[Path | str], *, split: Split = "all", num_bins: int = diff.NUM_BINS, k0: int = 4,
               statistic: diff.ProbeStatistic = "agreement", min_gain: float = 0.0, seed: int = 0,
               prompts: "PromptReader | None" = None, pooling: str = "auto") -> AllocationPolicy:
    """Fit a policy from finished runs of one model and benchmark (problems in `split` only).

    statistic "prefill": the prefill probe, its features read by `prompts` (a ttscale.probe.PromptReader),
    its regressor's pooling chosen on the fitting problems ("auto") or given; `k0` is ignored.
    """
    data = load_fit_data(run_dirs, split, seed, k0, statistic, prompts)
    records = data.records()
    ids = list(records)
    oracle_edges = diff.quantile_edges([records[p].pass1 for p in ids], num_bins)
    config = data.reference.config
    if statistic == "prefill":
        probe = fit_prefill_probe(data, split, pooling=pooling, seed=seed, num_bins=num_bins)
        k0 = 0
    else:
        probe_edges = diff.quantile_edges([diff.probe_of_record(records[p], k0, statistic) for p in ids], num_bins)
        probe = Probe(k0=k0, statistic=statistic, verifier=config.verifier if statistic == "verifier" else None,
                      edges=probe_edges, mean_flops=float(np.mean([data.probe_flops[p] for p in ids])))
    bins = bins_of(data, oracle_edges, probe)
    benchmark = build_benchmark(config)
    deployable = sorted({s.verifier for s, _ in data.outcomes.values() if s.verifier and not s.uses_gold})
    policy = AllocationPolicy(
        version=PREFILL_POLICY_VERSION if probe.is_prefill else POLICY_VERSION,
        model=data.reference.model,
        num_params=data.reference.num_params,
        benchmark=config.benchmark,
        benchmark_options=config.benchmark_options,
        verifier=", ".join(deployable) or None,
        prompt_template=prompt_template_of(benchmark),
        sampling=config.sampling.model_copy(update={"seed": None, "n": 1}),
        data_hash=data_hash(data.runs, data.problems),
        runs=[str(r.dir) for r in data.runs],
        split=split,
        problem_ids=data.problems,
        num_bins=num_bins,
        oracle_edges=oracle_edges,
        probe=probe,
        oracle_tables=bin_tables(data, bins["oracle"], num_bins, min_gain, data.outcomes),
        predicted_tables=bin_tables(data, bins["predicted"], num_bins, min_gain, data.probed, k0),
        unprobed=bin_tables(data, {p: 0 for p in data.problems}, 1, min_gain, data.outcomes)[0].model_copy(update={"bin": -1}),
    )
    problem = policy.table_problem()
    if problem:
        raise ConfigError(f"the fitted policy cannot serve: {problem}; fit on runs with a best-of-n run that used no gold")
    return policy

