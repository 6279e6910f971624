"""AllocationPolicy, the library: load a fitted policy, allocate a budget, run the Plan.

Snell et al. (2024) pick test-time settings per prompt difficulty. A policy holds, per
difficulty bin (ttscale.analysis.difficulty: bin 0 = hardest), every setting measured on the
fitting problems and the frontier `choose` picks from: for a budget, the most accurate setting
within it, so a larger budget never picks a worse expected accuracy. This module imports no
fitting code (that is ttscale.allocation.fit) and no engine.

Gold answers: a setting that gold guided (an oracle verifier's scores, the oracle rule) is kept
in the tables labelled as an upper bound, and never on a frontier, so it is never chosen. The
oracle-bin tables bin prompts by graded samples: planning with them (`difficulty=` given, or
`source="oracle"`) is the oracle policy, an upper bound unless the bin comes from elsewhere.

Probes. The sampling probe draws k0 samples and bins their answer agreement (or verifier
score); plain best-of-n then keeps them. The prefill probe (statistic "prefill", k0 = 0)
draws nothing: the policy model reads the prompt once through a pooling backend, and a ridge
regressor stored in the policy (ttscale.probe.PrefillRegressor) predicts its pass@1 from the
hidden states. Its cost (one prefill) is metered into the Plan like the sampling probe's.

Versions. A policy with a sampling probe is written as version 2, exactly as before, so older
ttscale releases still read it; a prefill probe is version 3 (older releases refuse it rather
than run a probe they do not know). Both load here.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ttscale.analysis import difficulty as diff
from ttscale.build import build_benchmark
from ttscale.config import RunConfig
from ttscale.errors import ConfigError, TtscaleError, describe_validation_error
from ttscale.hidden_states import read_prompt
from ttscale.probe import PrefillRegressor
from ttscale.problems import Split
from ttscale.protocols import Backend, PoolingBackend, Verifier
from ttscale.selection import first_answer, majority_vote
from ttscale.solve import as_problem, solve
from ttscale.types import Problem, SampleParams, Trace

POLICY_VERSION = 2  # 2: problem ids fitted on, gold taint per setting, the probe's verifier
PREFILL_POLICY_VERSION = 3  # 3: a prefill probe (hidden states and its regressor); otherwise as 2
READABLE_VERSIONS = (POLICY_VERSION, PREFILL_POLICY_VERSION)
BinSource = Literal["oracle", "predicted"]
UPPER_BOUND = "(upper bound: uses gold)"


class AllocationError(TtscaleError):
    """A policy cannot serve this request: budget too small, wrong model, unknown bin."""


def check_budget(value: float | None, name: str) -> None:
    """Refuse a budget that is not a finite number above 0 (None: not given)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise AllocationError(f"{name} must be a finite number above 0, got {value!r}; pass a per-prompt budget such as 1e11")


class Setting(BaseModel):
    """One runnable configuration: a registered strategy, its options, and its verifier."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    strategy: str
    options: dict[str, Any] = Field(default_factory=dict)
    verifier: str | None = None
    verifier_options: dict[str, Any] = Field(default_factory=dict)
    uses_gold: bool = Field(False, description="gold answers guided its results: an upper bound, never chosen")

    @property
    def samples(self) -> int:
        """N: the samples (or particles) the setting draws per problem."""
        return int(self.options.get("n", 1))

    def label(self) -> str:
        """A short readable name, e.g. "best-of-n n=4 selection=majority"."""
        options = " ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        verifier = f" +{self.verifier}" if self.verifier else ""
        gold = f" {UPPER_BOUND}" if self.uses_gold else ""
        return f"{self.strategy} {options}{verifier}".strip() + gold

    def key(self) -> str:
        """A canonical string that identifies the setting."""
        return json.dumps(self.model_dump(), sort_keys=True)

    def __repr__(self) -> str:
        return f"Setting({self.label()})"

    __str__ = __repr__  # pydantic's str lists every field

    @property
    def reuses_probe(self) -> bool:
        """Plain best-of-n: after a probe it keeps the probe's samples and draws only the rest."""
        return self.strategy == "best-of-n" and not self.verifier


