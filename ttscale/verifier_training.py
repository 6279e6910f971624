"""Train a verifier from one's own graded runs: labels, rollouts, features, a head; held-out figures.

Data. Recorded runs are read through ttscale.analysis.runs. Only half "a" of the problems
(ttscale.problems.split_of, a hash of the problem id) is trained on; half "b" is held
out for `evaluate`. `check_fitting_only` refuses any held-out problem before any rollout or fit.

Labels:
- ORM: each recorded sample's grade.
- PRM, Math-Shepherd (Wang et al. 2024): from the prefix ending at step i, k rollouts are sampled
  with the run's own sampling settings. The paper defines two labels: soft estimation (the
  default here), Q_i = the fraction of rollouts that reach the gold answer; hard estimation
  (`estimation="hard"`), Q_i = 1 if any rollout reaches it, else 0. The last step's prefix is the
  whole solution, so Q_last = its grade (no rollout). Q before the first step is the problem's
  recorded pass@1 (its N samples are N rollouts from the empty prefix). The prefix is the literal
  text the model produced up to the end of step i and its separator (`steps.step_prefixes`), not
  the stripped steps rejoined, so a rollout continues exactly what was generated; each stored
  rollout row records its prefix, and a row whose prefix is not the solution's is rolled out again.
- PRM, PAV (Setlur et al. 2024, "Rewarding Progress", arXiv 2410.08146): a step's reward is
  Q^pi + alpha·A^mu, where A^mu(s_i) = Q^mu(s_i) - Q^mu(s_{i-1}) is the progress the step makes
  under a prover mu distinct from the policy pi; the paper's provers are Best-of-K of the base
  policy. Here mu = Best-of-K(pi) with a correctness oracle (gold at training time, as in the
  paper): from each step prefix, m = `rollouts` groups of K rollouts of pi are drawn (m·K in
  all, metered as training cost); Q^pi = the fraction of the m·K that reach gold, Q^mu = the
  fraction of the m groups in which at least one does (`pav_labels`). The last step's Q^pi and
  Q^mu are its grade; before the first step Q^pi is the recorded pass@1 and Q^mu the recorded
  samples' unbiased pass@K (`prover_start_value`). Two heads on the same features: a logistic
  value head on Q^pi and a ridge advantage head on A^mu; a step scores value + alpha·advantage.
  Two heads rather than one on the sum, so that alpha stays a serving knob (`-V alpha=`) and the
  value head stays a probability.
  K (`prover_k`, default PROVER_K = 4): the paper's "Choice of prover" comparison (Section 5,
  provers Bo2 to Bo32 for the Gemma-2B base policy) finds Bo4 best. alpha (default
  DEFAULT_ALPHA = 1): the paper's value was not found in the copies of the paper searched here
  (abstract and figure descriptions); 1 weighs Q^pi and A^mu equally, and was this module's
  value before the prover existed.
  What PAV can and cannot change: with exact values Q^mu = 1 - (1 - Q^pi)^K
  (`best_of_k_value`), which increases with Q^pi, so children of ONE parent (one Q^mu(parent))
  are ranked by Q^pi + alpha·A^mu exactly as by Q^pi, whatever K (alpha >= 0). PAV ranks
  differently from Q only across parents (a beam search ranks all beams' children together, as
  search-and-learn does, and the parents' Q^mu differ) and where Q^mu is estimated from its own
  groups (not a function of the estimated Q^pi: sampling noise, not a property of the method).
  `prover="policy"` (K = 1, the label "Q-difference, prover = policy"): mu = pi, A = Q_i - Q_{i-1};
  it ranks siblings exactly as Q does (parent Q 0.5, children Q (0.25, 0.75, 0.5): Q + A = (0, 1, 0.5)).

Rollouts are metered (their cost is training cost, reported apart from inference) and written to
rollouts.jsonl as they finish, so an interrupted training resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np

from ttscale.analysis.passk import pass_at_k
from ttscale.analysis.runs import Record, Run, run_prompts
from ttscale.build import build_backend, build_benchmark
from ttscale.cost import CostMeter
from ttscale.errors import ConfigError
from ttscale.hidden_states import RIDGE_ALPHAS, CachedHiddenStates, hidden_state_backend, step_features
from ttscale.problems import derive_seed, split_of
from ttscale.reward_heads import Kind, Label, LinearHead, Provenance, Prover, RewardHead, data_hash
from ttscale.steps import STEP_SEPARATOR, split_steps, step_prefixes
from ttscale.types import Cost, GenRequest, Problem, SampleParams

if TYPE_CHECKING:
    from ttscale.protocols import Backend, Benchmark

ROLLOUTS_FILE = "rollouts.jsonl"
FEATURES_FILE = "features.npz"
FOLDS = 5
LOGISTIC_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))
SPLIT_RULE = "ttscale.problems.split_of: sha256(problem id), first byte & 1 -> a (fit) | b (held out)"
Estimation = Literal["soft", "hard"]  # Math-Shepherd's two step labels (Wang et al. 2024)
PROVER_K = 4  # PAV's Best-of-K prover: Bo4, the best of Bo2..Bo32 in Setlur et al. 2024, Section 5 ("Choice of prover")
DEFAULT_ALPHA = 1.0  # PAV's weight of A^mu; the paper's value was not found here (see the module docstring)


# -- closed-form labels --------------------------------------------------------------------------


def math_shepherd_values(rollout_correct: Sequence[Sequence[bool]], final_correct: bool,
                         estimation: Estimation = "soft") -> list[float]:
    """Q of every step from its prefix's rollouts: soft, the fraction that were correct; hard, 1 if
    any was correct, else 0 (Math-Shepherd's two estimations). The last step's Q is the grade."""
    if estimation == "hard":
        return [float(any(c)) for c in rollout_correct] + [float(final_correct)]
    return [sum(c) / len(c) for c in rollout_correct] + [float(final_correct)]


def pav_advantages(values: Sequence[float], start_value: float) -> list[float]:
    """A_i = Q_i - Q_{i-1}, with Q before the first step = `start_value` (under the same policy)."""
    return [after - before for before, after in zip([start_value, *values[:-1]], values)]


def best_of_k_value(q: float, k: int) -> float:
    """The exact value of Best-of-K(pi) with a correctness oracle where pi's value is q: 1 - (1 - q)^K."""
    return 1.0 - (1.0 - q) ** k


def prover_values(rollout_correct: Sequence[Sequence[bool]], final_correct: bool, k: int) -> list[float]:
    """Q^mu of every step for mu = Best-of-K(pi): a prefix's rollouts, in order, form groups of k (one
    Best-of-K rollout each, correct if any of its k is); Q^mu = the fraction of correct groups. The
    last step's is the grade. With k = 1 this is Math-Shepherd's soft Q."""
    values = []
    for correct in rollout_correct:
        if not correct or len(correct) % k:
            raise ConfigError(f"{len(correct)} rollouts from a prefix do not form groups of the prover's K = {k}; "
                              "delete rollouts.jsonl or pass the --rollouts and --prover-k it was made with")
        groups = [any(correct[i:i + k]) for i in range(0, len(correct), k)]
        values.append(sum(groups) / len(groups))
    return values + [float(final_correct)]


def prover_start_value(pass1: float, samples: int, k: int) -> float:
    """Q^mu before the first step, from the problem's `samples` recorded samples (its N rollouts from
    the empty prefix): the unbiased pass@K, the chance that K of them hold a correct one; with fewer
    than K recorded (or their number unknown, 0), the plug-in 1 - (1 - pass@1)^K."""
    if samples >= k:
        return pass_at_k(samples, round(pass1 * samples), k)
    return best_of_k_value(pass1, k)


def pav_labels(rollout_correct: Sequence[Sequence[bool]], final_correct: bool, *, start_prover: float,
               k: int) -> tuple[list[float], list[float]]:
    """PAV's two targets per step: Q^pi (the fraction of all the prefix's rollouts that reach gold)
    and A^mu = Q^mu_i - Q^mu_{i-1} under mu = Best-of-K(pi) (`prover_values`), with Q^mu before the
    first step = `start_prover` (`prover_start_value`). k = 1 is mu = pi (the Q-difference)."""
    return math_shepherd_values(rollout_correct, final_correct), pav_advantages(prover_values(rollout_correct, final_correct, k), start_prover)


def check_fitting_only(problem_ids: Sequence[str]) -> None:
    """Refuse to train on any problem of the held-out half."""
    held_out = sorted({pid for pid in problem_ids if split_of(pid) != "a"})
    if held_out:
        raise ConfigError(f"{len(held_out)} training problems are in the held-out half b (e.g. {held_out[0]!r}); "
                          "a verifier trains on half a only, so that `ttscale verifier eval` measures it on problems it never saw")


# -- what is trained on ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Solution:
    """One recorded sample to learn from: its problem, its steps, its grade."""

    problem: Problem
    sample: int  # index among its record's samples
    steps: tuple[str, ...]
    correct: bool
    pass1: float  # its problem's recorded pass@1
    num_tokens: int
    mean_logprob: float | None = None
    score: float | None = None  # the score its run's verifier gave it
    text: str = ""  # the sample's text as generated; `steps` are its stripped steps
    recorded_samples: int = 0  # how many samples its problem recorded (pass1's denominator; 0: unknown)

    @property
    def key(self) -> str:
        return f"{self.problem.id}#{self.sample}"

    def prefix(self, step: int) -> str:
        """The literal text up to the end of step `step` (0-based) and its separator."""
        return step_prefixes(self.text)[step]


def recorded_solutions(runs: Sequence["Run"], split: str) -> list[Solution]:
    """The samples of every problem of `split` in the runs (a problem in several runs: its first record)."""
    seen: set[str] = set()
    solutions = []
    for run in runs:
        problems = run_prompts(run)
        for record in run.records:
            if split_of(record.problem_id) != split or record.problem_id in seen:
                continue
            seen.add(record.problem_id)
            for i, sample in enumerate(record.samples):
                if not sample.text:
                    raise ConfigError(f"{run.dir}: problem {record.problem_id!r} recorded no sample texts; a verifier learns from them")
                steps = tuple(split_steps(sample.text))  # () for a sample with no text: never read, scored 0
                solutions.append(Solution(problems[record.problem_id], i, steps, sample.correct, record.pass1,
                                          sample.num_tokens, sample.mean_logprob, sample.score, sample.text, record.n))
    return solutions


def pick_for_rollouts(solutions: Sequence[Solution], per_problem: int) -> list[Solution]:
    """Up to `per_problem` samples of each problem, alternating correct and incorrect ones in
    recorded order (so both kinds of step get labels), for the PRM's rollouts."""
    by_problem: dict[str, list[Solution]] = {}
    for s in solutions:
        by_problem.setdefault(s.problem.id, []).append(s)
    picked = []
    for group in by_problem.values():
        right = [s for s in group if s.correct]
        wrong = [s for s in group if not s.correct]
        order = [s for pair in zip(right, wrong) for s in pair] + right[len(wrong):] + wrong[len(right):]
        picked += order[:per_problem]
    return picked


# -- rollouts -----------------------------------------------------------------------------------


async def rollout_prefix(meter, benchmark: "Benchmark", solution: Solution, step: int, *, k: int,
                         params: SampleParams, run_seed: int) -> list[bool]:
    """k rollouts continuing the solution after its step `step` (0-based); whether each reaches gold.

    The prefix is the solution's own text up to the end of that step and its separator, byte for
    byte (`Solution.prefix`). A rollout may take the tokens the solution had left (its length
    scaled by the prefix's share of the text)."""
    prefix = solution.prefix(step)
    spent = round(solution.num_tokens * min(1.0, len(prefix) / max(len(solution.text), 1)))
    request = GenRequest(prompt=solution.problem.prompt, prefix=prefix, params=params.model_copy(update={
        "n": k, "max_tokens": max(1, params.max_tokens - spent), "seed": derive_seed(run_seed, "rollout", solution.key, step),
        "stop": (), "logprobs": None}))
    [generation] = await meter.generate([request])
    return [benchmark.grade(solution.problem, benchmark.extract_answer(prefix + c.text)).correct for c in generation.completions]


class RolloutStore:
    """rollouts.jsonl: one line per (solution, step) with its rollouts' grades and cost; resumable."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[tuple[str, int], dict[str, Any]] = {}
        lines = path.read_text().splitlines() if path.is_file() else []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                self.done[(row["solution"], int(row["step"]))] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number < len(lines):  # only a last line torn by a kill is expected (and redone)
                    raise ConfigError(f"{path}:{number}: not a rollout record; delete the file to redo the rollouts") from None

    def add(self, row: dict[str, Any]) -> None:
        self.done[(row["solution"], int(row["step"]))] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def row(self, solution: Solution, step: int) -> dict[str, Any] | None:
        """The stored rollouts from `solution`'s literal prefix at `step`, or None (none stored, or
        stored from another prefix: an earlier version rejoined stripped steps)."""
        row = self.done.get((solution.key, step))
        return row if row is not None and row.get("prefix") == solution.prefix(step) else None


async def run_rollouts(backend: "Backend", benchmark: "Benchmark", solutions: Sequence[Solution], store: RolloutStore, *,
                       k: int, params: SampleParams, run_seed: int, concurrency: int = 16,
                       progress: Callable[[int, int], None] | None = None) -> None:
    """Rollouts from every intermediate step prefix not in the store yet; each written as it finishes."""
    todo = [(s, i) for s in solutions for i in range(len(s.steps) - 1) if store.row(s, i) is None]
    limit = asyncio.Semaphore(concurrency)
    finished = 0

    async def one(solution: Solution, step: int) -> None:
        nonlocal finished
        async with limit:
            meter = CostMeter(backend)
            correct = await rollout_prefix(meter, benchmark, solution, step, k=k, params=params, run_seed=run_seed)
            store.add({"solution": solution.key, "step": step, "prefix": solution.prefix(step), "k": k, "correct": correct,
                       "cost": meter.cost.model_dump()})
            finished += 1
            if progress:
                progress(finished, len(todo))

    await asyncio.gather(*(one(s, i) for s, i in todo))


# -- fitting ------------------------------------------------------------------------------------


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature means and scales (StandardScaler's: a constant feature, up to rounding, gets scale 1)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    return scaler.mean_, scaler.scale_


def fit_logistic(x: np.ndarray, soft: np.ndarray, groups: Sequence[str]) -> tuple[LinearHead, dict[str, float]]:
    """Logistic regression on soft labels in [0, 1] (each row twice: label 1 weighted q, label 0
    weighted 1 - q, i.e. cross-entropy against q); C by cross-validated log loss over problem folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    mean, scale = _standardize(x)
    z = (x - mean) / scale
    groups = np.asarray(groups)
    folds = list(GroupKFold(n_splits=min(FOLDS, len(set(groups)))).split(z, soft, groups))

    def fit(rows, c):
        both = np.concatenate([z[rows], z[rows]])
        labels = np.concatenate([np.ones(len(rows)), np.zeros(len(rows))])
        weights = np.concatenate([soft[rows], 1 - soft[rows]])
        keep = weights > 0
        return LogisticRegression(C=c, max_iter=2000).fit(both[keep], labels[keep], sample_weight=weights[keep])

    if len(set(soft > 0.5)) < 2 and not np.any((soft > 0) & (soft < 1)):
        raise ConfigError("every training label is the same; a head needs both right and wrong examples (record more problems)")
    if any(not (np.any(soft[train] > 0) and np.any(soft[train] < 1)) for train, _ in folds):
        right, wrong = int(np.sum(soft > 0)), int(np.sum(soft < 1))
        raise ConfigError(f"too few examples of one kind to cross-validate over {len(folds)} problem folds ({right} of "
                          f"{len(soft)} labels above 0, {wrong} below 1): a fold would train on one kind only; "
                          "record more problems (or more samples per problem)")
    best_c, best_loss, best_oof = LOGISTIC_CS[0], math.inf, None
    for c in LOGISTIC_CS:
        oof = np.zeros(len(soft))
        for train, test in folds:
            oof[test] = fit(train, c).predict_proba(z[test])[:, 1]
        p = np.clip(oof, 1e-6, 1 - 1e-6)
        loss = float(-np.mean(soft * np.log(p) + (1 - soft) * np.log(1 - p)))
        if loss < best_loss:
            best_c, best_loss, best_oof = c, loss, oof
    model = fit(np.arange(len(soft)), best_c)
    cv = {"log_loss": round(best_loss, 4), "base_log_loss": round(_base_loss(soft), 4)}
    hard = soft >= 0.5
    if len(set(hard)) == 2:
        cv["auroc"] = round(float(roc_auc_score(hard, best_oof)), 4)
    head = LinearHead(link="logistic", feature_mean=mean.tolist(), feature_scale=scale.tolist(),
                      coef=model.coef_[0].tolist(), intercept=float(model.intercept_[0]), penalty=best_c)
    return head, cv


