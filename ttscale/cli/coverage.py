"""`ttscale coverage-fit`: coverage c(k) = exp(a·k^b) (Large Language Monkeys) fitted to a run's pass@k.

It describes a run; the allocation policy is fitted by `ttscale allocate fit`. The old name `fit`,
which read as either, is refused with a line naming both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ttscale.analysis import coverage, difficulty
from ttscale.analysis.runs import load_run
from ttscale.cli.common import FORMAT, SPLIT, Column, Format, Output
from ttscale.errors import ConfigError
from ttscale.problems import Split, in_split
from ttscale.store import writable_file


def coverage_fit_command(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<id>) of a best-of-N run with many samples."),
    plot: Optional[Path] = typer.Option(None, "--plot", "-o", help="Where to save the plot (default: RUN_DIR/coverage_fit.png)."),
    resamples: int = typer.Option(200, "--resamples", help="Bootstrap resamples over problems for the confidence intervals."),
    split: Split = SPLIT,
    format: Format = FORMAT,
) -> None:
    """Fit coverage c(k) = exp(a·k^b) to pass@k, overall and per difficulty bin; plot it over the data."""
    output = Output(format)
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
    columns = [Column("group"), *(Column(name, "right") for name in ("problems", "a [95% CI]", "b [95% CI]", f"c({n}) data",
                                                                      f"c({n}) fit", f"c({4 * n}) extrap.", f"c({16 * n}) extrap."))]
    rows = []
    import matplotlib  # heavy: loads only to draw this plot

    matplotlib.use("Agg")  # files only; no display here
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for (name, members), color in zip(groups.items(), plt.cm.viridis(np.linspace(0, 0.9, len(groups)))):
        if not members:
            rows.append([name, "0", "-", "-", "-", "-", "-", "-"])
            continue
        boot = coverage.bootstrap_fit(members, resamples=resamples)
        data = coverage.coverage_curve(members, ks)
        fit = boot.fit
        rows.append([
            name, str(len(members)),
            f"{fit.a:.3f} [{boot.a_ci[0]:.3f}, {boot.a_ci[1]:.3f}]", f"{fit.b:.3f} [{boot.b_ci[0]:.3f}, {boot.b_ci[1]:.3f}]",
            f"{data[-1]:.3f}", f"{float(fit.predict(n)):.3f}", f"{float(fit.predict(4 * n)):.3f}", f"{float(fit.predict(16 * n)):.3f}",
        ])
        color = "black" if name == "all" else color
        axes.plot(ks, data, "o", color=color, markersize=3)
        axes.plot(far, fit.predict(far), "-", color=color, label=f"{name} (a={fit.a:.2f}, b={fit.b:.2f})")
        low, high = boot.predict_ci(far)
        axes.fill_between(far, low, high, color=color, alpha=0.12)
    per_problem = [coverage.fit_problem(r) for r in records]
    output.table(f"coverage c(k) = exp(a·k^b) · {run.config.benchmark} · {run.model} · {len(records)} problems, n={n}", columns, rows)
    output.note(
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
    output.note(f"Plot: {plot}")
    output.finish()


def old_fit_command() -> None:
    """Renamed: `coverage-fit` (the coverage curve c(k)); the allocation policy is `allocate fit`."""
    raise ConfigError("`ttscale fit` is now `ttscale coverage-fit` (coverage c(k) = exp(a·k^b) per difficulty bin, "
                      "with a plot); the allocation policy is fitted by `ttscale allocate fit`")
