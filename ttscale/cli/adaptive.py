"""`ttscale adaptive`: adaptive methods replayed from a recorded best-of-N run, held out."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ttscale.analysis.adaptive import default_families, held_out
from ttscale.analysis.runs import load_run
from ttscale.cli.common import FORMAT, Format, Output


def adaptive_command(
    run_dir: Path = typer.Argument(..., help="A best-of-N run directory (record logprobs with -S logprobs=10 for DeepConf)."),
    orders: int = typer.Option(20, "--orders", help="Sample orders each method is replayed over: the recorded one, then random permutations."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples of the held-out problems for the 95% intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutations, the subsampling and the bootstrap."),
    curves: bool = typer.Option(False, "--curves", help="Also print every setting of every method on the held-out half."),
    format: Format = FORMAT,
) -> None:
    """Adaptive methods replayed from a best-of-N run, held out, against best-of-N majority.

    No gold at inference: each method's setting is chosen on half a of the problems (the cheapest
    that reaches best-of-N majority's accuracy there), then measured on half b against best-of-N
    majority: the compute best-of-N needs for the same accuracy.
    """

    output = Output(format)
    run = load_run(run_dir)
    families = default_families(run)
    if not any(name.startswith("DeepConf") for name in families):
        output.note("The run recorded no token logprobs: DeepConf and the verifier-free votes are left out "
                    "(record them with `ttscale eval -s best-of-n -S logprobs=10`).")
    base, results = held_out(run, families, orders=orders, bootstrap=bootstrap, seed=seed)
    problems = base.correct.shape[1]
    flops, _ = base.curve("flops")
    output.note(f"Held-out half b: {problems} problems; best-of-{base.ks[-1]} majority accuracy "
                f"{base.correct[-1].mean():.3f} at {flops[-1]:.3g} FLOPs per problem. Settings chosen on half a.")
    columns = ["method", "setting (chosen on a)", "accuracy [95% CI]", "samples", "FLOPs", "tokens",
               "best-of-N FLOPs there", "saving FLOPs [95% CI]", "saving tokens [95% CI]"]
    rows = [[r.family, r.setting, f"{r.accuracy:.3f} [{r.accuracy_ci[0]:.3f}, {r.accuracy_ci[1]:.3f}]",
             f"{r.samples:.2f}", f"{r.cost['flops']:.3g}", f"{r.cost['generated_tokens']:.0f}",
             _cost(r.bon_cost["flops"]), _saving(r, "flops"), _saving(r, "generated_tokens")] for r in results]
    output.table("Compute at equal accuracy vs best-of-N majority (held out; no gold at inference)", columns, rows)
    output.note(">x: best-of-N majority never reaches that accuracy, even at full N; inf in an interval: in some resamples it does not. "
                "below best-of-1: less accurate than one sample, so no saving is credited (0 in an interval's resamples).")
    if curves:
        for r in results:
            output.table(f"{r.family}: every setting on half b", ["setting", "accuracy", "samples", "FLOPs", "tokens"],
                         [[point.label, f"{point.correct.mean():.3f}", f"{point.mean('samples'):.2f}",
                           f"{point.mean('flops'):.3g}", f"{point.mean('generated_tokens'):.0f}"] for point in r.curve])
    output.finish()


def _cost(value: float) -> str:
    return "never" if math.isinf(value) else "below best-of-1" if math.isnan(value) else f"{value:.3g}"


def _saving(result, axis: str) -> str:
    """The saving with its interval; where best-of-N never reaches the method's accuracy, the
    saving is at least its full-N cost over the method's ("> x")."""
    low, high = result.saving_ci[axis]
    at_least = result.bon_full_cost[axis] / result.cost[axis]
    saving = result.saving[axis]
    value = "below best-of-1" if math.isnan(saving) else f">{at_least:.2f}x" if math.isinf(saving) else f"{saving:.2f}x"
    return f"{value} [{low:.2f}, {'inf' if math.isinf(high) else f'{high:.2f}'}]"

