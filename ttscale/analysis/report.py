"""Everything `ttscale compare` and `ttscale report` show, built once from run directories, and
the report as one self-contained HTML file (tables, and plots inline as base64 PNG)."""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ttscale.analysis import plots
from ttscale.analysis.adaptive import adaptive_curves
from ttscale.analysis.compare import COST_AXES, BudgetRow, common_label, cost_known, matched_budgets, table_points, unique_labels
from ttscale.analysis.difficulty import NUMBERING, compare_bins
from ttscale.analysis.model_vs_search import SNELL_RATIOS, MatchRow, small_vs_large
from ttscale.analysis.runs import Run, load_run
from ttscale.analysis.scaling import UPPER_BOUND, Curve, bin_ranges, coverage_curve, scaling_curves
from ttscale.cost import KINETICS_INTENSITY
from ttscale.errors import ConfigError
from ttscale.problems import split_of

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """Runs, their curves, the matched-budget view, coverage, difficulty bins and plots."""

    runs: list[Run]
    curves: list[Curve]
    budgets: list[BudgetRow]
    coverage: dict[str, tuple[list[int], list[float]]]
    bins: dict[str, int]
    bins_source: str = ""
    model_vs_search: list[MatchRow] = field(default_factory=list)
    model_vs_search_note: str = ""
    plots: dict[str, list[Path]] = field(default_factory=dict)
    intensity: float = KINETICS_INTENSITY
    split: str | None = None  # the half every run was restricted to (None: every problem)
    common: bool = False  # every run restricted to the problems all of them recorded
    axis: str = "flops"  # the cost axis of the matched view (ttscale.analysis.compare.COST_AXES)

    @property
    def split_label(self) -> str:
        """Which problems are shown: a half, and/or only those every run recorded ('' when all of them are)."""
        shared = f"the {len(self.runs[0].records)} problems every run recorded" if self.common and self.runs else ""
        return " · ".join(x for x in (describe_split(self.split), shared) if x)

    @property
    def warnings(self) -> list[str]:
        """What makes the comparison less than like for like."""
        notes = []
        sets = {frozenset(r.problem_id for r in run.records) for run in self.runs}
        if len(sets) > 1:
            counts = ", ".join(f"{run.name}: {len(run.records)}" for run in self.runs)
            notes.append(f"The runs cover different problems ({counts} problems), so their accuracies are not "
                         "measured on the same set; compare runs of the same benchmark, options and --limit.")
        unpriced = [run.name for run in self.runs if not run.flops_known]
        if unpriced:
            notes.append(f"FLOPs unknown for {', '.join(unpriced)} (a model of unknown size, or tokens nobody counted): "
                         "shown as unknown, left out of the matched-FLOPs view and the FLOPs plots; "
                         "rerun `ttscale eval` with --backend-option num_params=N to price them.")
        return notes

    @property
    def labels(self) -> dict[int, str]:
        """Each curve's unique label."""
        return unique_labels(self.curves)


SPLITS = {"a": "split a (where policies and verifiers are fitted)", "b": "split b (held out)"}


def describe_split(split: str | None) -> str:
    """A half of the problems in words ('' for None: every problem)."""
    return SPLITS[split] if split else ""


def restrict_to_split(run: Run, split: str) -> Run:
    """The run with only its problems of one half (ttscale.problems.split_of), or a
    ConfigError naming the run when it has none there."""
    records = [r for r in run.records if split_of(r.problem_id) == split]
    if not records:
        raise ConfigError(
            f"{run.dir} has no problem in split {split} (all {len(run.records)} of its problems are in the other "
            f"half); pass runs with problems in split {split}, or another --split"
        )
    return dataclasses.replace(run, records=records)


def restrict_to_common(runs: Sequence[Run]) -> list[Run]:
    """The runs with only the problems every one of them recorded (e.g. a search stopped early
    beside a complete best-of-N run), in each run's order; a ConfigError when they share none."""
    shared = set.intersection(*({r.problem_id for r in run.records} for run in runs))
    if not shared:
        raise ConfigError("the runs share no problem; --common needs runs over the same benchmark and options")
    return [dataclasses.replace(run, records=[r for r in run.records if r.problem_id in shared]) for run in runs]


def run_label(run: Run) -> str:
    """A run's legend entry: strategy, model and its N."""
    n = max(r.n for r in run.records)
    return f"{run.strategy} · {run.model} · N={n}"


