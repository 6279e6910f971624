"""`ttscale verifier train|eval`: verifiers learned from one's own graded runs (ttscale.verifier_training)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ttscale.analysis.runs import load_run
from ttscale.cli.common import ENGINE_LOG, FORMAT, Format, Output, console, errors
from ttscale.quiet import output_to_log
from ttscale.reward_heads import RewardHead
from ttscale.verifier_training import FEATURES_FILE, backend_kind, evaluate, train

verifier_app = typer.Typer(help="Train a verifier (ORM or PRM head on the policy model's hidden states) from your own runs, and measure it held out.",
                           no_args_is_help=True)
RUNS = typer.Argument(..., help="Run directories (runs/<id>) of graded best-of-N runs of one model.")
FEATURES = typer.Option(None, "--features", help="The .npz cache of the solutions' step-end hidden states (default: features.npz in the "
                        "verifier's directory); share one between ORM, PRM and eval so each solution is read once.")


def engine_output(runs, log_path: Path, say: Console = console):
    """Where vLLM's own output goes while its engines run: a log file beside the verifier, as
    `eval` keeps it in the run directory (a fake run starts no engine and prints nothing)."""

    if all(backend_kind(run) == "fake" for run in runs):
        return nullcontext()
    say.print(f"The engines' output goes to {log_path}.")
    return output_to_log(log_path, say, errors)


def _kind(value: str) -> str:
    if value not in ("orm", "prm"):
        raise typer.BadParameter(f"--kind must be orm or prm, got {value!r}")
    return value


def _estimation(value: str) -> str:
    if value not in ("soft", "hard"):
        raise typer.BadParameter(f"--estimation must be soft or hard, got {value!r}")
    return value


def _prover(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in ("best-of-k", "policy"):
        raise typer.BadParameter(f"--prover must be best-of-k or policy, got {value!r}")
    return value


def _label(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in ("math-shepherd", "pav"):
        raise typer.BadParameter(f"--label must be math-shepherd or pav, got {value!r}")
    return value


@verifier_app.command("train")
def train_command(
    run_dirs: list[Path] = RUNS,
    kind: str = typer.Option(..., "--kind", help="orm: learn each solution's grade; prm: learn each step's value from rollouts.", callback=_kind),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for head.json (and the PRM's rollouts.jsonl, which makes a rerun resume)."),
    label: Optional[str] = typer.Option(None, "--label", help="PRM labels: math-shepherd (default: the fraction of rollouts reaching gold) or pav (Setlur et al.: that value plus alpha times the step's progress under a prover, --prover).", callback=_label),
    rollouts: int = typer.Option(4, "--rollouts", min=1, help="PRM: rollouts from each step prefix (k)."),
    estimation: str = typer.Option("soft", "--estimation", help="Math-Shepherd's step label: soft (the fraction of rollouts reaching gold) or hard (1 if any does).", callback=_estimation),
    samples_per_problem: Optional[int] = typer.Option(None, "--samples-per-problem", min=1, help="Recorded samples per problem trained on, correct and incorrect alternately (default: 2 for a PRM, whose are rolled out; every one for an ORM)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="PAV: weight of the prover's advantage in a step's score, Q + alpha·A (default 1; the paper's value was not found, see ttscale/verifier_training.py)."),
    prover: Optional[str] = typer.Option(None, "--prover", help="PAV's prover: best-of-k (default; the paper's: Best-of-K of the policy, each of its rollouts K of the policy's, correct if any is) or policy (the policy itself: the Q-difference, which ranks the children of one step exactly as Q does).", callback=_prover),
    prover_k: Optional[int] = typer.Option(None, "--prover-k", min=2, help="PAV: K of the Best-of-K prover (default 4, the paper's best: Bo4); each step prefix gets --rollouts x K rollouts of the policy, all metered."),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="Requests in flight at once."),
    features: Optional[Path] = FEATURES,
) -> None:
    """Train on half a of the runs' problems only; half b stays held out for `ttscale verifier eval`."""

    runs = [load_run(d) for d in run_dirs]

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            console.print(f"{stage}: {done}/{total}")

    with engine_output(runs, out / ENGINE_LOG):
        result = train(runs, out, kind=kind, label=label, rollouts=rollouts, samples_per_problem=samples_per_problem,
                       estimation=estimation, prover=prover, prover_k=prover_k, concurrency=concurrency, features_cache=features,
                       progress=progress, **({"alpha": alpha} if alpha is not None else {}))
    head, p = result.head, result.head.provenance
    console.print(f"Trained a {head.description} on {len(p.fit_problems)} problems of half a, {p.examples} examples "
                  f"(labels sum {p.positives:g}); features: {head.model}'s final hidden state at each step's end.")
    console.print(f"Cross-validated on half a (problem folds): " + ", ".join(f"{k} {v:g}" for k, v in p.cv.items()))
    if head.kind == "prm":
        r = p.rollouts
        if head.label == "pav":
            console.print(f"Step labels: Q^pi from all {r['rollouts_per_prefix']:g} rollouts of each step's literal prefix, plus alpha {head.alpha:g} "
                          f"x the step's progress A^mu under the prover ({head.description}: groups of {head.prover_k}, a group correct if any of it is).")
        else:
            console.print(f"Step labels: {'hard' if r.get('hard_estimation') else 'soft'} estimation (Math-Shepherd), "
                          "from each step's literal prefix.")
        console.print(f"Training cost, rollouts (apart from inference): {r['prefixes']:g} prefixes x {r['rollouts_per_prefix']:g} rollouts, "
                      f"{result.rollout_cost.generated_tokens:,} generated tokens, {result.rollout_cost.flops:.3g} FLOPs "
                      f"({result.rollouts_run} prefixes rolled out now, the rest read from {out / 'rollouts.jsonl'}).")
    console.print(f"Training cost, reading the solutions: {result.feature_tokens:,} prompt tokens, {result.feature_flops:.3g} FLOPs.")
    console.print(f"Wrote {out / 'head.json'} (training data sha256 {p.data_sha256[:16]}…). Use it with -v trained -V path={out}")