def drawn_samples(setting: Setting, probe_k0: int = 0) -> int:
    """Samples a setting draws per prompt, a probe's included; plain best-of-n reuses the probe's."""
    if setting.reuses_probe:
        return max(setting.samples, probe_k0)
    return setting.samples + probe_k0


class Entry(BaseModel):
    """A setting's expected accuracy and mean cost on the fitting problems of one bin."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    setting: Setting
    accuracy: float
    flops: float  # the probe's cost included, in predicted-bin tables
    samples: int  # samples drawn per prompt, the probe's included
    problems: int  # fitting problems in the bin (0: an empty bin borrowing a neighbour's)

    def __repr__(self) -> str:
        return (f"Entry({self.setting.label()}: accuracy {self.accuracy:.3f}, {self.flops:.3g} FLOPs, "
                f"{self.samples} samples, {self.problems} problems)")

    __str__ = __repr__


class BinTable(BaseModel):
    """For one bin: every setting measured, and the smoothed frontier that `choose` picks from."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    bin: int
    entries: list[Entry]
    frontier_flops: list[Entry]
    frontier_samples: list[Entry]

    def __repr__(self) -> str:  # a bin's settings run to kilobytes; its size is what a reader wants
        return (f"BinTable(bin {self.bin}: {len(self.entries)} settings, frontier of {len(self.frontier_flops)} by FLOPs, "
                f"{len(self.frontier_samples)} by samples)")

    __str__ = __repr__


class Probe(BaseModel):
    """The cheap difficulty probe and its quantile edges: k0 samples and a statistic of them, or
    (statistic "prefill", k0 = 0) one prefill of the prompt and the regressor that reads it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    k0: int = Field(ge=0, description="samples the probe draws (0 for the prefill probe)")
    statistic: diff.ProbeStatistic = "agreement"
    verifier: str | None = None  # statistic "verifier": the verifier that scores the probe
    edges: list[float]
    mean_flops: float  # its mean cost on the fitting problems (the verifier's included when it reads one)
    regressor: PrefillRegressor | None = Field(None, description="statistic 'prefill': predicts pass@1 from hidden states")

    @model_validator(mode="after")
    def _consistent(self) -> "Probe":
        if self.is_prefill:
            if self.k0 != 0 or self.regressor is None:
                raise ValueError("the prefill probe draws no samples (k0=0) and needs its regressor")
        elif self.k0 < 1 or self.regressor is not None:
            raise ValueError(f"a {self.statistic} probe draws k0 >= 1 samples and has no regressor")
        return self

    @property
    def is_prefill(self) -> bool:
        """Whether the probe reads the prompt's hidden states (one prefill) instead of drawing samples."""
        return self.statistic == "prefill"

    def describe(self) -> str:
        """The probe in words, for tables."""
        if self.is_prefill:
            return f"prefill probe (hidden states, {self.regressor.pooling} pooling, ridge -> pass@1)"
        return f"probe k0={self.k0} by {self.statistic}"

    def __repr__(self) -> str:
        return f"Probe({self.describe()}, {len(self.edges) + 1} bins, {self.mean_flops:.3g} FLOPs)"

    __str__ = __repr__


def _pick(table: BinTable, what: str, budget_flops: float | None, budget_samples: int | None, strict: bool) -> Entry:
    """The last frontier entry within the budget (the smoothing), or the cheapest if not strict."""
    if (budget_flops is None) == (budget_samples is None):
        raise AllocationError("give exactly one budget: budget_flops=... or budget_samples=...")
    check_budget(budget_flops, "budget_flops")
    check_budget(budget_samples, "budget_samples")
    steps = table.frontier_flops if budget_flops is not None else table.frontier_samples
    if not steps:
        raise AllocationError(f"{what} has no setting to choose from; refit the policy on more problems")
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


