"""`ttscale adaptive`: adaptive methods replayed from a recorded best-of-N run, held out."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ttscale.analysis.adaptive import default_families, held_out
from ttscale.analysis.guarantee import LOSSES, GuaranteeResult, check_levels, guaranteed
from ttscale.analysis.runs import load_run
from ttscale.cli.common import FORMAT, Format, Output
from ttscale.errors import ConfigError


def adaptive_command(
    run_dir: Path = typer.Argument(..., help="A best-of-N run directory (record logprobs with -S logprobs=10 for DeepConf)."),
    orders: int = typer.Option(20, "--orders", help="Sample orders each method is replayed over: the recorded one, then random permutations."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples of the held-out problems for the 95% intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutations, the subsampling and the bootstrap."),
    curves: bool = typer.Option(False, "--curves", help="Also print every setting of every method on the held-out half."),
    epsilon: list[float] = typer.Option(None, "--epsilon", help="Calibrate instead (Learn then Test): the accuracy loss against full best-of-N allowed, e.g. 0.02; repeat for several."),
    delta: float = typer.Option(None, "--delta", help="With --epsilon: the chance the guarantee may fail (default 0.1)."),
    loss: str = typer.Option("gold", "--loss", help="With --epsilon: gold (full best-of-N right, the method wrong; reads gold on half a) or disagreement (answers differ; no gold)."),
    format: Format = FORMAT,
) -> None:
    """Adaptive methods replayed from a best-of-N run, held out, against best-of-N majority.

    No gold at inference: each method's setting is chosen on half a of the problems (the cheapest
    that reaches best-of-N majority's accuracy there), then measured on half b against best-of-N
    majority: the compute best-of-N needs for the same accuracy.

    With --epsilon and --delta: each method's threshold is calibrated on half a by Learn then Test
    so that, with probability >= 1 - delta, its expected loss against full best-of-N is <= epsilon;
    half b reports the realised loss and the compute saved.
    """

    output = Output(format)
    if epsilon:
        check_levels(epsilon, 0.1 if delta is None else delta)
        if loss not in LOSSES:
            raise ConfigError(f"--loss {loss!r}: choose one of {', '.join(LOSSES)}")
    elif delta is not None or loss != "gold":
        raise ConfigError("--delta and --loss set a calibration: give the accuracy loss allowed too, e.g. --epsilon 0.02")
    run = load_run(run_dir)
    if epsilon:
        _guarantee(output, guaranteed(run, epsilon, 0.1 if delta is None else delta, loss=loss, orders=orders, seed=seed))
        output.finish()
        return
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


def _guarantee(output: Output, results: list[GuaranteeResult]) -> None:
    """The calibrated table: per method and epsilon, what half a certified and what half b saw."""
    first = results[0]
    output.note(f"Learn then Test on half a ({first.n_fit} problems; loss: {first.loss}; delta {first.delta}); measured on "
                f"half b against full best-of-N majority (accuracy {first.full_accuracy:.3f}, {first.full_cost['flops']:.3g} FLOPs "
                f"and {first.full_cost['eflops']:.3g} eFLOPs per problem).")
    columns = ["method", "epsilon", "certified", "setting (cheapest certified on a)", f"{first.loss} loss on a", "p-value",
               "gold loss on b", "disagreement on b", "accuracy on b", "samples", "saving FLOPs", "saving eFLOPs", "saving tokens",
               "n for a saving (setting)"]
    rows = [[r.family, f"{r.epsilon:g}", f"{r.calibration.certified} of {len(r.settings)}", r.setting, f"{r.fit_risk:.4f}",
             "-" if math.isnan(r.p_value) else f"{r.p_value:.3g}", f"{r.realised_loss:.4f}", f"{r.realised_disagreement:.3f}",
             f"{r.accuracy:.3f}", f"{r.samples:.2f}", f"{r.saving['flops']:.2f}x", f"{r.saving['eflops']:.2f}x",
             f"{r.saving['generated_tokens']:.2f}x", _needed(r)] for r in results]
    output.table("Adaptive compute with a guarantee: risk <= epsilon w.p. >= 1 - delta (Learn then Test, fixed sequence)",
                 columns, rows)
    output.note("Nothing certified: the method falls back to full best-of-N (no saving). n for a saving: the fewest "
                "calibration problems that would certify a setting cheaper than full best-of-N on half a, were the "
                "half-a losses the same at that n, and the setting then chosen (never: every such setting, or one "
                "before it on the path, loses epsilon or more). Each method's guarantee holds on its own; picking a "
                "method after seeing half a needs delta split among them.")


def _needed(result: GuaranteeResult) -> str:
    if result.needed_for_saving is None:
        return "never"
    n, setting = result.needed_for_saving
    return f"{n} ({setting})"


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

