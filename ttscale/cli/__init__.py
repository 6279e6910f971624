"""The `ttscale` command line: one module per command (group), what they share in common.py.

`ttscale.cli:main` is the console script; `python -m ttscale` and `python -m ttscale.cli` run it too.
"""

from __future__ import annotations

import os

# vLLM logs engine internals at INFO and WARNING. `eval` sends them, and everything else the
# engine and the libraries print, to the run directory's engine.log (--verbose: the terminal), so
# the log keeps vLLM's INFO lines for diagnosing a failure. Set before anything imports vLLM.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")

import typer  # noqa: E402

from ttscale import lifecycle  # noqa: E402
from ttscale.cli import adaptive, allocate, compare, coverage, eval, merge, models, serve, verifier  # noqa: E402
from ttscale.cli.common import run_app  # noqa: E402

app = typer.Typer(
    help="Test-time compute scaling for LLMs: run strategies, count their compute, compare them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("eval")(eval.eval_command)
app.command("compare")(compare.compare_command)
app.command("report")(compare.report_command)
app.command("adaptive")(adaptive.adaptive_command)
app.command("merge")(merge.merge_command)
app.command("serve")(serve.serve_command)
app.command("coverage-fit")(coverage.coverage_fit_command)
app.command("fit", hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(coverage.old_fit_command)
app.add_typer(allocate.allocate_app, name="allocate")
app.add_typer(verifier.verifier_app, name="verifier")
app.add_typer(models.models_app, name="models")


def main() -> None:
    """Entry point: run the app, printing user errors as one line instead of a traceback.

    Whatever ends the command, no process it started outlives it (ttscale.lifecycle).
    """
    lifecycle.raise_on_sigterm()
    try:
        run_app(app)
    finally:
        lifecycle.end_children()
