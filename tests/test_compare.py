"""`ttscale compare` on fake-backend runs with known costs and accuracies: the winner at each
budget and the interpolation against hand values; the small-vs-large model formula; the CLI."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from ttscale.analysis.compare import budget_grid, interpolate, matched_budgets
from ttscale.analysis.model_vs_search import (
    matched_multiplier,
    pretraining_flops,
    inference_flops,
    scaled_model_flops,
    small_vs_large,
)
from ttscale.analysis.report import build_comparison, render_html
from ttscale.analysis.scaling import Curve, CurvePoint
from ttscale.cli import app
from ttscale.config import RunConfig
from ttscale.runner import run_eval


def curve(label, points, rule="majority", num_params=1000, per_problem=None, uses_gold=False):
    pts = [CurvePoint(n=i + 1, accuracy=a, ci_low=a, ci_high=a, flops=f, eflops=f, generated_tokens=0,
                      prompt_tokens=0, wall_s=0) for i, (f, a) in enumerate(points)]
    pp = np.asarray(per_problem if per_problem is not None else [[p.accuracy] for p in pts], dtype=float)
    return Curve("run-" + label, label, rule, "m", num_params, "best-of-n", pts, [f"p{j}" for j in range(pp.shape[1])], pp,
                 uses_gold=uses_gold)


def test_interpolation_is_linear_in_log_flops():
    c = curve("x", [(1e3, 0.2), (1e5, 0.6), (1e6, 0.9)])
    assert interpolate(c, 1e4) == pytest.approx(0.4)  # halfway in log between 1e3 and 1e5
    assert interpolate(c, 10 ** 5.5) == pytest.approx(0.75)
    assert interpolate(c, 1e3) == 0.2 and interpolate(c, 1e6) == 0.9
    assert interpolate(c, 999) is None and interpolate(c, 1.1e6) is None  # no extrapolation


def test_oracle_never_wins_and_ties_name_both():
    a = curve("a", [(1e3, 0.5), (1e4, 0.5)])
    b = curve("b", [(1e3, 0.5), (1e4, 0.7)])
    oracle = curve("o", [(1e3, 0.9), (1e4, 1.0)], rule="oracle", uses_gold=True)
    guided = curve("g", [(1e3, 0.95), (1e4, 0.99)], uses_gold=True)  # e.g. a search an oracle verifier guided
    rows = matched_budgets([a, b, oracle, guided], [1e3, 1e4])
    assert rows[0].winners == ["a · majority", "b · majority"]
    assert rows[1].winner == "b · majority"
    assert rows[1].upper_bound == {"o · oracle": 1.0, "g · majority": 0.99}
    assert budget_grid([a, b, oracle, guided], count=3) == [1e3, pytest.approx(3160.0), 1e4]


# ------------------------------------------------------------------ three fake-backend runs

QUESTIONS = ["What is 1 + 6?", "What is 2 + 5?", "What is 3 + 4?", "What is 0 + 7?"]  # all 7
PADDING = "step " * 95


def sample(answer: str) -> str:
    return f"{PADDING}The answer is \\boxed{{{answer}}}."


async def fake_run(tmp_path, problems, model, num_params, answers):
    """Best-of-N with N = len(answers): every problem gets these samples, in this order."""
    config = RunConfig(
        benchmark=str(problems), backend="fake", model=model, output=tmp_path / "runs", concurrency=1,
        strategy_options={"n": len(answers)},
        backend_options={"num_params": num_params, "block_size": 100_000, "script": [sample(a) for a in answers]},
    )
    return (await run_eval(config)).run_dir


@pytest.fixture
async def three_runs(tmp_path, write_problems):
    problems = write_problems(*({"id": f"q{i}", "question": q, "answer": "7"} for i, q in enumerate(QUESTIONS)), name="sevens.jsonl")
    small = await fake_run(tmp_path, problems, "small", 1000, ["7", "7", "7", "3"])
    medium = await fake_run(tmp_path, problems, "medium", 2000, ["3", "7", "7", "5"])
    large = await fake_run(tmp_path, problems, "large", 4000, ["7", "7"])
    return small, medium, large


async def test_compare_names_the_winner_at_each_budget(three_runs, tmp_path):
    small_dir, medium_dir, large_dir = three_runs
    record = json.loads((small_dir / "samples.jsonl").read_text().splitlines()[0])
    L, ell = record["cost"]["prompt_tokens"], record["candidates"][0]["num_tokens"]
    assert ell == 104 and record["cost"]["cached_prompt_tokens"] == 0
    assert L <= ell  # the budget order below relies on it

    # No model shape on the fake: 2·P FLOPs per token; the prompt once plus k samples.
    def cost(P, k):
        return 2 * P * (L + k * ell)

    small = lambda k: cost(1000, k)  # noqa: E731
    medium = lambda k: cost(2000, k)  # noqa: E731
    large = lambda k: cost(4000, k)  # noqa: E731
    budgets = [small(2), medium(1), small(4), large(1), medium(4), large(2)]
    comparison = build_comparison([small_dir, medium_dir, large_dir], rules=["majority"], budgets=budgets, bootstrap=0)

    by_model = {c.model: c for c in comparison.curves}
    # Majority over ordered draws (all of them enumerated), by hand:
    # small 7,7,7,3: N=1 3/4; N=2 (6 + 3)/12; N=3 and 4 always 7.  medium 3,7,7,5: 2/4, 6/12, 16/24, 1.
    assert [p.accuracy for p in by_model["small"].points] == pytest.approx([0.75, 0.75, 1.0, 1.0])
    assert [p.accuracy for p in by_model["medium"].points] == pytest.approx([0.5, 0.5, 2 / 3, 1.0])
    assert [p.accuracy for p in by_model["large"].points] == pytest.approx([1.0, 1.0])
    assert [p.flops for p in by_model["medium"].points] == pytest.approx([medium(k) for k in (1, 2, 3, 4)])

    rows = comparison.budgets
    acc = [{label.split(" · ")[0]: a for label, a in row.accuracy.items()} for row in rows]
    winners = [[w.split(" · ")[0] for w in row.winners] for row in rows]
    log_t = lambda x, lo, hi: (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))  # noqa: E731
    # small(2): only the small model spends that little.
    assert acc[0] == {"small": pytest.approx(0.75), "medium": None, "large": None} and winners[0] == ["small"]
    # medium(1) lies between small(2) and small(3): small 0.75 -> 1.0, interpolated in log FLOPs.
    assert acc[1]["small"] == pytest.approx(0.75 + 0.25 * log_t(medium(1), small(2), small(3)))
    assert acc[1]["medium"] == pytest.approx(0.5) and winners[1] == ["small"]
    # small(4): small at 1.0, medium between its N=1 and N=2 (both 0.5).
    assert acc[2] == {"small": pytest.approx(1.0), "medium": pytest.approx(0.5), "large": None} and winners[2] == ["small"]
    # large(1): small is out of range; medium between N=2 and N=3: 0.5 -> 2/3.
    assert acc[3]["small"] is None
    assert acc[3]["medium"] == pytest.approx(0.5 + (2 / 3 - 0.5) * log_t(large(1), medium(2), medium(3)))
    assert acc[3]["large"] == pytest.approx(1.0) and winners[3] == ["large"]
    # medium(4): medium reaches 1.0 there, as does large: a tie.
    assert acc[4]["medium"] == pytest.approx(1.0) and sorted(winners[4]) == ["large", "medium"]
    assert acc[5] == {"small": None, "medium": None, "large": pytest.approx(1.0)} and winners[5] == ["large"]


async def test_compare_and_report_commands_write_tables_plots_and_html(three_runs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "plots"
    result = runner.invoke(app, ["compare", *map(str, three_runs), "--out", str(out), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    assert "Matched FLOPs" in result.output and "winner" in result.output
    for stem in ("accuracy_vs_flops", "accuracy_vs_eflops", "coverage_vs_k", "accuracy_by_difficulty"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.svg").is_file()
    report = tmp_path / "report.html"
    result = runner.invoke(app, ["report", *map(str, three_runs), "-o", str(report), "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    assert "Small model + test-time compute" in page and "(M=4)" in page


# ------------------------------------------------------------------ Snell et al. §7

def test_matched_multiplier_by_hand():
    assert matched_multiplier(2, 0.16) == pytest.approx(2 + 3 / 0.16) == pytest.approx(20.75)
    assert matched_multiplier(2, 0.79) == pytest.approx(2 + 3 / 0.79)
    assert matched_multiplier(2, 22) == pytest.approx(2 + 3 / 22)
    assert matched_multiplier(1, 0.16) == 1.0  # the same model: no extra test-time budget
    # It is the k that solves X + k·Y = M·(X + Y):
    P, D_pre, D_inf, M = 1e8, 1e12, 1e11, 4.0
    X, Y = pretraining_flops(P, D_pre), inference_flops(P, D_inf)
    assert X == 6e20 and Y == 2e19
    k = matched_multiplier(M, D_inf / D_pre)
    assert X + k * Y == pytest.approx(scaled_model_flops(M, X, Y))
    with pytest.raises(ValueError):
        matched_multiplier(0.5, 1.0)


def test_small_vs_large_per_ratio_and_bin():
    # Small model: one sample costs 100 FLOPs; accuracy 0.2 -> 0.5 -> 0.8 at 1x, 10x, 100x.
    # Two problems: p0 (easy) goes 0.4, 1, 1; p1 (hard) 0, 0, 0.6.
    small = curve("small", [(100, 0.2), (1000, 0.5), (10000, 0.8)], per_problem=[[0.4, 0.0], [1.0, 0.0], [1.0, 0.6]])
    bins = {"all": None, "easy": {"p0"}, "hard": {"p1"}}
    large = {"all": 0.5, "easy": 0.9, "hard": 0.5}
    rows = small_vs_large([small], large, multiplier=2, one_sample_flops=100, bins=bins, ratios=(22, 0.16))
    by = {(r.ratio, r.bin): r for r in rows}
    k22 = 2 + 3 / 22  # 2.136x: between 1x (0.2) and 10x (0.5)
    assert by[(22, "all")].matched == pytest.approx(k22)
    assert by[(22, "all")].small_accuracy == pytest.approx(0.2 + 0.3 * math.log10(k22))
    assert by[(22, "all")].verdict == "larger model"
    assert by[(22, "all")].reaches_at == pytest.approx(10.0)  # 0.5 first reached at 10x
    assert by[(0.16, "all")].small_accuracy == pytest.approx(0.5 + 0.3 * math.log10(20.75 / 10))
    assert by[(0.16, "all")].verdict == "small model + search"
    assert by[(22, "easy")].small_accuracy == pytest.approx(0.4 + 0.6 * math.log10(k22))
    assert by[(22, "easy")].reaches_at == pytest.approx(10 ** ((0.9 - 0.4) / 0.6))
    assert by[(0.16, "hard")].small_accuracy == pytest.approx(0.6 * math.log10(20.75 / 10))
    assert by[(0.16, "hard")].verdict == "larger model"
    far = small_vs_large([small], {"all": 0.99}, multiplier=200, one_sample_flops=100, bins={"all": None}, ratios=(0.16,))
    assert far[0].verdict.startswith("undecided")  # k = 3931x, beyond the measured 100x


async def test_report_says_when_only_one_model_was_run(tmp_path, write_problems):
    problems = write_problems({"id": "q0", "question": QUESTIONS[0], "answer": "7"}, name="sevens.jsonl")
    run_dir = await fake_run(tmp_path, problems, "only", 1000, ["7", "3"])
    comparison = build_comparison([run_dir], bootstrap=0)
    assert comparison.model_vs_search == []
    assert "Needs runs of two models" in comparison.model_vs_search_note
    assert "Needs runs of two models" in render_html(comparison)
    assert comparison.warnings == []
    more = write_problems(*({"id": f"m{i}", "question": q, "answer": "7"} for i, q in enumerate(QUESTIONS)), name="more.jsonl")
    other = await fake_run(tmp_path, more, "other", 2000, ["7"])
    mixed = build_comparison([run_dir, other], bootstrap=0)
    assert "different problems" in mixed.warnings[0] and "different problems" in render_html(mixed)