@verifier_app.command("eval")
def eval_command(
    head_dir: Path = typer.Argument(..., help="The directory `ttscale verifier train` wrote (or its head.json)."),
    run_dirs: list[Path] = RUNS,
    features: Optional[Path] = FEATURES,
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap resamples of the held-out problems for the 95% intervals."),
    format: Format = FORMAT,
) -> None:
    """Measure a trained verifier on the held-out half b of the runs: AUROC of its scores against the grades."""

    output = Output(format)
    head = RewardHead.load(head_dir)
    cache = features or (head_dir if head_dir.is_dir() else head_dir.parent) / FEATURES_FILE
    runs = [load_run(d) for d in run_dirs]
    with engine_output(runs, cache.with_name(ENGINE_LOG), output.console):
        result = evaluate(head, runs, features_cache=cache, resamples=bootstrap)
    rows = []
    for name, (value, low, high) in result.auroc.items():
        verdict = "n/a (one class)" if value != value else "yes" if low > 0.5 else "no (interval holds 0.5)" if high >= 0.5 else "inverted"
        rows.append([name, f"{value:.3f}", f"[{low:.3f}, {high:.3f}]", verdict])
    output.table(f"Held out (half b): {result.problems} problems, {result.solutions} solutions, {result.correct} correct",
                 ["score", "AUROC", "95% CI (problems resampled)", "separates right from wrong?"], rows)
    output.note(f"Reading the held-out solutions cost {result.prompt_tokens:,} prompt tokens, {result.flops:.3g} FLOPs "
                  f"({result.prompt_tokens / max(result.solutions, 1):.0f} tokens per solution: the verifier's inference cost).")
    output.finish()