class AllocationPolicy(BaseModel):
    """A fitted allocation policy: per difficulty bin, the best setting for each budget.

    Load it with `AllocationPolicy.load(path)`, then `allocate(prompt, budget_flops=...)`.
    """

    # Here and in its parts, NaN and infinity are refused: a NaN edge puts every prompt in one
    # bin, a NaN accuracy or cost makes every comparison false, and neither would say so.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    version: Literal[2, 3] = POLICY_VERSION  # 3 exactly when the probe is a prefill probe
    model: str
    num_params: int
    benchmark: str
    benchmark_options: dict[str, Any] = Field(default_factory=dict)
    verifier: str | None = None  # the verifiers of its deployable settings
    prompt_template: str | None = None  # wraps a bare prompt the way the fitting runs did
    sampling: SampleParams
    data_hash: str
    runs: list[str]
    split: Split
    problem_ids: list[str]  # the problems it was fitted on: evaluation refuses every one of them
    num_bins: int
    oracle_edges: list[float]
    probe: Probe
    oracle_tables: list[BinTable]
    predicted_tables: list[BinTable]
    unprobed: BinTable  # every fitting problem, no probe: for budgets where probing does not pay

    @model_validator(mode="after")
    def _version_matches_probe(self) -> "AllocationPolicy":
        wanted = PREFILL_POLICY_VERSION if self.probe.is_prefill else POLICY_VERSION
        if self.version != wanted:
            raise ValueError(f"a policy whose probe is {self.probe.statistic!r} is version {wanted}, not {self.version}")
        return self

    @property
    def problems(self) -> int:
        """How many problems it was fitted on."""
        return len(self.problem_ids)

    def __repr__(self) -> str:  # the tables and problem ids run to kilobytes
        return (f"AllocationPolicy({self.model} on {self.benchmark}, {self.num_bins} bins, {self.probe.describe()}, "
                f"fitted on {self.problems} problems of split {self.split})")

    __str__ = __repr__

    # -- persistence --

    def save(self, path: Path | str) -> Path:
        """Write the policy as indented JSON (a sampling probe's policy exactly as version 2 wrote it)."""
        path = Path(path)
        exclude = None if self.probe.is_prefill else {"probe": {"regressor"}}
        path.write_text(self.model_dump_json(indent=2, exclude=exclude))
        return path

    @classmethod
    def load(cls, path: Path | str) -> "AllocationPolicy":
        """Read a policy file, with errors that name the file and the bad field."""
        path = Path(path)
        refit = f"refit it with `ttscale allocate fit RUN_DIR... -o {path}`"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"policy file {path} does not exist; fit one with `ttscale allocate fit RUN_DIR -o {path}`") from None
        except IsADirectoryError:
            raise ConfigError(f"{path} is a directory, not a policy file; pass the file `ttscale allocate fit -o` wrote") from None
        except OSError as error:
            raise ConfigError(f"cannot read policy file {path} ({error.strerror or error})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not JSON ({getattr(error, 'msg', error)}); {refit}") from None
        if not isinstance(data, dict) or data.get("version") not in READABLE_VERSIONS:
            version = data.get("version") if isinstance(data, dict) else None
            readable = " and ".join(map(str, READABLE_VERSIONS))
            raise ConfigError(f"{path}: policy version {version!r}, this ttscale reads versions {readable}; {refit}")
        try:
            policy = cls.model_validate(data)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(error, str(path))[:400]) from None
        problem = policy.table_problem()
        if problem:
            raise ConfigError(f"{path}: {problem}; {refit}")
        return policy

    def table_problem(self) -> str | None:
        """Why the tables cannot serve (empty, missing bins, a gold setting on a frontier), or None."""
        if len(self.oracle_tables) != self.num_bins or len(self.predicted_tables) != self.num_bins:
            return f"the policy has {self.num_bins} bins but {len(self.oracle_tables)} oracle and {len(self.predicted_tables)} predicted tables"
        if len(self.probe.edges) != self.num_bins - 1 or len(self.oracle_edges) != self.num_bins - 1:
            return f"{self.num_bins} bins need {self.num_bins - 1} edges"
        for name, tables in (("oracle", self.oracle_tables), ("predicted", self.predicted_tables), ("unprobed", [self.unprobed])):
            for table in tables:
                if not table.entries or not table.frontier_flops or not table.frontier_samples:
                    return f"{name} table of bin {table.bin} is empty"
                if any(e.setting.uses_gold for e in table.frontier_flops + table.frontier_samples):
                    return f"{name} table of bin {table.bin} would choose a setting that gold answers guided"
        if not self.problem_ids:
            return "it records no fitting problems"
        return None

    # -- choosing --

    def table(self, bin: int, source: BinSource = "oracle") -> BinTable:
        """The bin's table, or a clear error for a bin this policy does not have."""
        if isinstance(bin, bool) or not isinstance(bin, (int, np.integer)) or not 0 <= bin < self.num_bins:
            raise AllocationError(f"unknown difficulty bin {bin!r}; this policy has bins 0-{self.num_bins - 1} ({diff.NUMBERING})")
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
        check_budget(budget_flops, "budget_flops")
        check_budget(budget_samples, "budget_samples")
        budget = dict(budget_flops=budget_flops, budget_samples=budget_samples)
        tables = [t for t in self.predicted_tables if t.entries[0].problems]
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
        return as_problem(prompt, self.prompt_template)

    def allocate(self, prompt: str | Problem, *, budget_flops: float | None = None, budget_samples: int | None = None,
                 difficulty: int | None = None, backend: "Backend | None" = None, model: str | None = None,
                 probe: bool | None = None, verifier: "Verifier | None" = None,
                 probe_backend: "PoolingBackend | None" = None) -> "Plan":
        """A Plan for one prompt. With `difficulty` (a bin) this is cheap: no probe runs.

        Without it the probe runs (its cost goes into the Plan) where it pays at this budget
        (probe=None), or always (True), or never (False): a sampling probe draws k0 samples on
        `backend` (scored by `verifier` when it reads verifier scores); a prefill probe reads
        the prompt once on `probe_backend` (see allocate_async).
        Inside a running event loop use `await policy.allocate_async(...)` instead.
        """
        check_budget(budget_flops, "budget_flops")
        check_budget(budget_samples, "budget_samples")
        if difficulty is None:
            if backend is None:
                raise AllocationError("pass difficulty=BIN, or backend=... so the probe can predict the bin")
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self.allocate_async(prompt, backend, budget_flops=budget_flops, budget_samples=budget_samples,
                                                       probe=probe, verifier=verifier, probe_backend=probe_backend))
            raise AllocationError("allocate() with a probe cannot run inside an event loop; use `await policy.allocate_async(...)`")
        if model is not None or backend is not None:
            self.check_model(model if model is not None else backend.model.name)
        entry = self.choose(difficulty, budget_flops=budget_flops, budget_samples=budget_samples, source="oracle")
        return Plan(self, self.problem(prompt), entry, difficulty, "given", budget_flops=budget_flops, budget_samples=budget_samples)

    async def allocate_async(self, prompt: str | Problem, backend: "Backend", *, budget_flops: float | None = None,
                             budget_samples: int | None = None, probe: bool | None = None,
                             verifier: "Verifier | None" = None, probe_backend: "PoolingBackend | None" = None) -> "Plan":
        """Run the probe, predict the bin, and plan for the budget. Where the probe does not pay,
        plan without it.

        A sampling probe draws k0 samples on `backend` (with `verifier` where it reads its scores).
        A prefill probe (policy.probe.is_prefill) needs the policy model's hidden states: pass
        `probe_backend`, a pooling backend of the same model, e.g.
        `VLLMPoolingBackend(model, mode="hidden")` (ttscale.backends.vllm_pooling), started once
        and shared across requests; `backend` itself serves when it is a pooling backend.
        """
        check_budget(budget_flops, "budget_flops")
        check_budget(budget_samples, "budget_samples")
        self.check_model(backend.model.name)
        problem = self.problem(prompt)
        budgets = dict(budget_flops=budget_flops, budget_samples=budget_samples)
        if probe is False or (probe is None and not self.probe_pays(**budgets)):
            return Plan(self, problem, self.choose_unprobed(**budgets), None, "unprobed", **budgets)
        if self.probe.is_prefill:
            return await self._prefill_plan(problem, backend, probe_backend, budgets)
        probe_verifier = None
        if self.probe.statistic == "verifier":
            if verifier is None:
                raise AllocationError(f"this policy's probe reads verifier scores ({self.probe.verifier}); "
                                      "pass verifier=... to allocate, or refit with --probe agreement")
            probe_verifier = verifier
        probe_trace = await solve(problem, backend=backend, options={"n": self.probe.k0}, params=self.sampling,
                                  answers=self._answers(), verifier=probe_verifier)
        samples = probe_trace.candidates
        stat = diff.probe_statistic([c.answer for c in samples], [c.score for c in samples], self.probe.statistic)
        bin = diff.assign_bins([stat], self.probe.edges)[0]
        entry = self.choose(bin, source="predicted", **budgets)
        return Plan(self, problem, entry, bin, "predicted", probe_trace, **budgets)

    async def _prefill_plan(self, problem: Problem, backend: "Backend", probe_backend: "PoolingBackend | None",
                            budgets: dict[str, Any]) -> "Plan":
        """The prefill probe: the model reads the prompt once (metered), the regressor predicts
        its pass@1, the edges bin it. The Plan's probe is a Trace with no candidates and that cost."""
        reader = probe_backend if probe_backend is not None else backend
        if not isinstance(reader, PoolingBackend):
            raise AllocationError("this policy's probe reads the prompt's hidden states: pass probe_backend=... , e.g. "
                                  f"VLLMPoolingBackend({self.model!r}, mode='hidden') from ttscale.backends.vllm_pooling")
        self.check_model(reader.model.name)
        features, cost = await read_prompt(reader, problem.prompt)  # the prompt only: a blind Problem has no gold
        predicted = self.probe.regressor.predict(features)
        bin = diff.assign_bins([predicted], self.probe.edges)[0]
        trace = Trace(candidates=(), selections={"majority": None}, chosen_rule="majority", cost=cost,
                      metadata={"probe": "prefill", "predicted_pass1": predicted, "prompt_tokens": features.prompt_tokens})
        return Plan(self, problem, self.choose(bin, source="predicted", **budgets), bin, "predicted", trace, **budgets)

    def _answers(self):
        """The fitting runs' benchmark (a .jsonl path included), for answer extraction and equivalence."""
        return build_benchmark(RunConfig(benchmark=self.benchmark, benchmark_options=self.benchmark_options))

    # -- batches --

    def allocate_batch(self, bins: Sequence[int], *, total_flops: float | None = None, total_samples: int | None = None,
                       source: BinSource = "oracle") -> list[Entry]:
        """Spread a total budget over prompts (given their bins) by greedy marginal gain.

        Each prompt's curve is its bin's frontier; prompts whose bin gains nothing from more
        compute (hopeless or trivially easy) keep the cheapest setting.
        """
        if (total_flops is None) == (total_samples is None):
            raise AllocationError("give exactly one total budget: total_flops=... or total_samples=...")
        check_budget(total_flops, "total_flops")
        check_budget(total_samples, "total_samples")
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