def _base_loss(soft: np.ndarray) -> float:
    """The log loss of predicting the mean label everywhere: what a head must beat."""
    p = float(np.clip(soft.mean(), 1e-6, 1 - 1e-6))
    return float(-np.mean(soft * math.log(p) + (1 - soft) * math.log(1 - p)))


def fit_ridge(x: np.ndarray, y: np.ndarray) -> tuple[LinearHead, dict[str, float]]:
    """Ridge regression (alpha by leave-one-out, RidgeCV) for the PAV advantage."""
    from sklearn.linear_model import RidgeCV

    mean, scale = _standardize(x)
    ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit((x - mean) / scale, y)
    head = LinearHead(link="identity", feature_mean=mean.tolist(), feature_scale=scale.tolist(),
                      coef=ridge.coef_.tolist(), intercept=float(ridge.intercept_), penalty=float(ridge.alpha_))
    return head, {"advantage_r2_in_sample": round(float(ridge.score((x - mean) / scale, y)), 4)}


# -- features -----------------------------------------------------------------------------------


def backend_kind(run: "Run") -> str:
    """How a run's policy model is read: the fake's rows for a fake run, else vLLM's pooling runner."""
    return "fake" if run.config.backend == "fake" else "vllm"


def backend_options(run: "Run") -> dict[str, Any]:
    """Options for the hidden-state backend of a run (the fake's answer key, which shapes its rows)."""
    key = run.config.backend_options.get("answer_key") if backend_kind(run) == "fake" else None
    return {"answer_key": key} if key else {}


