"""CLI for coverage fits and budget allocation: `ttscale fit`, `ttscale allocate fit|eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from ttscale.cli.common import console
from ttscale.store import writable_file

allocate_app = typer.Typer(help="Fit a compute-optimal allocation policy from runs, and evaluate it on held-out problems.", no_args_is_help=True)

SPLIT_HELP = "Problems to use: all, or half a / half b by a stable hash of the problem id (fit on one, evaluate on the other)."


FEATURES_HELP = ("Prefill probe: the .npz cache of the prompts' hidden states, keyed by model and prompt "
                 "(default: next to the policy, POLICY.features.npz). Prompts not in it are read by one vLLM pooling engine.")


def features_path(policy: Path, features: Path | None) -> Path:
    """Where the prefill probe's feature cache lives: given, or next to the policy file."""
    return features if features is not None else policy.with_name(policy.stem + ".features.npz")


def _split(value: str) -> str:
    if value not in ("all", "a", "b"):
        raise typer.BadParameter(f"--split must be all, a or b, got {value!r}")
    return value


def fit_command(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<id>) of a best-of-N run with many samples."),
    plot: Optional[Path] = typer.Option(None, "--plot", "-o", help="Where to save the plot (default: RUN_DIR/coverage_fit.png)."),
    resamples: int = typer.Option(200, "--resamples", help="Bootstrap resamples over problems for the confidence intervals."),
    split: str = typer.Option("all", "--split", help=SPLIT_HELP, callback=_split),
) -> None:
    """Fit coverage c(k) = exp(a·k^b) to pass@k, overall and per difficulty bin; plot it over the data."""
    from ttscale.problems import in_split
    from ttscale.analysis import coverage, difficulty
    from ttscale.analysis.runs import load_run
    from ttscale.errors import ConfigError

    run = load_run(run_dir)
    plot = writable_file(plot or Path(run_dir) / "coverage_fit.png", "--plot")
    records = [r for r in run.records if r.n and in_split(r.problem_id, split)]
    if len(records) < difficulty.NUM_BINS:
        raise ConfigError(f"{run_dir}: {len(records)} problems with samples in split {split!r}; the fit needs at least "
                          f"{difficulty.NUM_BINS} (one per difficulty bin): run `ttscale eval` on more problems")
    n = min(r.n for r in records)
    _, bins = difficulty.oracle_bins(records)
    groups = {"all": records} | {f"bin {b}": [r for r in records if bins[r.problem_id] == b] for b in range(difficulty.NUM_BINS)}
    ks = np.arange(1, n + 1)
    far = np.unique(np.geomspace(1, 16 * n, 60).round())
    table = Table(title=f"coverage c(k) = exp(a·k^b) · {run.config.benchmark} · {run.model} · {len(records)} problems, n={n}")
    for column in ("group", "problems", "a [95% CI]", "b [95% CI]", f"c({n}) data", f"c({n}) fit", f"c({4 * n}) extrap.", f"c({16 * n}) extrap."):
        table.add_column(column, justify="left" if column == "group" else "right")
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (name, members), color in zip(groups.items(), plt.cm.viridis(np.linspace(0, 0.9, len(groups)))):
        if not members:
            table.add_row(name, "0", "-", "-", "-", "-", "-", "-")
            continue
        boot = coverage.bootstrap_fit(members, resamples=resamples)
        data = coverage.coverage_curve(members, ks)
        fit = boot.fit
        table.add_row(
            name, str(len(members)),
            f"{fit.a:.3f} [{boot.a_ci[0]:.3f}, {boot.a_ci[1]:.3f}]", f"{fit.b:.3f} [{boot.b_ci[0]:.3f}, {boot.b_ci[1]:.3f}]",
            f"{data[-1]:.3f}", f"{float(fit.predict(n)):.3f}", f"{float(fit.predict(4 * n)):.3f}", f"{float(fit.predict(16 * n)):.3f}",
        )
        color = "black" if name == "all" else color
        axes.plot(ks, data, "o", color=color, markersize=3)
        axes.plot(far, fit.predict(far), "-", color=color, label=f"{name} (a={fit.a:.2f}, b={fit.b:.2f})")
        low, high = boot.predict_ci(far)
        axes.fill_between(far, low, high, color=color, alpha=0.12)
    per_problem = [coverage.fit_problem(r) for r in records]
    console.print(table)
    console.print(
        f"Per-problem fits: {sum(f is not None for f in per_problem)} of {len(records)} problems "
        f"(the rest have all or none of their samples correct: no curve to fit). Bins of pass@1, {difficulty.NUMBERING}."
    )
    axes.axvline(n, color="grey", linestyle=":", linewidth=1)
    axes.set(xscale="log", xlabel="k (samples)", ylabel="coverage (pass@k)", ylim=(0, 1.02),
             title="pass@k (dots) and fitted exp(a·k^b); beyond the dotted line: extrapolation")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    console.print(f"Plot: {plot}")


