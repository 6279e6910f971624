"""Plots for `ttscale compare`, saved as PNG and SVG with matplotlib's Agg backend.

- accuracy vs FLOPs (log x), one line per strategy and selection rule, bootstrap bands;
- coverage (pass@k) vs k (log x), one line per run;
- accuracy by difficulty bin, one line per strategy and rule at its largest budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator, PercentFormatter  # noqa: E402

from ttscale.analysis.compare import common_label, cost_known, unique_labels  # noqa: E402
from ttscale.analysis.difficulty import NUMBERING  # noqa: E402
from ttscale.analysis.scaling import UPPER_BOUND, Curve  # noqa: E402

AXIS_LABELS = {
    "flops": "FLOPs per problem (log scale)",
    "eflops": "Kinetics eFLOPs per problem (log scale)",
    "generated_tokens": "generated tokens per problem (log scale)",
    "wall_s": "generation time per problem, s (log scale)",
}
STYLE = {"figure.dpi": 110, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8}


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=150 if path.suffix == ".png" else None, bbox_inches="tight")
    plt.close(fig)
    return paths


def _n_ticks(curve: Curve) -> list:
    """The points at N = 1, 2, 4, ... and the run's own N."""
    return [p for p in curve.points
            if p.measured or (float(p.n).is_integer() and int(p.n) & (int(p.n) - 1) == 0)]


def _title(text: str, curves: Sequence[Curve]) -> str:
    common = common_label(curves)
    return f"{text} · {common}" if common else text


RULE_STYLES = {
    "majority": ("-", "o"), "weighted-vote": ("-.", "D"), "max-score": ((0, (5, 1)), "v"),
    "first": (":", "s"), "oracle": ("--", "^"),
}


def _styles(curves: Sequence[Curve]) -> dict[int, dict]:
    """One run: a colour per rule. Several runs: a colour per run, a line style and marker per rule."""
    runs = list(dict.fromkeys(c.run for c in curves))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {}
    for i, curve in enumerate(curves):
        linestyle, marker = RULE_STYLES.get(curve.rule, ("-", "o"))
        style = {"marker": marker, "markersize": 3.5, "linewidth": 1.6}
        if len(runs) == 1:
            style.update(linestyle="--" if curve.uses_gold else "-", color=colors[i % len(colors)])
        else:
            style.update(linestyle="--" if curve.uses_gold else linestyle, color=colors[runs.index(curve.run) % len(colors)])
        styles[id(curve)] = style
    return styles


def plot_accuracy_vs_cost(curves: Sequence[Curve], out_dir: Path, axis: str = "flops", stem: str | None = None) -> list[Path]:
    """Accuracy against cost (log x) per curve, with its 95% bootstrap band; curves whose cost on
    the axis is unknown are left out (compare's notes say which)."""
    labels = unique_labels(curves)
    curves = [c for c in curves if cost_known(c, axis)]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 5))
        annotated: set[str] = set()
        runs = {c.run for c in curves}
        styles = _styles(curves)
        for curve in curves:
            xs = [p.cost(axis) for p in curve.points]
            ys = [p.accuracy for p in curve.points]
            (line,) = ax.plot(xs, ys, label=labels[id(curve)] + (f" {UPPER_BOUND}" if curve.uses_gold else ""), **styles[id(curve)])
            ax.fill_between(xs, [p.ci_low for p in curve.points], [p.ci_high for p in curve.points],
                            color=line.get_color(), alpha=0.12, linewidth=0)
            if curve.run not in annotated and len(runs) > 1:  # N at 1, 2, 4, ... once per run
                annotated.add(curve.run)
                for point in _n_ticks(curve):
                    ax.annotate(f"N={point.n:g}", (point.cost(axis), point.accuracy), textcoords="offset points",
                                xytext=(3, -11), fontsize=7, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel(AXIS_LABELS.get(axis, axis))
        if len(runs) == 1 and curves:  # one run: its N on a top axis
            ticks = _n_ticks(curves[0])
            top = ax.secondary_xaxis("top")
            top.set_xticks([p.cost(axis) for p in ticks], [f"{p.n:g}" for p in ticks])
            top.xaxis.set_minor_locator(NullLocator())
            top.set_xlabel("N, samples per problem", fontsize=9)
        ax.set_ylabel("accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(_title(f"Accuracy vs {AXIS_LABELS.get(axis, axis).split(' per ')[0]}", curves)
                     + "\nbands: 95% bootstrap over problems; dashed: gold answers guided it (an upper bound)", fontsize=10)
        if curves:
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, f"{AXIS_LABELS.get(axis, axis).split(' per ')[0]} unknown for every run",
                    transform=ax.transAxes, ha="center")
        return _save(fig, out_dir, stem or f"accuracy_vs_{axis}")


def plot_coverage(coverage: dict[str, tuple[list[int], list[float]]], out_dir: Path) -> list[Path]:
    """Coverage (mean pass@k over problems) against k, log x, one line per run."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, (ks, values) in coverage.items():
            ax.plot(ks, values, marker="o", markersize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k, samples per problem (log scale)")
        ax.set_ylabel("coverage (pass@k)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Coverage vs k (unbiased pass@k estimator)")
        ax.legend(loc="lower right")
        return _save(fig, out_dir, "coverage_vs_k")


def plot_difficulty(curves: Sequence[Curve], bins: dict[str, int], out_dir: Path, source: str = "",
                    ranges: dict[int, tuple[float, float]] | None = None) -> list[Path]:
    """Accuracy per difficulty bin (analysis.difficulty.NUMBERING) of each curve at its largest budget."""
    labels = unique_labels(curves)
    num_bins = max(bins.values()) + 1 if bins else 0
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        counts = [sum(1 for b in bins.values() if b == i) for i in range(num_bins)]
        styles = _styles(curves)
        for curve in curves:
            last = curve.per_problem[-1]
            per_bin = []
            for i in range(num_bins):
                values = [last[j] for j, pid in enumerate(curve.problem_ids) if bins.get(pid) == i]
                per_bin.append(sum(values) / len(values) if values else float("nan"))
            n = curve.points[-1].n
            gold = f" {UPPER_BOUND}" if curve.uses_gold else ""
            ax.plot(range(num_bins), per_bin, label=f"{labels[id(curve)]} (N={n:g}){gold}", **styles[id(curve)])
        pass_at_1 = "pass@1" in source
        ticks = []
        for i, c in enumerate(counts):
            text = f"bin {i}\n({c} problems)"
            if ranges and i in ranges:
                lo, hi = ranges[i]
                if not pass_at_1:  # the ease binned is the negated difficulty: show the difficulty
                    lo, hi = -hi, -lo
                span = f"{lo:.2g}" if lo == hi else f"{lo:.2g}–{hi:.2g}"
                text += f"\n{'pass@1 ' if pass_at_1 else 'difficulty '}{span}"
            ticks.append(text)
        ax.set_xticks(range(num_bins), ticks)
        ax.set_xlabel(f"difficulty bin ({NUMBERING})" + (f"; bins: {source}" if source else ""), fontsize=9)
        ax.set_ylabel("accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(_title("Accuracy by difficulty bin", curves) + "\nat each curve's largest budget", fontsize=10)
        ax.legend(loc="best")
        return _save(fig, out_dir, "accuracy_by_difficulty")