async def solution_features(backend, solutions: Sequence[Solution], concurrency: int = 16) -> tuple[list[np.ndarray], int, float]:
    """Every solution's step-end vectors (one metered prefill each) and what reading them all costs:
    prompt tokens and FLOPs (through a CachedHiddenStates backend, a solution read before costs what
    its prefill did)."""
    limit = asyncio.Semaphore(concurrency)
    meters = [CostMeter(backend) for _ in solutions]

    async def read(meter, solution: Solution) -> np.ndarray:
        async with limit:
            [rows] = await step_features(meter, solution.problem.prompt, [solution.steps])
            return rows

    rows = await asyncio.gather(*(read(m, s) for m, s in zip(meters, solutions)))
    return list(rows), sum(m.cost.prompt_tokens for m in meters), sum(m.cost.flops for m in meters)


def read_features(run: "Run", solutions: Sequence[Solution], cache_path: Path | None, concurrency: int = 16
                  ) -> tuple[list[np.ndarray], int, float]:
    """Step-end vectors of solutions of `run`'s model, starting its hidden-state engine only if the cache lacks some."""
    backend = CachedHiddenStates(hidden_state_backend(backend_kind(run), run.config.model, **backend_options(run)), cache_path)

    async def go():
        try:
            return await solution_features(backend, solutions, concurrency)
        finally:
            await backend.close()  # writes the cache

    return asyncio.run(go())


