"""`ttscale models list|prepare`: the embedded models."""

from __future__ import annotations

import typer

from ttscale.cli.common import console
from ttscale.models import EMBEDDED_MODELS, cache_dir, prepare_model

models_app = typer.Typer(help="List and prepare models (the embedded default needs no model hub).", no_args_is_help=True)


@models_app.command("list")
def models_list() -> None:
    """List the embedded models and whether each is prepared."""

    for name in EMBEDDED_MODELS:
        prepared = (cache_dir() / "models" / name / "config.json").exists()
        console.print(f"{name}\t{'prepared' if prepared else 'not prepared'}")


@models_app.command("prepare")
def models_prepare(name: str = typer.Argument("smollm2-135m", help="Embedded model name.")) -> None:
    """Convert an embedded model into an HF directory vLLM can load (done once, cached)."""

    resolved = prepare_model(name, progress=console.print)
    console.print(f"{resolved.name}: {resolved.path} ({resolved.num_params:,} parameters)")