def build_comparison(
    run_dirs: Sequence[str | Path],
    *,
    out_dir: Path | None = None,
    subsets: int = 200,
    bootstrap: int = 1000,
    seed: int = 0,
    intensity: float = KINETICS_INTENSITY,
    rules: Sequence[str] | None = None,
    budgets: Sequence[float] | None = None,
    budget_count: int = 8,
    ratios: Sequence[float] = SNELL_RATIOS,
    adaptive: bool = False,
    split: str | None = None,
    common: bool = False,
    axis: str = "flops",
) -> Comparison:
    """Load runs, subsample their curves, compare at matched FLOPs, and plot into `out_dir`.

    `adaptive`: add the adaptive methods replayed from each best-of-N run (ttscale.analysis.adaptive),
    a curve per method whose points are its thresholds. `split` ("a" or "b"): restrict every run to
    the problems of that half (ttscale.problems.split_of) before anything is built;
    `common`: then to the problems every run recorded. `axis`: the matched view's cost
    (compare.COST_AXES; exec_cpu_s matches sandbox CPU seconds, where runs recorded any)."""
    if axis not in COST_AXES:
        raise ConfigError(f"--axis must be one of {', '.join(COST_AXES)}, got {axis!r}")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split must be a (where policies and verifiers are fitted) or b (held out), got {split!r}")
    runs = [load_run(d, intensity=intensity) for d in run_dirs]
    if split is not None:
        runs = [restrict_to_split(run, split) for run in runs]
    if common:
        runs = restrict_to_common(runs)
    curves = [c for run in runs for c in scaling_curves(run, subsets=subsets, bootstrap=bootstrap, seed=seed, rules=rules)]
    if adaptive:
        curves += [c for run in runs for c in adaptive_curves(run, seed=seed)]
    rows = matched_budgets(curves, budgets, count=budget_count, axis=axis)
    coverage = {run_label(run): coverage_curve(run) for run in runs}
    bins, ease, bins_source = compare_bins(runs[0].records)
    comparison = Comparison(runs, curves, rows, coverage, bins, bins_source, intensity=intensity, split=split, common=common,
                            axis=axis)
    _model_vs_search(comparison, ratios)
    if out_dir is not None:
        comparison.plots = {
            "accuracy_vs_flops": plots.plot_accuracy_vs_cost(curves, out_dir, "flops"),
            "accuracy_vs_eflops": plots.plot_accuracy_vs_cost(curves, out_dir, "eflops"),
            "coverage_vs_k": plots.plot_coverage(coverage, out_dir),
            "accuracy_by_difficulty": plots.plot_difficulty(
                curves, bins, out_dir, bins_source, bin_ranges(bins, ease)),
        }
    return comparison


def matched_columns(comparison: Comparison) -> tuple[list[str], list[str]]:
    """The labels of the matched-FLOPs view's columns: competing curves, then gold-guided ones
    (upper bounds); curves without a cost on its axis (unknown FLOPs, nothing executed) have none."""
    priced = [c for c in comparison.curves if cost_known(c, comparison.axis)]
    labels = comparison.labels
    return [labels[id(c)] for c in priced if not c.uses_gold], [labels[id(c)] for c in priced if c.uses_gold]