@allocate_app.command("fit")
def allocate_fit(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories of one model and benchmark; a best-of-N run with many samples is required."),
    output: Path = typer.Option(Path("policy.json"), "--output", "-o", help="Where to write the policy."),
    split: str = typer.Option("all", "--split", help=SPLIT_HELP, callback=_split),
    k0: int = typer.Option(4, "--k0", help="Probe size: samples drawn to predict a new prompt's difficulty bin."),
    statistic: str = typer.Option("agreement", "--probe", help="Probe: agreement (self-agreement of k0 samples), verifier (their mean verifier score), or prefill (the model's hidden states of the prompt, one prefill, no samples; a ridge regressor predicts pass@1)."),
    min_gain: float = typer.Option(0.0, "--min-gain", help="A costlier setting must beat every cheaper one by more than this accuracy to be picked."),
    features: Optional[Path] = typer.Option(None, "--features", help=FEATURES_HELP),
    pooling: str = typer.Option("auto", "--pooling", help="Prefill probe: hidden states of the last prompt token, the mean over its tokens, both (last+mean), or auto (the best out-of-fold on the fitting split)."),
) -> None:
    """Fit a policy: per difficulty bin, the most accurate setting for every budget."""
    from ttscale.allocation.fit import fit_policy
    from ttscale.allocation.policy import describe_setting
    from ttscale.analysis.difficulty import NUMBERING

    if statistic not in ("agreement", "verifier", "prefill"):
        raise typer.BadParameter(f"--probe must be agreement, verifier or prefill, got {statistic!r}")
    if pooling not in ("auto", "last", "mean", "last+mean"):
        raise typer.BadParameter(f"--pooling must be auto, last, mean or last+mean, got {pooling!r}")
    writable_file(output, "--output")
    prompts = None
    if statistic == "prefill":
        from ttscale.probe import PromptReader

        prompts = PromptReader(features_path(output, features))
    policy = fit_policy(run_dirs, split=split, k0=k0, statistic=statistic, min_gain=min_gain, prompts=prompts, pooling=pooling)
    policy.save(output)
    k = policy.probe.k0
    if prompts is not None:
        regressor = policy.probe.regressor
        cv = ", ".join(f"{name} {value:.3f}" for name, value in regressor.cv_spearman.items())
        console.print(f"Prefill probe: {prompts.computed} prompts read by the engine, {len(prompts.cache) - prompts.computed} from "
                      f"{prompts.cache.path}; ridge (alpha {regressor.alpha:.3g}) on {regressor.problems} fitting problems, "
                      f"{regressor.pooling} pooling; out-of-fold Spearman with pass@1: {cv}; "
                      f"mean cost {policy.probe.mean_flops:.3e} FLOPs per prompt")
    sources = (
        (f"oracle bins ({NUMBERING}; bins from gold: an upper bound)", policy.oracle_tables, 0),
        (f"predicted bins ({policy.probe.describe()}, its cost included in every setting)", policy.predicted_tables, k),
        ("no probe (all fitting problems; bin -1)", [policy.unprobed], 0),
    )
    for source, tables, k in sources:
        table = Table(title=f"policy frontier · {source}")
        for column in ("bin", "problems", "setting", "accuracy", "mean FLOPs"):
            table.add_column(column)
        for t in tables:
            problems = t.entries[0].problems if t.entries else 0
            for i, entry in enumerate(t.frontier_flops):
                table.add_row(str(t.bin) if i == 0 else "", str(problems) if i == 0 else "", describe_setting(entry.setting, k), f"{entry.accuracy:.3f}", f"{entry.flops:.3e}")
        console.print(table)
    gold = sorted({e.setting.label() for e in policy.unprobed.entries if e.setting.uses_gold})
    if gold:
        console.print(f"Measured but never chosen, gold answers guided them (upper bounds): {'; '.join(gold)}")
    pays = [n for n in range(1, 65) if policy.probe_pays(budget_samples=n)]
    console.print(f"The probe pays at per-prompt budgets of {', '.join(map(str, pays))} samples." if pays else "The probe pays at no budget up to 64 samples: prompts run unprobed.")
    console.print(f"Policy ({policy.problems} problems, split {split}, data {policy.data_hash[:12]}): {output}; "
                  "`allocate eval` refuses these problems (evaluate on the other split)")