# -- train ----------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    head: RewardHead
    rollout_cost: Cost  # generation for the PRM's labels (training cost)
    feature_tokens: int  # prompt tokens of the prefills that read the training solutions
    feature_flops: float
    rollouts_run: int  # prefixes rolled out by this invocation (the rest came from rollouts.jsonl)


def train(runs: Sequence["Run"], out_dir: Path, *, kind: Kind, label: Label | None = None, rollouts: int = 4,
          samples_per_problem: int | None = None, alpha: float = DEFAULT_ALPHA, estimation: Estimation = "soft",
          prover: Prover | None = None, prover_k: int | None = None, concurrency: int = 16,
          features_cache: Path | None = None, progress: Callable[[str, int, int], None] | None = None) -> TrainingResult:
    """Train an ORM or a PRM on half a of the runs' problems and write DIR/head.json.

    `samples_per_problem` (default: 2 for a PRM, every sample for an ORM) picks correct and
    incorrect samples alternately (`pick_for_rollouts`); an ORM given the PRM's number trains on
    the same solutions, so their features are read once. `estimation`: Math-Shepherd's soft or
    hard step label (`math_shepherd_values`). PAV: `prover` (default "best-of-k") and its K
    (`prover_k`, default PROVER_K); each prefix then gets `rollouts` groups of K rollouts of the policy."""
    label = label or ("grade" if kind == "orm" else "math-shepherd")
    if (kind == "orm") != (label == "grade"):
        raise ConfigError(f"--kind {kind} trains on {'grades' if kind == 'orm' else 'math-shepherd or pav labels'}, not {label!r}")
    if estimation == "hard" and label != "math-shepherd":
        raise ConfigError(f"--estimation hard is Math-Shepherd's label; {label} labels do not take it")
    if label != "pav" and (prover is not None or prover_k is not None):
        raise ConfigError(f"--prover and --prover-k are PAV's (--label pav); {label} labels do not take them")
    if label == "pav":
        prover = prover or "best-of-k"
        if prover == "policy" and prover_k not in (None, 1):
            raise ConfigError(f"--prover policy is the policy itself (K = 1); drop --prover-k {prover_k} or use --prover best-of-k")
        prover_k = 1 if prover == "policy" else prover_k or PROVER_K
        if prover == "best-of-k" and prover_k < 2:
            raise ConfigError("--prover-k 1 is the policy itself; pass --prover policy for that (Q-difference), or K >= 2")
    group = prover_k if label == "pav" else 1  # rollouts of the policy per rollout of the prover
    if not runs:
        raise ConfigError("pass at least one recorded run directory")
    models = {r.model for r in runs}
    if len(models) > 1:
        raise ConfigError(f"the runs are of several models ({', '.join(sorted(models))}); a head reads one model's hidden states")
    run = runs[0]
    solutions = recorded_solutions(runs, "a")
    if not solutions:
        raise ConfigError("no recorded problem of the runs is in the fitting half a; record more problems")
    out_dir.mkdir(parents=True, exist_ok=True)
    rollout_cost, rollouts_run, rollout_info = Cost(), 0, {}
    if samples_per_problem is None:
        samples_per_problem = 2 if kind == "prm" else None
    solutions = [s for s in solutions if s.steps]  # an empty sample has no hidden state to learn from
    chosen = solutions if samples_per_problem is None else pick_for_rollouts(solutions, samples_per_problem)
    check_fitting_only([s.problem.id for s in chosen])
    if kind == "prm":
        store = RolloutStore(out_dir / ROLLOUTS_FILE)
        before = len(store.done)
        benchmark = build_benchmark(run.config)
        if any(store.row(s, i) is None for s in chosen for i in range(len(s.steps) - 1)):
            generator = build_backend(run.config)
            try:
                asyncio.run(run_rollouts(generator, benchmark, chosen, store, k=rollouts * group, params=run.config.sampling,
                                         run_seed=run.config.seed, concurrency=concurrency,
                                         progress=(lambda i, n: progress("rollouts", i, n)) if progress else None))
            finally:
                asyncio.run(generator.close())
        rollouts_run = len(store.done) - before
        rows = [store.row(s, i) for s in chosen for i in range(len(s.steps) - 1)]
        if any(r["k"] != rollouts * group for r in rows):
            asked = f"--rollouts {rollouts}" + (f" x --prover-k {group}" if group > 1 else "")
            raise ConfigError(f"{store.path} holds another number of rollouts per prefix than {asked}; pass the same or delete the file")
        rollout_cost = sum((Cost.model_validate(r["cost"]) for r in rows), Cost())
        rollout_info = {"rollouts_per_prefix": rollouts * group, "hard_estimation": float(estimation == "hard"),  # 0: soft
                        "prefixes": len(rows), "solutions": len(chosen),
                        "generated_tokens": rollout_cost.generated_tokens, "flops": rollout_cost.flops}
        if label == "pav":
            rollout_info["prover_k"] = group  # the prover's rollouts per prefix: rollouts_per_prefix / prover_k
    features, feature_tokens, feature_flops = read_features(run, chosen, features_cache or out_dir / FEATURES_FILE, concurrency)
    train_rows, x_rows, values, advantages, groups = [], [], [], [], []
    for solution, rows in zip(chosen, features):
        if kind == "orm":
            x_rows.append(rows[-1])
            values.append(float(solution.correct))
            groups.append(solution.problem.id)
            train_rows.append({"id": solution.key, "text": STEP_SEPARATOR.join(solution.steps), "label": float(solution.correct)})
            continue
        grades = [store.row(solution, i)["correct"] for i in range(len(solution.steps) - 1)]
        if label == "pav":
            q, a = pav_labels(grades, solution.correct, start_prover=prover_start_value(solution.pass1, solution.recorded_samples, group),
                              k=group)
        else:
            q, a = math_shepherd_values(grades, solution.correct, estimation), []
        for i in range(len(solution.steps)):
            x_rows.append(rows[i])
            values.append(q[i])
            groups.append(solution.problem.id)
        advantages += a
        train_rows.append({"id": solution.key, "text": STEP_SEPARATOR.join(solution.steps), "values": q} | ({"advantages": a} if a else {}))
    x = np.stack(x_rows)
    value_head, cv = fit_logistic(x, np.asarray(values), groups)
    advantage_head = None
    if label == "pav":
        advantage_head, more = fit_ridge(x, np.asarray(advantages))
        cv.update(more)
    head = RewardHead(
        kind=kind, label=label, model=run.model, model_path=run.config.model, backend=backend_kind(run),
        value=value_head, advantage=advantage_head, alpha=alpha,
        prover=prover if label == "pav" else None, prover_k=group if label == "pav" else None,
        provenance=Provenance(
            runs=[str(r.dir) for r in runs], split_rule=SPLIT_RULE, fit_problems=sorted({s.problem.id for s in chosen}),
            examples=len(values), positives=round(float(np.sum(values)), 4), data_sha256=data_hash(train_rows),
            rollouts=rollout_info, cv=cv),
    )
    head.save(out_dir)
    return TrainingResult(head, rollout_cost, feature_tokens, feature_flops, rollouts_run)