def _model_vs_search(comparison: Comparison, ratios: Sequence[float]) -> None:
    """Fill in the small-model-plus-search vs larger-model table, or say why it cannot be."""
    sizes = sorted({run.num_params for run in comparison.runs if run.flops_known})  # FLOPs match only what they price
    if len(sizes) < 2 or not sizes[0]:
        models = ", ".join(sorted({f"{r.model} (P={f'{r.num_params:,}' if r.flops_known else 'unknown'})" for r in comparison.runs}))
        comparison.model_vs_search_note = (
            f"Needs runs of two models of different, known sizes; these runs have: {models}. "
            "Add a run of a larger model (its pass@1) to compare it with the small model's search at matched FLOPs."
        )
        return
    small_p, large_p = sizes[0], sizes[-1]
    curves = [c for c in comparison.curves if cost_known(c)]
    small = [c for c in curves if c.num_params == small_p and not c.uses_gold]
    # Gold-guided curves (upper bounds) stand for neither model.
    large = [c for c in curves if c.num_params == large_p and c.rule == "first" and not c.uses_gold]
    one_sample = [c for c in curves if c.num_params == small_p and c.rule == "first" and not c.uses_gold]
    if not small or not large or not one_sample:
        comparison.model_vs_search_note = "Needs a 'first' (pass@1) curve of both models."
        return
    first = one_sample[0].points[0]
    one_sample_flops = first.flops / max(first.n, 1)
    bins: dict[str, set[str] | None] = {"all": None}
    for b in sorted(set(comparison.bins.values())):
        bins[f"bin {b}"] = {pid for pid, v in comparison.bins.items() if v == b}
    large_curve = large[0]
    large_acc = {}
    for name, problems in bins.items():
        values = [v for pid, v in zip(large_curve.problem_ids, large_curve.per_problem[0]) if problems is None or pid in problems]
        large_acc[name] = sum(values) / len(values) if values else float("nan")
    comparison.model_vs_search = small_vs_large(
        small, large_acc, multiplier=large_p / small_p, one_sample_flops=one_sample_flops, bins=bins, ratios=ratios
    )
    comparison.model_vs_search_note = (
        f"Small model P={small_p:,}, larger model P={large_p:,} (M={large_p / small_p:.3g}); the larger model's "
        "pass@1 is its first sample's accuracy (greedy if it ran at temperature 0)."
    )


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
tr.win td.w{font-weight:bold;color:#1a6a1a}.gold{color:#777}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}.note{font-size:.85rem;color:#555}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def fmt_sci(value: float) -> str:
    """3 significant digits in scientific notation; 'unknown' for a cost nobody could count (NaN)."""
    if math.isnan(value):
        return "unknown"
    return f"{value:.3g}" if value < 1e4 else f"{value:.2e}"


def fmt_count(value: float) -> str:
    """A token count with thousands separators; 'unknown' for NaN."""
    return "unknown" if math.isnan(value) else f"{value:,.0f}"


def fmt_seconds(value: float) -> str:
    """Execution seconds (3 significant digits); '—' where the run executed nothing (NaN)."""
    return "—" if math.isnan(value) else f"{value:.3g}"


def fmt_acc(value: float | None) -> str:
    """Accuracy as a percentage, or a dash."""
    return "—" if value is None else f"{100 * value:.1f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, classes: Sequence[str] | None = None) -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


SMALLER_BUDGETS = {"best-of-n": "subsampled by sample", "dvts": "subsampled by subtree", "fixed": "none (one point)",
                   "thinking-budget": "the thinking budgets it swept (one candidate each)"}


def render_html(comparison: Comparison, title: str = "ttscale: strategies compared at matched compute") -> str:
    """The whole report as one HTML document with no external resources."""
    labels = comparison.labels
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>"]
    if comparison.split_label:
        parts.append(f"<p><b>Problems shown:</b> {_e(comparison.split_label)} only: every run is restricted to "
                     "them (a half by a stable hash of each problem id) before its curves are built.</p>")
    for warning in comparison.warnings:
        parts.append(f"<p><b>Note:</b> {_e(warning)}</p>")
    run_rows = []
    for run in comparison.runs:
        shape = run.cost_model.shape
        dims = (f"{shape.n_layers} layers, d_model {shape.d_model}, {shape.n_heads}/{shape.n_kv_heads} heads (q/kv), head dim {shape.head_dim}"
                if shape else "shape unknown: 2·P per token")
        run_rows.append([_e(run.name), _e(run.config.benchmark), _e(run.strategy), _e(run.model), f"{run.num_params:,}" if run.cost_model.priced else "unknown",
                         _e(dims), str(len(run.records)), _e(SMALLER_BUDGETS[run.kind])])
    parts += ["<h2>Runs</h2>", _table(["run", "benchmark", "strategy", "model", "P", "shape", "problems", "smaller budgets"],
                                      run_rows, left=6)]

    common = " · ".join(x for x in (common_label(comparison.curves), comparison.split_label) if x)
    parts.append(f"<h2>Accuracy against cost, per strategy and budget{_e(' · ' + common) if common else ''}</h2>")
    parts.append("<p class='note'>Costs are means per problem. Smaller N comes from subsampling the run's samples "
                 f"(averaged over random subsets; 95% bootstrap intervals over problems). eFLOPs: Kinetics, I = {comparison.intensity:g}.</p>")
    rows = []
    for curve in comparison.curves:
        for p in table_points(curve):
            rows.append([_e(labels[id(curve)]) + (f" <span class='gold'>{UPPER_BOUND}</span>" if curve.uses_gold else ""),
                         f"{p.n:g}" + ("" if p.measured else "*"), fmt_acc(p.accuracy),
                         f"[{fmt_acc(p.ci_low)}, {fmt_acc(p.ci_high)}]", fmt_sci(p.flops), fmt_sci(p.eflops),
                         fmt_count(p.generated_tokens), f"{p.wall_s:.2f}"])
    parts.append(_table(["curve", "N", "accuracy", "95% CI", "FLOPs", "eFLOPs", "gen. tokens", "wall s"], rows))
    parts.append("<p class='note'>* subsampled from the run's samples; wall time of a subsample is pro-rated by its tokens.</p>")

    parts.append(f"<h2>Matched FLOPs: who wins at each budget{_e(' · ' + comparison.split_label) if comparison.split_label else ''}</h2>")
    competing, gold = matched_columns(comparison)
    rows, classes = [], []
    for row in comparison.budgets:
        cells = [fmt_sci(row.budget)]
        for label in competing:
            value = fmt_acc(row.accuracy.get(label))
            cells.append(f"<b>{value}</b>" if label in row.winners else value)
        cells += [f"<span class='gold'>{fmt_acc(row.upper_bound.get(label))}</span>" for label in gold]
        cells.append(f"<span class='w'>{_e(row.winner)}</span>")
        rows.append(cells)
        classes.append("win")
    headers = ["FLOPs per problem", *competing, *[f"{g} {UPPER_BOUND}" for g in gold], "winner"]
    parts.append(_table(headers, rows, classes=classes))
    parts.append("<p class='note'>Accuracy interpolated linearly in log FLOPs between a curve's points; a dash where "
                 "a curve does not reach the budget. Curves that gold answers guided (the oracle rule, or a verifier "
                 "that read gold, under every rule it touched) are upper bounds: shown, never winners.</p>")

    captions = {
        "accuracy_vs_flops": "Accuracy vs FLOPs per problem (log x); dashed lines used gold answers (upper bounds).",
        "accuracy_vs_eflops": "Accuracy vs Kinetics eFLOPs per problem (log x).",
        "coverage_vs_k": "Coverage (pass@k) vs k.",
        "accuracy_by_difficulty": f"Accuracy by difficulty bin ({NUMBERING}) at each strategy's largest budget.",
    }
    if comparison.plots:
        parts.append("<h2>Plots</h2>")
    for name, paths in comparison.plots.items():
        png = next((p for p in paths if p.suffix == ".png"), None)
        if png is None:
            continue
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{data}'><figcaption>{_e(captions.get(name, name))}</figcaption></figure>")

    parts.append("<h2>Small model + test-time compute vs a larger model (Snell et al. §7)</h2>")
    parts.append("<p class='note'>Matched test-time multiplier k = M + 3(M−1)/R for R = D<sub>inference</sub>/D<sub>pretrain</sub>.</p>")
    if comparison.model_vs_search_note:
        parts.append(f"<p>{_e(comparison.model_vs_search_note)}</p>")
    if comparison.model_vs_search:
        rows = [[f"{m.ratio:g}", _e(m.bin), f"{m.matched:.3g}", fmt_acc(m.large_accuracy), fmt_acc(m.small_accuracy),
                 _e(m.small_strategy or "—"), "—" if m.reaches_at is None else f"{m.reaches_at:.3g}", _e(m.verdict)]
                for m in comparison.model_vs_search]
        parts.append(_table(["R", "bin", "k", "larger model pass@1", "small model best", "small strategy",
                             "small reaches it at ×", "winner"], rows, left=2))
    parts.append("<h2>Cost model</h2><p class='note'>FLOPs per token at context L: 2·(P + 2·n_layers·d_model·L) "
                 "(Large Language Monkeys §2.3); prompt once per request, cached tokens free, decode tokens at their "
                 "positions. eFLOPs: Kinetics (Sadhukhan et al. 2025) compute + I × KV memory traffic, plus prefill FLOPs.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(comparison: Comparison, path: Path) -> Path:
    """Write the HTML report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(comparison), encoding="utf-8")
    return path
