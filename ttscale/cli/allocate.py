"""`ttscale allocate fit|eval`: a compute-optimal allocation policy fitted on runs, and evaluated held out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ttscale.allocation.evaluate import evaluate_policy
from ttscale.allocation.fit import fit_policy
from ttscale.allocation.policy import AllocationPolicy, describe_setting
from ttscale.analysis.difficulty import NUMBERING
from ttscale.cli.common import FORMAT, SPLIT, Column, Format, Output
from ttscale.probe import PromptReader
from ttscale.problems import Split
from ttscale.store import writable_file

allocate_app = typer.Typer(help="Fit a compute-optimal allocation policy from runs, and evaluate it on held-out problems.", no_args_is_help=True)


FEATURES_HELP = ("Prefill probe: the .npz cache of the prompts' hidden states, keyed by model and prompt "
                 "(default: next to the policy, POLICY.features.npz). Prompts not in it are read by one vLLM pooling engine.")


def features_path(policy: Path, features: Path | None) -> Path:
    """Where the prefill probe's feature cache lives: given, or next to the policy file."""
    return features if features is not None else policy.with_name(policy.stem + ".features.npz")


@allocate_app.command("fit")
def allocate_fit(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories of one model and benchmark; a best-of-N run with many samples is required."),
    output: Path = typer.Option(Path("policy.json"), "--output", "-o", help="Where to write the policy."),
    split: Split = SPLIT,
    k0: int = typer.Option(4, "--k0", help="Probe size: samples drawn to predict a new prompt's difficulty bin."),
    statistic: str = typer.Option("agreement", "--probe", help="Probe: agreement (self-agreement of k0 samples), verifier (their mean verifier score), or prefill (the model's hidden states of the prompt, one prefill, no samples; a ridge regressor predicts pass@1)."),
    min_gain: float = typer.Option(0.0, "--min-gain", help="A costlier setting must beat every cheaper one by more than this accuracy to be picked."),
    features: Optional[Path] = typer.Option(None, "--features", help=FEATURES_HELP),
    pooling: str = typer.Option("auto", "--pooling", help="Prefill probe: hidden states of the last prompt token, the mean over its tokens, both (last+mean), or auto (the best out-of-fold on the fitting split)."),
    format: Format = FORMAT,
) -> None:
    """Fit a policy: per difficulty bin, the most accurate setting for every budget."""

    if statistic not in ("agreement", "verifier", "prefill"):
        raise typer.BadParameter(f"--probe must be agreement, verifier or prefill, got {statistic!r}")
    if pooling not in ("auto", "last", "mean", "last+mean"):
        raise typer.BadParameter(f"--pooling must be auto, last, mean or last+mean, got {pooling!r}")
    writable_file(output, "--output")
    out = Output(format)
    prompts = None
    if statistic == "prefill":

        prompts = PromptReader(features_path(output, features))
    policy = fit_policy(run_dirs, split=split, k0=k0, statistic=statistic, min_gain=min_gain, prompts=prompts, pooling=pooling)
    policy.save(output)
    k = policy.probe.k0
    if prompts is not None:
        regressor = policy.probe.regressor
        cv = ", ".join(f"{name} {value:.3f}" for name, value in regressor.cv_spearman.items())
        out.note(f"Prefill probe: {prompts.computed} prompts read by the engine, {len(prompts.cache) - prompts.computed} from "
                 f"{prompts.cache.path}; ridge (alpha {regressor.alpha:.3g}) on {regressor.problems} fitting problems, "
                 f"{regressor.pooling} pooling; out-of-fold Spearman with pass@1: {cv}; "
                 f"mean cost {policy.probe.mean_flops:.3e} FLOPs per prompt")
    sources = (
        (f"oracle bins ({NUMBERING}; bins from gold: an upper bound)", policy.oracle_tables, 0),
        (f"predicted bins ({policy.probe.describe()}, its cost included in every setting)", policy.predicted_tables, k),
        ("no probe (all fitting problems; bin -1)", [policy.unprobed], 0),
    )
    for source, tables, k in sources:
        rows = []
        for t in tables:
            problems = t.entries[0].problems if t.entries else 0
            for i, entry in enumerate(t.frontier_flops):
                rows.append([str(t.bin) if i == 0 else "", str(problems) if i == 0 else "", describe_setting(entry.setting, k),
                             f"{entry.accuracy:.3f}", f"{entry.flops:.3e}"])
        out.table(f"policy frontier · {source}", ["bin", "problems", "setting", "accuracy", "mean FLOPs"], rows)
    gold = sorted({e.setting.label() for e in policy.unprobed.entries if e.setting.uses_gold})
    if gold:
        out.note(f"Measured but never chosen, gold answers guided them (upper bounds): {'; '.join(gold)}")
    pays = [n for n in range(1, 65) if policy.probe_pays(budget_samples=n)]
    out.note(f"The probe pays at per-prompt budgets of {', '.join(map(str, pays))} samples." if pays else "The probe pays at no budget up to 64 samples: prompts run unprobed.")
    out.note(f"Policy ({policy.problems} problems, split {split}, data {policy.data_hash[:12]}): {output}; "
             "`allocate eval` refuses these problems (evaluate on the other split)")
    out.finish()