# -- held-out evaluation --------------------------------------------------------------------------


def auroc_with_interval(labels: Sequence[bool], scores: Sequence[float], groups: Sequence[str], *,
                        resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """AUROC and a 95% bootstrap interval over problems (a problem's samples move together)."""
    from sklearn.metrics import roc_auc_score

    labels, scores, groups = np.asarray(labels, bool), np.asarray(scores, float), np.asarray(groups)
    if len(set(labels)) < 2:
        return math.nan, math.nan, math.nan
    value = float(roc_auc_score(labels, scores))
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        if len(set(labels[rows])) == 2:
            draws.append(roc_auc_score(labels[rows], scores[rows]))
    return value, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


@dataclass
class HeldOut:
    """A head measured on the held-out half: how well its scores separate right from wrong."""

    problems: int
    solutions: int
    correct: int
    auroc: dict[str, tuple[float, float, float]]  # by score: AUROC and its 95% interval over problems
    prompt_tokens: int  # the prefills that read the held-out solutions (the verifier's inference cost)
    flops: float


def scored_by(run: "Run", head: RewardHead) -> bool:
    """Whether a run's candidates carry this head's scores (a best-of-N run with `-v trained` of it,
    e.g. a recorded run replayed with `--backend replay`): then they are read, not recomputed."""
    if run.config.verifier != "trained" or run.config.strategy != "best-of-n":
        return False
    options = run.config.verifier_options
    try:
        used = RewardHead.load(options.get("path", ""))
    except ConfigError:
        return False
    if options.get("alpha") is not None:
        used = used.model_copy(update={"alpha": float(options["alpha"])})
    return used == head and all(s.score is not None for r in run.records for s in r.samples)


def evaluate(head: RewardHead, runs: Sequence["Run"], *, features_cache: Path | None = None, concurrency: int = 16,
             resamples: int = 1000) -> HeldOut:
    """AUROC against the grades on half b of the runs: the head's score of each recorded solution
    (its last step's; a PRM's weakest step's too, when the features are read here), beside the
    verifier-free mean token logprob where the runs recorded logprobs. Runs that recorded this
    head's scores (`scored_by`) are read as they are; others are read by the hidden-state engine."""
    if {r.model for r in runs} != {head.model}:
        raise ConfigError(f"the head reads {head.model}'s hidden states; the runs are of {', '.join(sorted({r.model for r in runs}))}")
    solutions = recorded_solutions(runs, "b")
    if not solutions:
        raise ConfigError("no recorded problem of the runs is in the held-out half b; record more problems")
    leaked = sorted({s.problem.id for s in solutions} & set(head.provenance.fit_problems))
    if leaked:
        raise ConfigError(f"{len(leaked)} held-out problems (e.g. {leaked[0]!r}) are in the head's training problems; it cannot be measured on them")
    labels = [s.correct for s in solutions]
    groups = [s.problem.id for s in solutions]
    if all(scored_by(run, head) for run in runs):  # the runs recorded this head's scores: read them
        tokens = sum(int(r.cost.get("verifier_tokens", 0)) for run in runs for r in run.records if split_of(r.problem_id) == "b")
        flops = sum(float(r.cost.get("verifier_flops", 0)) for run in runs for r in run.records if split_of(r.problem_id) == "b")
        scores = {f"{head.description}, last step": [s.score for s in solutions]}
    else:
        features, tokens, flops = read_features(runs[0], solutions, features_cache, concurrency)
        step_scores = [head.step_scores(rows) or [0.0] for rows in features]  # an empty solution scores 0, as served
        scores = {f"{head.description}, last step": [s[-1] for s in step_scores]}
        if head.kind == "prm":
            scores[f"{head.description}, weakest step"] = [min(s) for s in step_scores]
    if all(s.mean_logprob is not None for s in solutions):
        scores["mean token logprob (no verifier; baseline)"] = [s.mean_logprob for s in solutions]
    auroc = {name: auroc_with_interval(labels, values, groups, resamples=resamples) for name, values in scores.items()}
    return HeldOut(len(set(groups)), len(solutions), sum(labels), auroc, tokens, flops)
