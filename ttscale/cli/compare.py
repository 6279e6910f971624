"""`ttscale compare` and `ttscale report`: strategies side by side at matched compute."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ttscale.analysis.compare import AXIS_NAMES, COST_AXES, common_label, table_points
from ttscale.analysis.model_vs_search import SNELL_RATIOS
from ttscale.analysis.scaling import UPPER_BOUND
from ttscale.cli.common import FORMAT, Column, Format, Output, console, half
from ttscale.cost import KINETICS_INTENSITY
from ttscale.problems import Split
from ttscale.store import writable_dir, writable_file

RUNS = typer.Argument(..., help="Run directories written by `ttscale eval` (e.g. runs/arithmetic-best-of-n-1a2b3c4d5e6f).")


def _options(rule, subsets, bootstrap, seed, intensity, budgets, budget_count, ratio, adaptive=False, split=None, common=False,
             axis="flops"):
    return {"axis": axis,
        "rules": rule or None, "subsets": subsets, "bootstrap": bootstrap, "seed": seed, "intensity": intensity,
        "budgets": budgets or None, "budget_count": budget_count, "ratios": tuple(ratio) if ratio else SNELL_RATIOS,
        "adaptive": adaptive, "split": half(split), "common": common,
    }


RULE = typer.Option(None, "--rule", help="Selection rules to show: majority, first, max-score, weighted-vote, oracle (default: all recorded).")
SUBSETS = typer.Option(200, "--subsets", help="Random subsets per N and problem when subsampling (all subsets when there are fewer).")
BOOTSTRAP = typer.Option(1000, "--bootstrap", help="Bootstrap resamples over problems for the 95% bands (0 = none).")
SEED = typer.Option(0, "--seed", help="Seed of the subsampling and the bootstrap.")
INTENSITY = typer.Option(KINETICS_INTENSITY, "--intensity", help="Kinetics arithmetic intensity I (FLOPs per byte of memory traffic) for eFLOPs.")
BUDGETS = typer.Option(None, "--budget", help="FLOPs budget(s) per problem for the matched view (default: a log-spaced grid).")
BUDGET_COUNT = typer.Option(8, "--budgets", help="How many log-spaced budgets in the matched view's default grid.")
RATIO = typer.Option(None, "--ratio", help="R = D_inference/D_pretrain for the small-vs-large-model view (default: 0.16, 0.79, 22).")
COMMON = typer.Option(False, "--common", help="Show only the problems every run recorded (e.g. a search stopped early beside a complete run), so every curve is measured on the same set.")
SPLIT = typer.Option(None, "--split", help="Show only one half of the problems: a (where policies and verifiers are fitted) or b (held out), by a stable hash of each problem id; every run is restricted to it (all: every problem).")
AXIS = typer.Option("flops", "--axis", help=f"The cost the matched view matches: {', '.join(COST_AXES)} (exec_cpu_s: sandbox CPU seconds per problem, for runs that executed code; others show none).")
ADAPTIVE = typer.Option(False, "--adaptive", help="Add adaptive-consistency, ESC and DeepConf replayed from each best-of-N run: a curve per method, its points its thresholds (held-out figures: `ttscale adaptive`).")


def compare_command(
    run_dirs: list[Path] = RUNS,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for the plots (PNG and SVG; default: compare/ beside the first run)."),
    rule: Optional[list[str]] = RULE,
    subsets: int = SUBSETS,
    bootstrap: int = BOOTSTRAP,
    seed: int = SEED,
    intensity: float = INTENSITY,
    budgets: Optional[list[float]] = BUDGETS,
    budget_count: int = BUDGET_COUNT,
    ratio: Optional[list[float]] = RATIO,
    adaptive: bool = ADAPTIVE,
    split: Optional[Split] = SPLIT,
    common: bool = COMMON,
    axis: str = AXIS,
    format: Format = FORMAT,
) -> None:
    """Compare runs: accuracy vs cost per strategy and budget, the winner at matched FLOPs, plots.

    Smaller budgets of best-of-N and DVTS runs come from subsampling their samples (no new generation).
    """
    from ttscale.analysis.report import build_comparison  # matplotlib loads only when plots are drawn

    out = writable_dir(out or run_dirs[0].parent / "compare", "--out")
    comparison = build_comparison(run_dirs, out_dir=out, **_options(rule, subsets, bootstrap, seed, intensity, budgets, budget_count, ratio, adaptive, split, common, axis))
    output = Output(format)
    print_comparison(comparison, output)
    output.note("Plots:")
    for paths in comparison.plots.values():
        output.note("  " + "  ".join(escape(str(p)) for p in paths))
    output.finish()


def report_command(
    run_dirs: list[Path] = RUNS,
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="The HTML file to write (self-contained)."),
    plots_dir: Optional[Path] = typer.Option(None, "--plots-dir", help="Where the plot files go too (default: OUTPUT's name + _plots)."),
    rule: Optional[list[str]] = RULE,
    subsets: int = SUBSETS,
    bootstrap: int = BOOTSTRAP,
    seed: int = SEED,
    intensity: float = INTENSITY,
    budgets: Optional[list[float]] = BUDGETS,
    budget_count: int = BUDGET_COUNT,
    ratio: Optional[list[float]] = RATIO,
    split: Optional[Split] = SPLIT,
    common: bool = COMMON,
) -> None:
    """Write one self-contained HTML report comparing runs: tables and plots inline."""
    from ttscale.analysis.report import build_comparison, write_report  # matplotlib: see compare_command

    writable_file(output, "--output")
    plots_dir = writable_dir(plots_dir or output.with_name(output.stem + "_plots"), "--plots-dir")
    comparison = build_comparison(run_dirs, out_dir=plots_dir, **_options(rule, subsets, bootstrap, seed, intensity, budgets, budget_count, ratio, split=split, common=common))
    console.print(f"Report: {write_report(comparison, output)}")


def print_comparison(comparison, output: Output) -> None:
    """The comparison's tables, in the user's --format."""
    from ttscale.analysis.report import fmt_acc, fmt_count, fmt_sci, fmt_seconds, matched_columns  # matplotlib: see compare_command

    for warning in comparison.warnings:
        output.note(f"[yellow]Note:[/] {escape(warning)}")
    if comparison.split_label:
        output.note(f"Problems shown: {comparison.split_label} only (every run restricted to them).")
    # Labels are data, not markup: "label [run id]" must not read as a rich style tag.
    labels = {key: escape(label) for key, label in comparison.labels.items()}
    common = " · ".join(x for x in (common_label(comparison.curves), comparison.split_label) if x)
    right = lambda name: Column(name, "right")  # noqa: E731
    rows: list[list[str] | None] = []
    for curve in comparison.curves:
        for p in table_points(curve):
            rows.append([labels[id(curve)] + (f" {UPPER_BOUND}" if curve.uses_gold else ""), f"{p.n:g}" + ("" if p.measured else "*"),
                         fmt_acc(p.accuracy), f"{fmt_acc(p.ci_low)}–{fmt_acc(p.ci_high)}", fmt_sci(p.flops),
                         fmt_sci(p.eflops), fmt_count(p.generated_tokens), f"{p.wall_s:.2f}", fmt_seconds(p.exec_cpu_s)])
        rows.append(None)
    output.table(f"Accuracy against cost{' · ' + common if common else ''} (means per problem; * = subsampled)",
                 [Column("curve"), *map(right, ("N", "accuracy", "95% CI", "FLOPs", "eFLOPs", "gen. tokens", "wall s", "exec CPU s"))], rows)

    competing, gold = matched_columns(comparison)
    half = f" · {comparison.split_label}" if comparison.split_label else ""
    axis = AXIS_NAMES[comparison.axis]
    columns = [right(f"{axis} per problem"), *(right(escape(label)) for label in competing),
               *(Column(f"{escape(label)} {UPPER_BOUND}", "right", style="dim") for label in gold), Column("winner")]
    rows = []
    for row in comparison.budgets:
        cells = [fmt_sci(row.budget) if comparison.axis != "exec_cpu_s" else fmt_seconds(row.budget)]
        cells += [(f"[bold green]{fmt_acc(row.accuracy.get(l))}[/]" if l in row.winners else fmt_acc(row.accuracy.get(l))) for l in competing]
        cells += [fmt_acc(row.upper_bound.get(l)) for l in gold]
        cells.append(escape(row.winner))
        rows.append(cells)
    output.table(f"Matched {axis}{half}: accuracy interpolated in log {axis} (— = budget outside the curve)", columns, rows)

    output.note("[bold]Small model + search vs a larger model (Snell et al. §7)[/]: " + comparison.model_vs_search_note)
    if comparison.model_vs_search:
        output.table("Small model + search vs a larger model",
                     ["R", "bin", "k = M+3(M-1)/R", "larger pass@1", "small best", "small strategy", "small reaches it at x", "winner"],
                     [[f"{m.ratio:g}", m.bin, f"{m.matched:.3g}", fmt_acc(m.large_accuracy), fmt_acc(m.small_accuracy),
                       m.small_strategy or "—", "—" if m.reaches_at is None else f"{m.reaches_at:.3g}", m.verdict]
                      for m in comparison.model_vs_search], key=2)