def describe_setting(setting: Setting, probe_k0: int = 0) -> str:
    """A setting's label; after a probe of k0 samples, what best-of-n then really does."""
    if not probe_k0:
        return setting.label()
    if setting.reuses_probe:
        if setting.samples <= probe_k0:
            return f"probe only (majority of its {probe_k0})"
        return f"best-of-n n={setting.samples} majority (probe's {probe_k0} + {setting.samples - probe_k0})"
    return f"probe + {setting.label()}"


@dataclass(repr=False)  # the generated repr would print the whole policy (kilobytes)
class Plan:
    """What the policy chose for one prompt under a budget; `await plan.run(backend)` carries it out."""

    policy: AllocationPolicy
    problem: Problem
    entry: Entry
    bin: int | None
    bin_source: str  # "given" (difficulty=), "predicted" (the probe) or "unprobed" (probe did not pay)
    probe: Trace | None = None
    budget_flops: float | None = None  # the per-prompt budget it was allocated under
    budget_samples: int | None = None

    @property
    def setting(self) -> Setting:
        """The chosen strategy, options and verifier."""
        return self.entry.setting

    def __repr__(self) -> str:
        where = "no bin" if self.bin is None else f"bin {self.bin}"
        budget = f"{self.budget_flops:.3g} FLOPs" if self.budget_flops is not None else \
            f"{self.budget_samples} samples" if self.budget_samples is not None else "no budget"
        return f"Plan({self.problem.id}: {self.describe()}; {where} ({self.bin_source}); budget {budget})"

    def config(self) -> dict[str, Any]:
        """The chosen setting as run-config fields (strategy, strategy_options, verifier...)."""
        s = self.setting
        return {"strategy": s.strategy, "strategy_options": s.options, "verifier": s.verifier, "verifier_options": s.verifier_options}

    def describe(self) -> str:
        """The plan in words, including the probe's reuse where there was one."""
        if self.probe is not None and self.policy.probe.is_prefill:
            return f"prefill probe + {self.setting.label()}"
        return describe_setting(self.setting, self.policy.probe.k0 if self.probe is not None else 0)

    async def run(self, backend: "Backend", verifier: "Verifier | None" = None, *, seed: int = 0) -> Trace:
        """Solve the prompt with the chosen setting, within the budget it was allocated under.

        `trace.cost` includes the probe's cost (metadata["probe_cost"] says how much). After a
        probe, plain best-of-n reuses the probe's k0 samples and draws only n - k0 more (the
        accounting the policy was fitted with); other settings run in full. The budget: never
        more samples than budget_samples (the probe's included); and when the probe alone has
        spent budget_flops, nothing more runs and the probe's majority answers.
        metadata["budget"] says what was allowed and what was spent.
        """
        self.policy.check_model(backend.model.name)
        if self.setting.verifier and verifier is None:
            raise AllocationError(f"the chosen setting {self.setting.label()} needs a verifier; pass plan.run(backend, verifier)")
        probe_k0 = len(self.probe.candidates) if self.probe is not None else 0
        if self.budget_samples is not None and drawn_samples(self.setting, probe_k0) > self.budget_samples:
            raise AllocationError(f"{self.describe()} draws more than the {self.budget_samples} samples allocated; allocate again")
        answers = self.policy._answers()
        options = dict(params=self.policy.sampling, answers=answers)
        if self.probe is None:
            trace = await solve(self.problem, backend=backend, strategy=self.setting.strategy, options=self.setting.options,
                                verifier=verifier, seed=seed, **options)
            return self._with_budget(trace)
        probe_cost = self.probe.cost
        # Budgets are cache-independent FLOPs, as the policy was fitted (ttscale.cost.cache_independent_cost).
        # A prefill probe has no answer to fall back on: its setting runs, and metadata says if it went over.
        exhausted = self.budget_flops is not None and probe_cost.structural_flops >= self.budget_flops and probe_k0 > 0
        if (self.setting.reuses_probe and probe_k0 > 0) or exhausted:
            candidates, cost = list(self.probe.candidates), probe_cost
            extra = 0 if exhausted else self.setting.samples - probe_k0
            if extra > 0:  # seed + 1: the continuation must not redraw the probe's samples
                more = await solve(self.problem, backend=backend, options={"n": extra}, seed=seed + 1, **options)
                candidates += more.candidates
                cost = cost + more.cost
            selections = {"majority": majority_vote(candidates, answers.equivalent), "first": first_answer(candidates)}
            metadata = {"probe_cost": probe_cost.model_dump(), "probe_reused": probe_k0}
            trace = Trace(candidates=tuple(candidates), selections=selections, chosen_rule="majority", metadata=metadata, cost=cost)
            return self._with_budget(trace, exhausted)
        trace = await solve(self.problem, backend=backend, strategy=self.setting.strategy, options=self.setting.options,
                            verifier=verifier, seed=seed + 1, **options)
        metadata = {**trace.metadata, "probe_cost": probe_cost.model_dump()}
        return self._with_budget(trace.model_copy(update={"cost": trace.cost + probe_cost, "metadata": metadata}))

    def _with_budget(self, trace: Trace, exhausted: bool = False) -> Trace:
        spent = trace.cost.structural_flops  # cache-independent, as the budget
        budget = {"flops": self.budget_flops, "samples": self.budget_samples, "spent_flops": spent,
                  "samples_drawn": len(trace.candidates), "probe_exhausted_it": exhausted,
                  # The policy's choice fits the budget on average; one prompt may cost more.
                  "over_flops": self.budget_flops is not None and spent > self.budget_flops}
        return trace.model_copy(update={"metadata": {**trace.metadata, "budget": budget}})
