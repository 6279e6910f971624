"""`ttscale merge`: join the shard runs of `ttscale eval --shard I/K` into one run."""

from __future__ import annotations

from pathlib import Path

import typer

from ttscale.cli.common import console
from ttscale.scaleout import merge_runs


def merge_command(
    run_dirs: list[Path] = typer.Argument(..., help="Shard run directories (runs/<id> as `ttscale eval --shard I/K` wrote them)."),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Directory that holds run directories; the merged run goes to OUTPUT/<run id>, the id one process would have given the run."),
) -> None:
    """Join shard runs of one config into one run that compare, report and allocate read.

    Refuses shards of different configs and shards whose problems overlap.
    """

    result = merge_runs(run_dirs, output)
    summary = result.summary
    console.print(f"Merged shards {', '.join(result.shards)}: {summary['problems']} problems, {summary['samples']} samples.")
    if result.missing:
        console.print(
            f"Missing shards: {', '.join(result.missing)}. Run them and merge again into a new -o, or run "
            "`ttscale eval` without --shard and -o OUTPUT: it resumes the merged run and solves the rest."
        )
    accuracy = ", ".join(f"{rule} {value:.3f}" for rule, value in summary["accuracy"].items())
    console.print(f"Accuracy: {accuracy}")
    console.print(f"Run directory: {result.run_dir}")