@allocate_app.command("eval")
def allocate_eval(
    policy_file: Path = typer.Argument(..., help="A policy written by `ttscale allocate fit`."),
    run_dirs: list[Path] = typer.Argument(..., help="The runs to evaluate on (the same runs, with the other --split)."),
    split: Split = SPLIT,
    budget: Optional[list[float]] = typer.Option(None, "--budget", help="Per-prompt FLOP budget (repeatable; default: best-of-2/4/8's mean cost on the fitting problems)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full report as JSON here."),
    features: Optional[Path] = typer.Option(None, "--features", help=FEATURES_HELP),
    format: Format = FORMAT,
) -> None:
    """Evaluate a policy on held-out problems against best-of-N majority at equal FLOPs."""

    policy = AllocationPolicy.load(policy_file)
    if json_out:
        writable_file(json_out, "--json")
    prompts = None
    if policy.probe.is_prefill:

        prompts = PromptReader(features_path(policy_file, features))
    # refuses fitted problems and bad budgets
    report = evaluate_policy(policy, run_dirs, split=split, budgets=budget, prompts=prompts)
    output = Output(format)
    right = lambda name: Column(name, "right")  # noqa: E731
    output.table(f"best-of-N majority on {report['problems']} held-out problems (split {split})", [right("N"), right("accuracy"), right("mean FLOPs")],
                 [[str(point["n"]), f"{point['accuracy']:.3f}", f"{point['flops']:.3e}"] for point in report["best_of_n"]])
    best = report["best_of_n"]
    rows = []
    for number, row in enumerate(report["rows"], start=1):
        if row["saving"] is not None:
            saving = f"{row['saving']:.2f}x"
        else:
            saving = f">{best[-1]['flops'] / row['flops']:.2f}x"  # policy beats BoN at every measured N
        needed = f"{row['bon_flops_for_accuracy']:.3e}" if row["bon_flops_for_accuracy"] is not None else f"> N={best[-1]['n']}"
        rows.append([str(number), f"{row['budget_flops']:.3e}", row["mode"], f"{row['accuracy']:.3f}", f"{row['flops']:.3e}",
                     f"{row['bon_accuracy_at_flops']:.3f}", needed, saving])
    output.table("policy vs best-of-N at equal FLOPs",
                 [right("#"), right("budget/prompt"), Column("bins"), right("accuracy"), right("mean FLOPs"),
                  right("BoN acc. @ same FLOPs"), right("BoN FLOPs for same acc."), right("saving")], rows)
    for number, row in enumerate(report["rows"], start=1):
        output.note(f"  #{number} settings used: " + "; ".join(f"{label} x{count}" for label, count in row["settings"].items()))
    output.note(
        f"Predicted bin = oracle bin for {report['bin_agreement']:.1%} of held-out problems "
        f"(oracle bins {report['oracle_bin_counts']}, predicted {report['predicted_bin_counts']}; {report['bin_numbering']}). "
        "Oracle-bin rows bin by graded samples: upper bounds, not a deployable policy."
    )
    probe = report["probe"]
    ratio = f" ({probe['flops_vs_one_sample']:.3f}x one sample)" if probe["flops_vs_one_sample"] else ""
    output.note(f"Probe: {probe['kind']}: {probe['mean_flops']:.3e} FLOPs per problem{ratio}; Spearman with pass@1 "
                f"{probe['spearman_with_pass1']:.3f} [95% CI {probe['spearman_95ci'][0]:.2f}, {probe['spearman_95ci'][1]:.2f}]; within one bin of the oracle bin for {probe['within_one_bin']:.1%}.")
    output.table("held-out problems by oracle bin (rows) and predicted bin (columns)",
                 [Column("oracle \\ predicted"), *(right(str(b)) for b in range(len(probe["confusion"])))],
                 [[str(b), *map(str, row)] for b, row in enumerate(probe["confusion"])])
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
        output.note(f"Report: {json_out}")
    output.finish()