@allocate_app.command("eval")
def allocate_eval(
    policy_file: Path = typer.Argument(..., help="A policy written by `ttscale allocate fit`."),
    run_dirs: list[Path] = typer.Argument(..., help="The runs to evaluate on (the same runs, with the other --split)."),
    split: str = typer.Option("all", "--split", help=SPLIT_HELP, callback=_split),
    budget: Optional[list[float]] = typer.Option(None, "--budget", help="Per-prompt FLOP budget (repeatable; default: best-of-2/4/8's mean cost on the fitting problems)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    features: Optional[Path] = typer.Option(None, "--features", help=FEATURES_HELP),
) -> None:
    """Evaluate a policy on held-out problems against best-of-N majority at equal FLOPs."""
    from ttscale.allocation.evaluate import evaluate_policy
    from ttscale.allocation.policy import AllocationPolicy

    policy = AllocationPolicy.load(policy_file)
    if json_out:
        writable_file(json_out, "--json")
    prompts = None
    if policy.probe.is_prefill:
        from ttscale.probe import PromptReader

        prompts = PromptReader(features_path(policy_file, features))
    # refuses fitted problems and bad budgets
    report = evaluate_policy(policy, run_dirs, split=split, budgets=budget, prompts=prompts)
    curve = Table(title=f"best-of-N majority on {report['problems']} held-out problems (split {split})")
    for column in ("N", "accuracy", "mean FLOPs"):
        curve.add_column(column, justify="right")
    for point in report["best_of_n"]:
        curve.add_row(str(point["n"]), f"{point['accuracy']:.3f}", f"{point['flops']:.3e}")
    console.print(curve)
    table = Table(title="policy vs best-of-N at equal FLOPs")
    for column in ("#", "budget/prompt", "bins", "accuracy", "mean FLOPs", "BoN acc. @ same FLOPs", "BoN FLOPs for same acc.", "saving"):
        table.add_column(column, justify="left" if column == "bins" else "right")
    best = report["best_of_n"]
    for number, row in enumerate(report["rows"], start=1):
        if row["saving"] is not None:
            saving = f"{row['saving']:.2f}x"
        else:
            saving = f">{best[-1]['flops'] / row['flops']:.2f}x"  # policy beats BoN at every measured N
        needed = f"{row['bon_flops_for_accuracy']:.3e}" if row["bon_flops_for_accuracy"] is not None else f"> N={best[-1]['n']}"
        table.add_row(str(number), f"{row['budget_flops']:.3e}", row["mode"], f"{row['accuracy']:.3f}", f"{row['flops']:.3e}",
                      f"{row['bon_accuracy_at_flops']:.3f}", needed, saving)
    console.print(table)
    for number, row in enumerate(report["rows"], start=1):
        console.print(f"  #{number} settings used: " + "; ".join(f"{label} x{count}" for label, count in row["settings"].items()))
    console.print(
        f"Predicted bin = oracle bin for {report['bin_agreement']:.1%} of held-out problems "
        f"(oracle bins {report['oracle_bin_counts']}, predicted {report['predicted_bin_counts']}; {report['bin_numbering']}). "
        "Oracle-bin rows bin by graded samples: upper bounds, not a deployable policy."
    )
    probe = report["probe"]
    ratio = f" ({probe['flops_vs_one_sample']:.3f}x one sample)" if probe["flops_vs_one_sample"] else ""
    console.print(f"Probe: {probe['kind']}: {probe['mean_flops']:.3e} FLOPs per problem{ratio}; Spearman with pass@1 "
                  f"{probe['spearman_with_pass1']:.3f} [95% CI {probe['spearman_95ci'][0]:.2f}, {probe['spearman_95ci'][1]:.2f}]; within one bin of the oracle bin for {probe['within_one_bin']:.1%}.")
    confusion = Table(title="held-out problems by oracle bin (rows) and predicted bin (columns)")
    confusion.add_column("oracle \\ predicted")
    for b in range(len(probe["confusion"])):
        confusion.add_column(str(b), justify="right")
    for b, row in enumerate(probe["confusion"]):
        confusion.add_row(str(b), *map(str, row))
    console.print(confusion)
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
        console.print(f"Report: {json_out}")

